"""Deterministic train / validation / test splits, stratified by class.

Example:

  >>> import numpy as np
  >>> from dlopt.data import train_val_test_split
  >>> x = np.arange(100, dtype=np.float32).reshape(50, 2)
  >>> y = np.repeat(np.arange(5), 10)
  >>> splits = train_val_test_split(x, y, val_fraction=0.2, test_fraction=0.2)
  >>> [len(part.y) for part in splits]
  [30, 10, 10]
  >>> np.bincount(splits.val.y).tolist()
  [2, 2, 2, 2, 2]
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np

__all__ = ["Split", "Splits", "train_val_test_split"]


class Split(NamedTuple):
  """One part of a data set.

  Attributes:
    x: inputs `[n, ...]`.
    y: targets `[n, ...]`.
  """

  x: np.ndarray
  y: np.ndarray


class Splits(NamedTuple):
  """The three disjoint parts of a data set; `val`, `test` may hold 0 rows."""

  train: Split
  val: Split
  test: Split


def _check_fraction(name: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1); got {name}={value!r}.")


def _part_size(fraction: float, n: int) -> int:
  return round(Fraction(fraction) * n)


def _stratified_order(y: np.ndarray, rank: np.ndarray) -> np.ndarray:
  """Orders examples so that every prefix holds each class in proportion.

  Within class c (n_c examples), the example of random rank r gets the key
  (2r + 1) / (2 n_c), the Sainte-Laguë / Webster divisor sequence: any prefix
  of the sorted order holds t * n_c examples of each class, to within one, for
  a common t, and prefixes nest, so val and test both stay proportional. The keys are
  exact in float64 while n_c < 2**26; ties between classes are broken by the
  random `rank`.
  """
  _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
  by_class = np.lexsort((rank, inverse))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank_in_class = np.empty(len(y), dtype=np.int64)
  rank_in_class[by_class] = np.arange(len(y)) - np.repeat(starts, counts)
  key = (2 * rank_in_class + 1) / (2 * counts[inverse]).astype(np.float64)
  return np.lexsort((rank, key))


def train_val_test_split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    stratify: bool = True,
) -> Splits:
  """Splits `(x, y)` into disjoint train, validation and test parts.

  The part sizes are `round(val_fraction * n)` and `round(test_fraction * n)`,
  computed exactly; the rest is training data. When `stratify` is set and `y`
  holds integer (or bool) class labels of shape `[n]`, each class is divided
  in the same proportions (to within one example per class); otherwise (for
  example float regression targets) the split is a plain shuffle. Each part
  comes in a random order. The result depends only on the inputs and `seed`.

  Args:
    x: inputs `[n, ...]`, any dtype.
    y: targets `[n, ...]`; int labels `[n]` for a stratified split.
    val_fraction: share of the examples for validation, in [0, 1).
    test_fraction: share of the examples for testing, in [0, 1).
    seed: seed of the `np.random.default_rng` that draws the split.
    stratify: whether to split each class in the same proportions.

  Returns:
    `Splits(train, val, test)`, each a `Split(x, y)` of numpy arrays with the
    dtypes of `x` and `y`; together they are a permutation of the input.

  Raises:
    ValueError: `x` and `y` differ in length, a fraction is out of range, or
      the split leaves no training example.
  """
  x = np.asarray(x)
  y = np.asarray(y)
  if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
    raise ValueError(
        "x and y must have the same number of examples; got"
        f" {x.shape=} and {y.shape=}."
    )
  _check_fraction("val_fraction", val_fraction)
  _check_fraction("test_fraction", test_fraction)
  if val_fraction + test_fraction >= 1.0:
    raise ValueError(
        "val_fraction + test_fraction must be < 1; got"
        f" {val_fraction=} and {test_fraction=}."
    )
  n = x.shape[0]
  n_val = _part_size(val_fraction, n)
  n_test = _part_size(test_fraction, n)
  if n - n_val - n_test < 1:
    raise ValueError(
        f"The split leaves no training example: n={n}, {val_fraction=} gives"
        f" {n_val} and {test_fraction=} gives {n_test}."
    )

  rng = np.random.default_rng(seed)
  rank = np.empty(n, dtype=np.int64)
  rank[rng.permutation(n)] = np.arange(n)
  if stratify and y.ndim == 1 and y.dtype.kind in "biu":
    order = _stratified_order(y, rank)
  else:
    order = np.argsort(rank)
  shuffle_key = rng.permutation(n)

  def part(indices: np.ndarray) -> Split:
    indices = indices[np.argsort(shuffle_key[indices])]
    return Split(x[indices], y[indices])

  return Splits(
      train=part(order[n_val + n_test :]),
      val=part(order[n_test : n_test + n_val]),
      test=part(order[:n_test]),
  )
