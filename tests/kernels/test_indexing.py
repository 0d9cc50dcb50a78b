"""`kernels._indexing`: int32 loop indices and division, with and without x64."""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import _indexing
from kernels._indexing import as_int32, div, fori_loop, rem


def _indices(lower, upper):
  """The indices a `fori_loop` body sees (-1 where none), and their traced dtypes."""
  dtypes = []

  def record(i, seen):
    dtypes.append(i.dtype)
    return seen.at[i].set(i)

  return fori_loop(lower, upper, record, jnp.full(8, -1, jnp.int32)), dtypes


@pytest.mark.parametrize("wide", [False, True])
def test_index_is_int32_with_static_and_traced_bounds(wide, x64):
  jax.config.update("jax_enable_x64", wide)  # the x64 fixture restores it afterwards
  seen, dtypes = _indices(2, 5)
  assert np.asarray(seen).tolist() == [-1, -1, 2, 3, 4, -1, -1, -1] and dtypes == [jnp.int32]
  traced = jax.jit(lambda upper: _indices(1, upper)[0])(jnp.asarray(3))
  assert np.asarray(traced).tolist() == [-1, 1, 2, -1, -1, -1, -1, -1]
  assert np.asarray(_indices(4, 4)[0]).tolist() == [-1] * 8  # an empty range: init


@pytest.mark.parametrize("wide", [False, True])
def test_div_and_rem_are_int32(wide, x64):
  jax.config.update("jax_enable_x64", wide)  # the x64 fixture restores it afterwards
  a = jnp.asarray(-7, jnp.int32)
  assert (int(div(a, 2)), int(rem(a, 2))) == (-3, -1)  # toward zero, as lax
  assert div(a, 2).dtype == rem(a, 2).dtype == jnp.int32
  assert as_int32(5).dtype == np.int32 and as_int32(jnp.arange(3)).dtype == jnp.int32


def test_docstring_example():
  assert doctest.testmod(_indexing, raise_on_error=False).failed == 0
