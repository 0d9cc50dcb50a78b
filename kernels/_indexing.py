"""int32 index arithmetic for the Pallas kernels, with or without `jax_enable_x64`.

Program ids are int32 scalars. Under `jax_enable_x64` a Python int becomes an int64 where
a `lax` op or a primitive meets it (`lax.div(pl.program_id(0), 4)` is then a TypeError,
`pltpu.roll(x, 3, 0)` an i64 shift that Mosaic rejects), and `lax.fori_loop` over
Python-int bounds counts in int64. These helpers keep every index int32 in both modes, so
that the kernels trace, and lower, the same either way.

>>> import jax
>>> from kernels._indexing import div, fori_loop
>>> fori_loop(0, 4, lambda i, total: total + div(i, 2), jax.numpy.int32(0)).dtype
dtype('int32')
"""

from __future__ import annotations

from jax import lax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_int32", "div", "fori_loop", "rem"]


def as_int32(x):
  """`x` as int32: a Python or NumPy int as a NumPy int32 scalar, an array converted.

  For operands that no promotion reaches, e.g. the shift of `pltpu.roll`, which Mosaic
  takes as an i32 and which a Python int would make an i64 under x64.
  """
  if isinstance(x, (int, np.integer)):
    return np.int32(x)
  return lax.convert_element_type(x, jnp.int32)


def div(a, b):
  """`lax.div(a, b)` (rounding toward zero) in int32; `a` and `b` are ints or int arrays."""
  return lax.div(as_int32(a), as_int32(b))


def rem(a, b):
  """`lax.rem(a, b)` (the sign of `a`) in int32; `a` and `b` are ints or int arrays."""
  return lax.rem(as_int32(a), as_int32(b))


def fori_loop(lower, upper, body, init):
  """`lax.fori_loop(lower, upper, body, init)` whose index `body` gets is int32.

  Python-int bounds give a static trip count: the same scan that `lax.fori_loop` builds
  (Pallas lowers it to a for loop), but counting in int32 where `lax.fori_loop` counts in
  a Python int, int64 under x64. Traced bounds give a while loop over int32 bounds.

  Args:
    lower, upper: the bounds, `[lower, upper)`: Python ints or int scalars.
    body: `(index, value) -> value`, `index` an int32 scalar.
    init: the initial value.

  Returns:
    The value after the last step (`init` for an empty range).
  """
  if not (isinstance(lower, (int, np.integer)) and isinstance(upper, (int, np.integer))):
    return lax.fori_loop(as_int32(lower), as_int32(upper), body, init)

  def step(carry, _):
    index, value = carry
    return (lax.add(index, np.int32(1)), body(index, value)), None

  (_, value), _ = lax.scan(step, (np.int32(lower), init), None,
                           length=max(int(upper) - int(lower), 0))
  return value
