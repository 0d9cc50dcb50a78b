"""`max_pool`: max over non-overlapping windows, differentiated without select-and-scatter.

>>> import jax.numpy as jnp
>>> from dlopt.models.pooling import max_pool
>>> x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3)
>>> max_pool(x, 2).shape
(2, 2, 2, 3)
"""

from __future__ import annotations

import jax

__all__ = ["check_pool_window", "max_pool"]


def check_pool_window(name: str, window) -> None:
  """Raises `ValueError` unless `window` is None or an int >= 1."""
  if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                             or window < 1):
    raise ValueError(f"{name} must be None or an int >= 1; got {name}={window!r}")


def max_pool(x: jax.Array, window: int) -> jax.Array:
  """The max over each `window x window` patch, at stride `window`.

  The same values as `flax.linen.max_pool(x, (window, window), strides=(window, window))`:
  rows and columns past the last whole window are dropped. It is written as a reshape and
  a max: XLA on the CPU differentiates `max_pool` through select-and-scatter, which took
  35 ms of a 90 ms MNIST CNN train step there (`bench/results/cpu_speed.json`); the
  gradient of this max is elementwise. Where several entries of a window tie for the
  maximum, the gradient is split evenly among them (select-and-scatter gives it all to
  the first); both are subgradients of the max.

  Args:
    x: `[batch, height, width, channels]`, any float dtype.
    window: the window's side and stride, an int >= 1.

  Returns:
    `[batch, height // window, width // window, channels]` in `x.dtype`.

  Raises:
    ValueError: if `x` is not 4-D, `window` is not a positive int, or the window does
      not fit in the image.
  """
  check_pool_window("window", window)
  if window is None or getattr(x, "ndim", None) != 4:
    raise ValueError(f"max_pool needs x [batch, height, width, channels] and an int "
                     f"window; got x.shape={getattr(x, 'shape', None)}, window={window!r}")
  batch, height, width, channels = x.shape
  out_h, out_w = height // window, width // window
  if out_h < 1 or out_w < 1:
    raise ValueError(f"window={window} does not fit in the {height}x{width} image "
                     f"(x.shape={x.shape})")
  x = x[:, :out_h * window, :out_w * window]
  return x.reshape(batch, out_h, window, out_w, window, channels).max(axis=(2, 4))
