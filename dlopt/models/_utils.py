"""Helpers shared by the model modules: parameter counts, argument checks, dtypes."""

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

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


def check_dtype(name: str, value, *, allow_none: bool = False) -> None:
  """Raises `ValueError` unless `value` names a floating dtype (or is None if allowed)."""
  if value is None and allow_none:
    return
  try:
    dtype = None if value is None else jnp.dtype(value)  # np.dtype(None) is float64
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    expected = "None or a floating dtype" if allow_none else "a floating dtype"
    raise ValueError(f"{name} must be {expected} (e.g. jnp.bfloat16, jnp.float32); "
                     f"got {name}={value!r}")


def set_dtypes(model) -> None:
  """Checks a model's `dtype` (None or floating) and `param_dtype` (floating) fields and
  stores them as `np.dtype`s, so that `jnp.float32`, `"float32"` and
  `jnp.dtype("float32")` give one field value (one hash, one repr in `config.json`).

  Called from a module's `__post_init__`, before Flax's.
  """
  check_dtype("dtype", model.dtype, allow_none=True)
  check_dtype("param_dtype", model.param_dtype)
  if model.dtype is not None:
    model.dtype = jnp.dtype(model.dtype)
  model.param_dtype = jnp.dtype(model.param_dtype)


def cast_dtype(x: jax.Array, dtype) -> jax.Array:
  """`x` in `dtype`, or `x` as it is when `dtype` is None."""
  return x if dtype is None else x.astype(dtype)


def float32_logits(logits: jax.Array) -> jax.Array:
  """Logits cast to float32, whatever dtype computed them, so losses run in float32."""
  return logits.astype(jnp.float32)


def check_bool(name: str, value: bool) -> None:
  """Raises `ValueError` unless `value` is a bool."""
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be a bool; got {name}={value!r}")
