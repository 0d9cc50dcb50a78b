"""`FusedConv`: a convolution layer whose bias, residual and activation run in one kernel.

It holds the same parameters as `flax.linen.Conv` (`kernel [kh, kw, in / groups, out]`,
`bias [out]`, the same initializers) and computes
`activation(conv(x, kernel) + bias + residual)` through `kernels.conv2d`, so on GPU and TPU
the pre-activation never goes to memory.

>>> import jax, jax.numpy as jnp
>>> from dlopt.models.conv import FusedConv
>>> layer = FusedConv(8, (3, 3), activation="relu")
>>> x = jnp.ones((2, 16, 16, 3))
>>> variables = layer.init(jax.random.key(0), x)
>>> jax.tree.map(jnp.shape, variables["params"])
{'bias': (8,), 'kernel': (3, 3, 3, 8)}
>>> layer.apply(variables, x).shape
(2, 16, 16, 8)
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

import kernels
from kernels.conv import IMPLS
from kernels.conv.canonical import ACTIVATIONS

from dlopt.models.pooling import check_pool_window, max_pool

__all__ = ["FusedConv", "check_conv_impl"]

# Activations that commute with a max: act(max(z) + b) == max(act(z + b)).
_NON_DECREASING = (None, "relu")


def check_conv_impl(conv_impl: str) -> None:
  """Raises `ValueError` unless `conv_impl` names a `kernels.conv2d` impl."""
  if conv_impl not in IMPLS:
    raise ValueError(f"conv_impl must be one of {IMPLS}; got conv_impl={conv_impl!r}")


class FusedConv(nn.Module):
  """`activation(conv(x) + bias + residual)`, NHWC, through `kernels.conv2d`.

  Attributes:
    features: output channels.
    kernel_size: `(kh, kw)`.
    strides: an int or `(sh, sw)`.
    padding: "SAME", "VALID", an int or pairs, as `kernels.conv2d` takes it.
    kernel_dilation: an int or `(dh, dw)`.
    feature_group_count: groups; the input channel count must be a multiple.
    use_bias: whether to add a learned bias.
    activation: None, "relu", "gelu" or "silu", applied after the residual is added.
    pool: None, or the window (and stride) of a max pool over the activated output,
      `max_pool(activation(conv(x) + bias + residual), pool)`. For None and "relu", which
      never decrease, that equals `activation(max_pool(conv(x) + residual) + bias)`, and
      the layer computes it so: the bias, the activation and their gradients then touch
      a quarter of the pixels (pool 2), and nothing but the pool reads the full-size map.
    impl: the `impl` of `kernels.conv2d` ("auto", "xla", "xla_implicit_gemm", "pallas", ...).
    dtype: the computation dtype; None promotes the input's and the parameters'.
    param_dtype: the parameters' dtype.
    kernel_init, bias_init: initializers (`flax.linen.Conv`'s defaults).
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int | Sequence[int] = 1
  padding: str | int | Sequence = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  activation: str | None = None
  pool: int | None = None
  impl: str = "auto"
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  def __post_init__(self):
    self.kernel_size = tuple(self.kernel_size)
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {ACTIVATIONS}; "
                       f"got activation={self.activation!r}")
    check_conv_impl(self.impl)
    check_pool_window("pool", self.pool)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, residual: jax.Array | None = None) -> jax.Array:
    """Applies the layer.

    Args:
      x: `[batch, height, width, in_channels]`.
      residual: `[batch, out_h, out_w, features]` added before the activation, or None.

    Returns:
      `[batch, out_h, out_w, features]` in the computation dtype, or
      `[batch, out_h // pool, out_w // pool, features]` with `pool`.
    """
    in_channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, in_channels // self.feature_group_count,
                         self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias, residual = nn.dtypes.promote_dtype(x, kernel, bias, residual,
                                                        dtype=self.dtype)
    conv = functools.partial(kernels.conv2d, stride=self.strides, padding=self.padding,
                             dilation=self.kernel_dilation, groups=self.feature_group_count,
                             impl=self.impl)
    if self.pool is None:
      return conv(x, kernel, bias, activation=self.activation, residual=residual)
    if self.activation not in _NON_DECREASING:
      return max_pool(conv(x, kernel, bias, activation=self.activation, residual=residual),
                      self.pool)
    y = max_pool(conv(x, kernel, None, residual=residual), self.pool)
    if bias is not None:
      y = y + bias
    return jax.nn.relu(y) if self.activation == "relu" else y
