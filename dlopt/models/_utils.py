"""Helpers shared by the model modules: parameter counts, argument checks."""

import math
import numbers
from collections.abc import Sequence

import jax

__all__ = ["count_params"]


def count_params(params) -> int:
  """Counts the scalars in a pytree of arrays.

  Args:
    params: any pytree whose leaves have a `.shape` (arrays, or the
      `jax.ShapeDtypeStruct`s that `jax.eval_shape` returns), e.g.
      `variables["params"]`.

  Returns:
    The total number of elements over all leaves, as a Python `int`.
  """
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def check_positive(name: str, value: int) -> None:
  """Raises `ValueError` unless `value` is an integer >= 1."""
  if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
      or value < 1):
    raise ValueError(f"{name} must be a positive integer; got {name}={value!r}")


def check_positive_all(name: str, values: Sequence[int], *,
                       allow_empty: bool = True) -> None:
  """Raises `ValueError` unless every entry of `values` is an integer >= 1."""
  if not allow_empty and not values:
    raise ValueError(f"{name} must not be empty; got {name}={values!r}")
  if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
             and v >= 1 for v in values):
    raise ValueError(
        f"{name} must hold positive integers; got {name}={values!r}")


def check_dropout_rate(dropout_rate: float) -> None:
  """Raises `ValueError` unless `0 <= dropout_rate < 1`."""
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(
        f"dropout_rate must satisfy 0 <= dropout_rate < 1; got {dropout_rate=}")


def check_ndim(model: str, x: jax.Array, ndim: int, layout: str) -> None:
  """Raises `ValueError` unless `x.ndim == ndim`, naming the expected layout."""
  if x.ndim != ndim:
    raise ValueError(f"{model} expects {layout}; got {x.shape=}")
