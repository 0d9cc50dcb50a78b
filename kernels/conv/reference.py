"""The plain XLA definitions of `conv2d` and `causal_conv1d`: the truth every path is tested against."""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

from kernels.conv.canonical import activate

__all__ = ["conv2d_reference", "causal_conv1d_reference"]


def _accumulation_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _epilogue(acc, b, residual, activation, dtype):
  if b is not None:
    acc = acc + b.astype(acc.dtype)
  if residual is not None:
    acc = acc + residual.astype(acc.dtype)
  return activate(acc, activation).astype(dtype)


def conv2d_reference(x, w, b=None, *, stride=(1, 1), padding=((0, 0), (0, 0)),
                     dilation=(1, 1), groups=1, activation=None, residual=None) -> jax.Array:
  """`activation(conv(x, w) + b + residual)` with `lax.conv_general_dilated`.

  Args:
    x: `[N, H, W, Cin]`.
    w: `[KH, KW, Cin / groups, Cout]`, `x`'s dtype.
    b: `[Cout]` or None.
    stride, dilation: `(h, w)` int pairs.
    padding: `((top, bottom), (left, right))`.
    groups: feature groups; `Cin` and `Cout` divisible by it.
    activation: None, "relu", "gelu" (tanh approximation) or "silu".
    residual: `[N, OH, OW, Cout]` or None.

  Returns:
    `[N, OH, OW, Cout]` in `x.dtype`; the sum and the epilogue run in float32 (float64 for
    float64 inputs).
  """
  acc = lax.conv_general_dilated(
      x, w, window_strides=tuple(stride), padding=tuple(map(tuple, padding)),
      rhs_dilation=tuple(dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups, preferred_element_type=_accumulation_dtype(x.dtype))
  return _epilogue(acc, b, residual, activation, x.dtype)


def causal_conv1d_reference(x, w, b=None, *, activation=None) -> jax.Array:
  """Depthwise causal convolution: `y[:, t, c] = act(sum_k x[:, t - K + 1 + k, c] w[k, c] + b[c])`.

  Args:
    x: `[batch, seq, channels]`.
    w: `[K, channels]`, `x`'s dtype.
    b: `[channels]` or None.
    activation: None, "relu", "gelu" or "silu".

  Returns:
    `[batch, seq, channels]` in `x.dtype` (positions before the start read zeros).
  """
  kernel, seq = w.shape[0], x.shape[1]
  acc_dtype = _accumulation_dtype(x.dtype)
  padded = jnp.pad(x, ((0, 0), (kernel - 1, 0), (0, 0))).astype(acc_dtype)
  acc = sum(padded[:, k:k + seq] * w[k].astype(acc_dtype) for k in range(kernel))
  return _epilogue(acc, b, None, activation, x.dtype)
