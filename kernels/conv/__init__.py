"""`conv2d` and `causal_conv1d`: fused convolutions, several implementations, one definition.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> x = jax.random.normal(jax.random.key(0), (2, 28, 28, 16))
>>> w = jax.random.normal(jax.random.key(1), (3, 3, 16, 32)) * 0.1
>>> kernels.conv2d(x, w, jnp.zeros(32), activation="relu").shape
(2, 28, 28, 32)
>>> kernels.conv2d(x, w, stride=2, padding="VALID", impl="xla_gemm").shape
(2, 13, 13, 32)

The semantics are `kernels.conv.reference`'s; every path is tested against it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.conv.block_sizes import BlockSizes
from kernels.conv.fused import FusedConfig, fused_conv2d
from kernels.conv.layout import geometry
from kernels.conv.options import IMPLS, check_array, check_common, normalize_padding, pair
from kernels.conv.reference import causal_conv1d_reference, conv2d_reference

__all__ = ["conv2d", "causal_conv1d", "conv2d_reference", "causal_conv1d_reference",
           "BlockSizes", "IMPLS"]


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
      `bench/conv.py`: "xla", or "xla_gemm" for pointwise 1x1 convolutions),
      "xla" (the reference, `lax.conv_general_dilated` plus the epilogue), "xla_gemm" (the
      kernels' implicit GEMM written in XLA, with the same custom backward), "pallas" (this
      backend's kernel; the GPU kernel in interpret mode on the CPU), "pallas_gpu" or
      "pallas_tpu" (that kernel; interpret mode off its hardware).
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
  check_common(x, w, b, activation, impl, block_sizes, cout)
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
  backend, interpret = _resolve(impl, geo)
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
  check_common(x, w, b, activation, impl, block_sizes, x.shape[2])
  backend, interpret = _resolve(impl)
  if backend == "reference":
    return causal_conv1d_reference(x, w, b, activation=activation)
  kernel, channels = w.shape
  x4, w4 = x[:, None], w.reshape(1, kernel, 1, channels)
  geo = geometry(x4.shape, w4.shape, stride=(1, 1), padding=((0, 0), (kernel - 1, 0)),
                 dilation=(1, 1), groups=channels)
  config = FusedConfig(geo, activation, backend, block_sizes, interpret)
  return fused_conv2d(x4, w4, b, None, config)[:, 0]


def _resolve(impl: str, geo=None) -> tuple[str, bool]:
  """`impl` -> (backend of the canonical kernels or "reference", interpret mode)."""
  platform = jax.default_backend()
  if impl == "auto":
    impl = "pallas" if platform in ("gpu", "tpu") else _cpu_choice(geo)
  if impl == "pallas":
    impl = "pallas_tpu" if platform == "tpu" else "pallas_gpu"
  if impl == "xla":
    return "reference", False
  if impl == "xla_gemm":
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
  return "xla_gemm" if pointwise else "xla"
