"""Host-side preprocessing of tabular arrays `x [N, D]` and targets `y [N, ...]`.

Rows with missing values (NaN) can be dropped or imputed, duplicate rows
dropped, and features scaled. Imputers and scalers are fit on the training
split only and applied to every split. Standard scaling reuses
`dlopt.data.normalize`: a `Scaler` holds a `Normalization`, so its statistics
also work on `jax.Array`s inside `jax.jit`.

Example:

  >>> import numpy as np
  >>> from dlopt.data.tabular import drop_duplicates, fit_imputer, fit_scaler
  >>> x = np.array([[1.0, 10.0], [np.nan, 20.0], [3.0, 30.0], [3.0, 30.0]])
  >>> x, _ = drop_duplicates(x)
  >>> imputer = fit_imputer(x, strategy="mean")
  >>> imputer.values.tolist()
  [2.0, 20.0]
  >>> x = imputer.apply(x)
  >>> scaler = fit_scaler(x, kind="minmax")
  >>> scaler.apply(x).tolist()
  [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]
  >>> bool(np.allclose(scaler.invert(scaler.apply(x)), x))
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dlopt.data.normalize import Normalization
from dlopt.data.normalize import denormalize
from dlopt.data.normalize import fit_normalization
from dlopt.data.normalize import normalize

__all__ = [
    "IMPUTE_STRATEGIES",
    "SCALER_KINDS",
    "Imputer",
    "Scaler",
    "drop_duplicates",
    "drop_missing",
    "fit_imputer",
    "fit_scaler",
]

IMPUTE_STRATEGIES = ("mean", "median", "constant")
SCALER_KINDS = ("standard", "minmax")


def _check_table(x: Any, *, min_rows: int = 0) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or x.dtype.kind not in "biuf" or x.shape[0] < min_rows:
    rows = f" with at least {min_rows} row(s)" if min_rows else ""
    raise ValueError(
        f"x must be a real-valued array [N, D]{rows}; got x.shape={x.shape}"
        f" and x.dtype={x.dtype}."
    )
  return x


def _check_targets(y: Any, n: int) -> np.ndarray | None:
  if y is None:
    return None
  y = np.asarray(y)
  if y.ndim == 0 or y.shape[0] != n:
    raise ValueError(
        f"y must have one entry per row of x, shape [{n}, ...]; got y.shape={y.shape}."
    )
  return y


def _nan_rows(a: np.ndarray) -> np.ndarray:
  """`[N]` bool: whether row `n` of `a` `[N, ...]` holds a NaN."""
  if a.dtype.kind not in "fc":
    return np.zeros(a.shape[0], dtype=bool)
  return np.isnan(a.reshape(a.shape[0], -1)).any(axis=1)


def _row_bytes(a: np.ndarray) -> np.ndarray:
  """`[N, K]` uint8: the bytes of each row, with equal floats given equal bytes."""
  a = np.ascontiguousarray(a.reshape(a.shape[0], -1))
  if a.dtype.kind in "fc":
    a = np.where(np.isnan(a), np.nan, a + 0)  # one NaN pattern; -0.0 + 0 is 0.0
  return a.view(np.uint8).reshape(a.shape[0], -1)


def drop_missing(x: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Drops the rows with a NaN in `x` or in `y`.

  Args:
    x: features `[N, D]`, any real dtype.
    y: optional targets `[N, ...]`.

  Returns:
    `(x, y)`, the kept rows in their order, dtypes unchanged; `y` is `None`
    when not given.

  Raises:
    ValueError: `x` is not `[N, D]` or `y` does not have `N` rows.
  """
  x = _check_table(x)
  y = _check_targets(y, x.shape[0])
  missing = _nan_rows(x)
  if y is not None:
    missing |= _nan_rows(y)
  keep = ~missing
  return x[keep], (None if y is None else y[keep])


def drop_duplicates(x: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Keeps the first of each group of identical rows of `x` (and `y`).

  Rows are identical when every feature (and target) is equal; NaN counts as
  equal to NaN and -0.0 to 0.0. With `y`, rows equal in `x` but not in `y`
  are all kept.

  Args:
    x: features `[N, D]`, any real dtype.
    y: optional targets `[N, ...]`.

  Returns:
    `(x, y)`, the first occurrences in their original order, dtypes
    unchanged; `y` is `None` when not given.

  Raises:
    ValueError: `x` is not `[N, D]` or `y` does not have `N` rows.
  """
  x = _check_table(x)
  y = _check_targets(y, x.shape[0])
  if x.shape[0] == 0:
    return x, y
  parts = [_row_bytes(x)] + ([] if y is None else [_row_bytes(y)])
  rows = np.ascontiguousarray(np.concatenate(parts, axis=1))  # [N, K]
  keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()  # [N]
  _, first = np.unique(keys, return_index=True)  # index of the first occurrence
  keep = np.sort(first)
  return x[keep], (None if y is None else y[keep])


def _as_float(x: np.ndarray) -> np.ndarray:
  return x if x.dtype.kind == "f" else x.astype(np.float64)


def _frozen(a: np.ndarray) -> np.ndarray:
  a = np.array(a)
  a.setflags(write=False)
  return a


def _check_columns(x: np.ndarray, d: int, owner: str) -> None:
  if x.shape[1] != d:
    raise ValueError(
        f"x must have the {d} columns {owner} was fit on; got x.shape={x.shape}."
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Imputer:
  """Fills NaNs column by column with values fit on training data.

  Attributes:
    strategy: one of mean, median, constant.
    values: float64 `[D]`, the fill value of each column (read-only).
  """

  strategy: str
  values: np.ndarray

  def apply(self, x: Any) -> np.ndarray:
    """Returns `x` with each NaN replaced by the value of its column.

    Args:
      x: `[M, D]`, any real dtype; any split.

    Returns:
      A new `[M, D]` array: float dtypes are kept, others become float64.

    Raises:
      ValueError: `x` is not `[M, D]` with the `D` columns of the fit.
    """
    x = _as_float(_check_table(x))
    _check_columns(x, self.values.shape[0], "the imputer")
    return np.where(np.isnan(x), self.values.astype(x.dtype), x)


def fit_imputer(
    x: Any, strategy: str = "mean", fill_value: float = 0.0
) -> Imputer:
  """Fits the per-column fill values of `strategy`, ignoring NaNs.

  Args:
    x: training features `[N, D]`, any real dtype, NaN where missing.
    strategy: "mean" or "median" of each column's present values, or
      "constant" for `fill_value` everywhere.
    fill_value: the value of the "constant" strategy, a finite number;
      ignored by the others.

  Returns:
    An `Imputer` whose `values` are float64 `[D]`.

  Raises:
    ValueError: `x` is not `[N, D]` with `N >= 1`, `strategy` is unknown,
      `fill_value` is not finite, or a column is all NaN under mean or median.
  """
  x = _check_table(x, min_rows=1)
  if strategy not in IMPUTE_STRATEGIES:
    raise ValueError(
        f"strategy must be one of {', '.join(IMPUTE_STRATEGIES)}; got {strategy=}."
    )
  if strategy == "constant":
    if not (isinstance(fill_value, (int, float, np.number))
            and not isinstance(fill_value, bool) and np.isfinite(fill_value)):
      raise ValueError(f"fill_value must be a finite number; got {fill_value=}.")
    return Imputer(strategy, _frozen(np.full(x.shape[1], float(fill_value))))
  x = x.astype(np.float64)
  empty = np.isnan(x).all(axis=0)
  if empty.any():
    raise ValueError(
        f"x has no value to take the {strategy} of in columns"
        f" {np.flatnonzero(empty).tolist()} (all NaN); drop them or use"
        " strategy='constant'."
    )
  reduce = np.nanmean if strategy == "mean" else np.nanmedian
  return Imputer(strategy, _frozen(reduce(x, axis=0)))


@dataclasses.dataclass(frozen=True, eq=False)
class Scaler:
  """Per-column affine scaling, `(x - stats.mean) / stats.std`, and its inverse.

  Attributes:
    kind: "standard" (zero mean, unit variance) or "minmax" (to [0, 1]).
    stats: float32 `Normalization` of shape `[D]`; for "minmax" its `mean` is
      the column minimum and its `std` the column range (1 for a constant
      column). Usable with `normalize` on `jax.Array`s inside `jax.jit`.
  """

  kind: str
  stats: Normalization

  def apply(self, x: Any) -> np.ndarray:
    """Scales `x`.

    Args:
      x: `[M, D]`, any real dtype; NaNs stay NaN.

    Returns:
      `[M, D]` under numpy's promotion with the float32 statistics: float32
      for float32 (and 8- or 16-bit integer) input, float64 for float64 (and
      wider integers).

    Raises:
      ValueError: `x` is not `[M, D]` with the `D` columns of the fit.
    """
    x = _check_table(x)
    _check_columns(x, self.stats.mean.shape[0], "the scaler")
    return normalize(x, self.stats)

  def invert(self, z: Any) -> np.ndarray:
    """Maps scaled values back to the original units.

    Args:
      z: `[M, D]` scaled values.

    Returns:
      `[M, D]`, `z * stats.std + stats.mean`, dtype as for `apply`.

    Raises:
      ValueError: `z` is not `[M, D]` with the `D` columns of the fit.
    """
    z = _check_table(z)
    _check_columns(z, self.stats.mean.shape[0], "the scaler")
    return denormalize(z, self.stats)


def _minmax_stats(x: np.ndarray) -> Normalization:
  low = x.min(axis=0).astype(np.float64)
  span = (x.max(axis=0).astype(np.float64) - low).astype(np.float32)
  span[span == 0] = 1.0  # constant column: x - min is 0, no division by zero
  return Normalization(mean=low.astype(np.float32), std=span)


def fit_scaler(x: Any, kind: str = "standard") -> Scaler:
  """Fits per-column scaling statistics on training features.

  "standard" uses `fit_normalization` (population std, floored at 1e-6 so a
  constant column maps to 0); "minmax" maps each column's training range onto
  [0, 1] (a constant column maps to 0).

  Args:
    x: training features `[N, D]`, any real dtype, all finite (drop or impute
      missing values first).
    kind: "standard" or "minmax".

  Returns:
    A `Scaler` with float32 statistics `[D]`.

  Raises:
    ValueError: `x` is not `[N, D]` with `N >= 1`, holds NaN or inf, or
      `kind` is unknown.
  """
  x = _check_table(x, min_rows=1)
  if kind not in SCALER_KINDS:
    raise ValueError(f"kind must be one of {', '.join(SCALER_KINDS)}; got {kind=}.")
  finite = np.isfinite(x)
  if not finite.all():
    columns = np.flatnonzero(~finite.all(axis=0)).tolist()
    raise ValueError(
        f"x must be finite to fit a scaler; got NaN or inf in columns {columns}"
        " (use drop_missing or fit_imputer first)."
    )
  stats = fit_normalization(x, axis=0) if kind == "standard" else _minmax_stats(x)
  return Scaler(kind, stats)
