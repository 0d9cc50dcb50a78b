"""`kernels.conv2d` and `kernels.causal_conv1d`: validation, the registry of paths, dispatch.

Every path computes `kernels.conv.reference`'s definition; `IMPLEMENTATIONS` says where each
runs and what it takes, and a call it cannot serve fails here, before anything is traced.
"""

from __future__ import annotations

import warnings

import jax
from jax import lax
import jax.numpy as jnp

from kernels._registry import Implementation
from kernels.conv.block_sizes import BlockSizes
from kernels.conv.canonical import ACTIVATIONS
from kernels.conv.fused import FusedConfig, fused_conv2d
from kernels.conv.layout import geometry
from kernels.conv.reference import causal_conv1d_reference, conv2d_reference

__all__ = ["IMPLEMENTATIONS", "IMPLS", "causal_conv1d", "conv2d"]

_EVERYWHERE = ("cpu", "gpu", "tpu")
IMPLEMENTATIONS = {
    impl.name: impl for impl in (
        # lax.conv_general_dilated plus the epilogue.
        Implementation("xla", _EVERYWHERE, supports=frozenset({"float64"})),
        # The kernels' algorithm (a sum of shifted GEMMs over the taps, an implicit GEMM)
        # written in XLA, with their custom backward.
        Implementation("xla_implicit_gemm", _EVERYWHERE, supports=frozenset({"float64"})),
        Implementation("pallas_gpu", ("gpu",), interpretable=True),
        Implementation("pallas_tpu", ("tpu",), interpretable=True),
    )
}
IMPLS = ("auto", "xla", "xla_implicit_gemm", "pallas", "pallas_gpu", "pallas_tpu")
_RENAMED = {"xla_gemm": "xla_implicit_gemm"}  # old name -> new, accepted with a warning
_DTYPES = tuple(jnp.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64))


def conv2d(x, w, b=None, *, stride=1, padding="SAME", dilation=1, groups: int = 1,
           activation: str | None = None, residual=None, impl: str = "auto",
           block_sizes: BlockSizes | None = None) -> jax.Array:
  """`activation(conv(x, w) + b + residual)`, fused into one pass where a kernel runs.

  Args:
    x: input `[batch, height, width, in_channels]` (NHWC), float32, bfloat16 or float16.
    w: weights `[kernel_h, kernel_w, in_channels / groups, out_channels]` (HWIO), `x`'s dtype.
    b: bias `[out_channels]` or None.
    stride: an int or an `(h, w)` pair.
    padding: "SAME", "VALID", an int, `(pad_h, pad_w)` or `((top, bottom), (left, right))`.
    dilation: the kernel's dilation, an int or an `(h, w)` pair.
    groups: feature groups; `groups == in_channels` is a depthwise convolution.
    activation: None, "relu", "gelu" (tanh approximation, as `jax.nn.gelu`) or "silu".
    residual: `[batch, out_h, out_w, out_channels]` in `x`'s dtype, added before the
      activation, or None.
    impl: "auto" (the Pallas kernel on GPU and TPU; on the CPU the faster path measured by
      `bench/conv.py`: "xla", or "xla_implicit_gemm" for pointwise 1x1 convolutions),
      "xla" (the reference, `lax.conv_general_dilated` plus the epilogue),
      "xla_implicit_gemm" (the kernels' implicit GEMM, a sum of shifted GEMMs over the
      taps, written in XLA, with the same custom backward; "xla_gemm" is its old name),
      "pallas" (this backend's kernel; the GPU kernel in interpret mode on the CPU),
      "pallas_gpu" or "pallas_tpu" (that kernel; interpret mode off its hardware).
    block_sizes: the kernels' tiles; None for the backend's defaults.

  Returns:
    `[batch, out_h, out_w, out_channels]` in `x.dtype`, accumulated in float32.

  Raises:
    ValueError: for inconsistent shapes, unsupported dtypes or unknown options, before
      anything is traced.
  """
  check_array("x", x, 4, "[batch, height, width, in_channels]")
  check_array("w", w, 4, "[kernel_h, kernel_w, in_channels / groups, out_channels]")
  n, h, wd, cin = x.shape
  kh, kw, ci, cout = w.shape
  if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
    raise ValueError(f"groups must be an int >= 1; got {groups!r}")
  if cin % groups or cout % groups:
    raise ValueError(f"in_channels ({cin}) and out_channels ({cout}) must be multiples of "
                     f"groups ({groups})")
  if ci != cin // groups:
    raise ValueError(f"w.shape[2] must be in_channels / groups = {cin // groups}; got "
                     f"w.shape={w.shape} for x.shape={x.shape}, groups={groups}")
  impl = check_common(x, w, b, activation, impl, block_sizes, cout)
  stride, dilation = pair("stride", stride), pair("dilation", dilation)
  padding = normalize_padding(padding, (h, wd), (kh, kw), stride, dilation)
  geo = geometry(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation,
                 groups=groups)
  if geo.out_h < 1 or geo.out_w < 1:
    raise ValueError(f"the output would be empty: x.shape={x.shape}, kernel {kh}x{kw}, "
                     f"dilation={dilation}, padding={padding}, stride={stride}")
  out_shape = (n, geo.out_h, geo.out_w, cout)
  if residual is not None and (getattr(residual, "shape", None) != out_shape
                               or residual.dtype != x.dtype):
    raise ValueError(f"residual must be None or {x.dtype} of the output's shape {out_shape}; "
                     f"got residual.shape={getattr(residual, 'shape', None)}, "
                     f"dtype={getattr(residual, 'dtype', None)}")
  backend, interpret = _resolve(impl, x, geo)
  if backend == "reference":
    return conv2d_reference(x, w, b, stride=stride, padding=padding, dilation=dilation,
                            groups=groups, activation=activation, residual=residual)
  config = FusedConfig(geo, activation, backend, block_sizes, interpret,
                       has_residual=residual is not None)
  return fused_conv2d(x, w, b, residual, config)


def causal_conv1d(x, w, b=None, *, activation: str | None = None, impl: str = "auto",
                  block_sizes: BlockSizes | None = None) -> jax.Array:
  """Depthwise causal convolution over a sequence, `y[:, t] = act(sum_k x[:, t-K+1+k] w[k] + b)`.

  Args:
    x: `[batch, seq, channels]`, float32, bfloat16 or float16.
    w: `[kernel, channels]`, `x`'s dtype.
    b: `[channels]` or None.
    activation: None, "relu", "gelu" or "silu".
    impl: as in `conv2d`; the kernels run it as a depthwise `conv2d` of height 1.
    block_sizes: the kernels' tiles; None for the backend's defaults.

  Returns:
    `[batch, seq, channels]` in `x.dtype`; position `t` sees only positions `<= t`.
  """
  check_array("x", x, 3, "[batch, seq, channels]")
  check_array("w", w, 2, "[kernel, channels]")
  if w.shape[1] != x.shape[2]:
    raise ValueError(f"w must be [kernel, channels] with channels = x.shape[2] = {x.shape[2]}; "
                     f"got w.shape={w.shape}")
  impl = check_common(x, w, b, activation, impl, block_sizes, x.shape[2])
  backend, interpret = _resolve(impl, x)
  if backend == "reference":
    return causal_conv1d_reference(x, w, b, activation=activation)
  kernel, channels = w.shape
  x4, w4 = x[:, None], w.reshape(1, kernel, 1, channels)
  geo = geometry(x4.shape, w4.shape, stride=(1, 1), padding=((0, 0), (kernel - 1, 0)),
                 dilation=(1, 1), groups=channels)
  config = FusedConfig(geo, activation, backend, block_sizes, interpret)
  return fused_conv2d(x4, w4, b, None, config)[:, 0]


def _resolve(impl: str, x, geo=None) -> tuple[str, bool]:
  """`impl` -> (backend of the canonical kernels or "reference", interpret mode).

  Raises:
    ValueError: where the path cannot run here or cannot take `x`'s dtype.
  """
  platform = jax.default_backend()
  if impl == "auto":
    impl = "pallas" if platform in ("gpu", "tpu") else _cpu_choice(geo)
  if impl == "pallas":
    impl = "pallas_tpu" if platform == "tpu" else "pallas_gpu"
  used = {"float64"} if jnp.dtype(x.dtype) == jnp.float64 else set()
  IMPLEMENTATIONS[impl].check(used, platform, hints={"float64": "float64 inputs"},
                              instead="impl='xla' and 'xla_implicit_gemm' take float64")
  if impl == "xla":
    return "reference", False
  if impl == "xla_implicit_gemm":
    return "xla", False
  kernel_platform = impl.removeprefix("pallas_")
  return kernel_platform, platform != kernel_platform


def _cpu_choice(geo) -> str:
  """The faster CPU path for one convolution, as measured by `bench/conv.py`.

  XLA's own convolution wins the forward nearly everywhere (3-9x on 3x3 layers), and
  forward+backward on every 3x3 layer (2-3x). A pointwise (1x1, stride 1, unpadded,
  ungrouped) convolution is a plain matrix product, and there the implicit GEMM trains
  1.2-2.3x faster (XLA's 1x1 filter gradient is slow on the CPU) for 0.5-0.9x in the
  forward alone; training is what this library is for, so pointwise convolutions take it.
  """
  pointwise = (geo is not None and (geo.kernel_h, geo.kernel_w) == (1, 1)
               and geo.stride == (1, 1) and geo.groups == 1
               and geo.padding == ((0, 0), (0, 0)))
  return "xla_implicit_gemm" if pointwise else "xla"


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


def check_common(x, w, b, activation, impl, block_sizes, out_channels: int) -> str:
  """The checks `conv2d` and `causal_conv1d` share: dtypes, bias, activation, impl.

  Returns:
    `impl`, an old name replaced by its new one (with a `DeprecationWarning`).
  """
  if impl in _RENAMED:
    warnings.warn(f"impl={impl!r} is now called {_RENAMED[impl]!r}", DeprecationWarning,
                  stacklevel=3)
    impl = _RENAMED[impl]
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
  return impl


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
