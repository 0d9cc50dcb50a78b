"""Validation and normalization of `conv2d` / `causal_conv1d` arguments, before any tracing."""

from __future__ import annotations

from jax import lax
import jax.numpy as jnp

from kernels.conv.block_sizes import BlockSizes
from kernels.conv.canonical import ACTIVATIONS

__all__ = ["IMPLS", "check_array", "check_common", "pair", "normalize_padding"]

IMPLS = ("auto", "xla", "xla_gemm", "pallas", "pallas_gpu", "pallas_tpu")
_DTYPES = tuple(jnp.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64))


def _shape(x):
  return getattr(x, "shape", type(x).__name__)


def check_array(name: str, x, ndim: int, layout: str):
  """Raises unless `x` is an array of rank `ndim` with a supported float dtype."""
  if not hasattr(x, "shape") or len(x.shape) != ndim:
    raise ValueError(f"{name} must be {layout}; got {name}.shape={_shape(x)}")
  if jnp.dtype(x.dtype) not in _DTYPES:
    raise ValueError(f"{name}.dtype must be float32, bfloat16, float16 (or float64 on the "
                     f"XLA paths); got {x.dtype}")
  if 0 in x.shape:
    raise ValueError(f"{name} must be non-empty; got {name}.shape={x.shape}")


def check_common(x, w, b, activation, impl, block_sizes, out_channels: int):
  """The checks `conv2d` and `causal_conv1d` share: dtypes, bias, activation, impl."""
  if w.dtype != x.dtype:
    raise ValueError(f"w must have x's dtype; got x.dtype={x.dtype}, w.dtype={w.dtype}")
  if b is not None and (getattr(b, "shape", None) != (out_channels,)
                        or not jnp.issubdtype(b.dtype, jnp.floating)):
    raise ValueError(f"b must be None or a float array of shape ({out_channels},); got "
                     f"b.shape={_shape(b)}")
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError("block_sizes must be None or a kernels.conv.BlockSizes; got "
                     f"{type(block_sizes).__name__}")
  if jnp.dtype(x.dtype) == jnp.float64 and impl.startswith("pallas"):
    raise ValueError(f"float64 inputs run only on impl='xla' or 'xla_gemm'; got impl={impl!r}")


def pair(name: str, value) -> tuple[int, int]:
  """An int or a pair of ints >= 1 as an `(h, w)` pair."""
  values = (value, value) if isinstance(value, int) else value
  if (not isinstance(values, (tuple, list)) or len(values) != 2
      or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)):
    raise ValueError(f"{name} must be an int >= 1 or a pair of them; got {value!r}")
  return tuple(values)


def normalize_padding(padding, spatial, kernel, stride, dilation):
  """"SAME", "VALID", an int, `(ph, pw)` or `((top, bottom), (left, right))` -> pairs."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs; got {padding!r}")
    window = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    return tuple(tuple(p) for p in lax.padtype_to_pads(spatial, window, stride, padding.upper()))

  def nonneg_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0

  if nonneg_int(padding):
    return ((padding, padding), (padding, padding))
  if isinstance(padding, (tuple, list)) and len(padding) == 2:
    if all(nonneg_int(p) for p in padding):
      return tuple((p, p) for p in padding)
    if all(isinstance(p, (tuple, list)) and len(p) == 2 and all(nonneg_int(v) for v in p)
           for p in padding):
      return tuple(tuple(p) for p in padding)
  raise ValueError("padding must be 'SAME', 'VALID', an int >= 0, (pad_h, pad_w) or "
                   f"((top, bottom), (left, right)) of ints >= 0; got {padding!r}")
