"""Tile arithmetic the kernels share: rounding up, powers of two, padding an axis.

>>> from kernels._tiling import next_power_of_2, round_up
>>> round_up(37, 16), next_power_of_2(37)
(48, 64)
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["next_power_of_2", "pad_axis", "round_up"]


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= `n` (Python ints)."""
  return -(-n // multiple) * multiple


def next_power_of_2(n: int) -> int:
  """The smallest power of two >= `n` (1 for `n <= 1`)."""
  return 1 << max(0, (n - 1).bit_length())


def pad_axis(x, axis: int, size: int, value=0):
  """`x` padded with `value` at the end of `axis` up to `size`.

  Args:
    x: an array, or None (returned as is).
    axis: the axis to pad.
    size: the length wanted; an axis already that long (or longer) is left unchanged.
    value: the padding value.
  """
  if x is None or x.shape[axis] >= size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)
