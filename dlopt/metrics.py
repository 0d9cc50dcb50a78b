"""Metrics: accuracy, confusion matrices, precision/recall/F1, running means.

The array functions are pure and jit-compatible. ``weights`` is a per-example
0/1 mask that drops padded examples. A confusion matrix is the natural running
state for classification metrics: sum the matrices of the batches (on device),
then derive precision, recall and F1 once at the end. `Mean` is a CLU-style
running average, an immutable pytree that can be built, merged and returned
inside `jax.jit`.

Example:

  >>> import jax.numpy as jnp
  >>> from dlopt import metrics
  >>> logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
  >>> labels = jnp.array([0, 1, 1])
  >>> float(metrics.accuracy(logits, labels))  # doctest: +ELLIPSIS
  0.666...
  >>> cm = metrics.confusion_matrix(logits.argmax(-1), labels, num_classes=2)
  >>> cm.tolist()
  [[1, 0], [1, 1]]
  >>> metrics.classification_metrics(cm)["macro_recall"]
  0.75
  >>> running = metrics.Mean.empty()
  >>> for batch_loss in [1.0, 2.0, 3.0]:
  ...   running = running.merge(metrics.Mean.from_values(jnp.array(batch_loss)))
  >>> float(running.compute())
  2.0
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlopt._checks import label_kind
from dlopt.losses import weighted_mean

__all__ = [
    "Mean",
    "accuracy",
    "classification_metrics",
    "confusion_matrix",
    "precision_recall_f1",
]


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """``numerator / denominator`` where ``denominator > 0``, else 0."""
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)


def accuracy(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Fraction of examples whose arg-max logit is the label.

  Args:
    logits: ``[batch, classes]`` array (more leading dimensions allowed).
    labels: integer ``[batch]`` class ids, or ``[batch, classes]`` one-hot
      vectors or probabilities (their arg-max is the label).
    weights: optional ``[batch]`` 0/1 mask or per-example weights.

  Returns:
    A float32 scalar in ``[0, 1]`` (0 when every weight is 0).

  Raises:
    ValueError: if the shapes disagree or class ids are not integers.
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if label_kind(logits, labels) == "one_hot":
    labels = jnp.argmax(labels, axis=-1)
  correct = jnp.argmax(logits, axis=-1) == labels
  return weighted_mean(correct, weights)


def confusion_matrix(
    predictions: jax.Array,
    labels: jax.Array,
    num_classes: int,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Counts of (true label, predicted label) pairs.

  Examples whose label or prediction lies outside ``[0, num_classes)`` (e.g.
  a padding id of -1) are not counted.

  Args:
    predictions: integer ``[batch]`` predicted class ids.
    labels: integer ``[batch]`` true class ids.
    num_classes: static positive int.
    weights: optional ``[batch]`` 0/1 mask (or integer counts); it is cast to
      int32, so fractional weights are truncated.

  Returns:
    int32 ``[num_classes, num_classes]``; entry ``[i, j]`` counts the examples
    of true class ``i`` predicted as class ``j`` (rows true, columns
    predicted, as in `sklearn.metrics.confusion_matrix`).

  Raises:
    ValueError: on a bad ``num_classes``, disagreeing shapes, or non-integer
      ``predictions`` or ``labels``.
  """
  predictions = jnp.asarray(predictions)
  labels = jnp.asarray(labels)
  if (
      isinstance(num_classes, (bool, np.bool_))
      or not isinstance(num_classes, (int, np.integer))
      or num_classes < 1
  ):
    raise ValueError(
        "num_classes must be a static positive int, got "
        f"num_classes={num_classes!r}."
    )
  if predictions.ndim != 1 or labels.shape != predictions.shape:
    raise ValueError(
        "predictions and labels must both have shape [batch], got "
        f"predictions.shape={predictions.shape} and "
        f"labels.shape={labels.shape}."
    )
  for name, x in (("predictions", predictions), ("labels", labels)):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(
          f"{name} must be integer class ids, got {name}.dtype={x.dtype}."
      )
  true_one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  pred_one_hot = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)
  if weights is not None:
    weights = jnp.asarray(weights)
    if weights.shape != labels.shape:
      raise ValueError(
          f"weights must have shape {labels.shape} (one per example), got "
          f"weights.shape={weights.shape}."
      )
    true_one_hot = true_one_hot * weights.astype(jnp.int32)[:, None]
  return jnp.einsum(
      "bi,bj->ij", true_one_hot, pred_one_hot,
      preferred_element_type=jnp.int32,
  )


def _check_confusion(confusion: jax.Array) -> jax.Array:
  confusion = jnp.asarray(confusion)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(
        "confusion must be a square [num_classes, num_classes] matrix, got "
        f"confusion.shape={confusion.shape}."
    )
  return confusion.astype(jnp.float32)


def precision_recall_f1(confusion: jax.Array) -> dict[str, jax.Array]:
  """Per-class and macro-averaged precision, recall and F1.

  A class whose denominator is 0 (never predicted, for precision; absent from
  the labels, for recall; both, for F1) scores 0, as with scikit-learn's
  ``zero_division=0``; the result never holds NaN. Macro averages are
  unweighted means over all ``num_classes`` classes, including classes absent
  from both labels and predictions (which score 0); scikit-learn matches this
  when given ``labels=range(num_classes)``.

  Args:
    confusion: ``[num_classes, num_classes]`` counts, rows true and columns
      predicted (`confusion_matrix`), any numeric dtype.

  Returns:
    A dict with float32 ``[num_classes]`` arrays under ``"precision"``,
    ``"recall"`` and ``"f1"``, and float32 scalars under
    ``"macro_precision"``, ``"macro_recall"`` and ``"macro_f1"``.

  Raises:
    ValueError: if ``confusion`` is not a square matrix.
  """
  confusion = _check_confusion(confusion)
  true_positives = jnp.diagonal(confusion)
  predicted = jnp.sum(confusion, axis=0)
  actual = jnp.sum(confusion, axis=1)
  precision = _safe_divide(true_positives, predicted)
  recall = _safe_divide(true_positives, actual)
  f1 = _safe_divide(2 * true_positives, predicted + actual)
  return {
      "precision": precision,
      "recall": recall,
      "f1": f1,
      "macro_precision": jnp.mean(precision),
      "macro_recall": jnp.mean(recall),
      "macro_f1": jnp.mean(f1),
  }


def classification_metrics(confusion: jax.Array) -> dict[str, float]:
  """Summary classification metrics as Python floats, for logging.

  Host side: this fetches the results from the device, so call it outside
  `jax.jit`, e.g. once per evaluation on the summed confusion matrix.

  Args:
    confusion: ``[num_classes, num_classes]`` counts, rows true and columns
      predicted.

  Returns:
    A dict of Python floats: ``"accuracy"`` (trace over total, 0 for an empty
    matrix), ``"macro_precision"``, ``"macro_recall"`` and ``"macro_f1"``
    (see `precision_recall_f1`).

  Raises:
    ValueError: if ``confusion`` is not a square matrix.
  """
  confusion = _check_confusion(confusion)
  scores = precision_recall_f1(confusion)
  summary = {
      "accuracy": _safe_divide(jnp.trace(confusion), jnp.sum(confusion)),
      "macro_precision": scores["macro_precision"],
      "macro_recall": scores["macro_recall"],
      "macro_f1": scores["macro_f1"],
  }
  return {name: float(value) for name, value in jax.device_get(summary).items()}


class Mean(NamedTuple):
  """A running (weighted) mean: an immutable pytree of two float32 scalars.

  Build one per batch with `Mean.from_values`, combine with `Mean.merge`
  (associative and commutative, so chunks can be merged in any order, inside
  or outside `jax.jit`), and read it with `Mean.compute`.

  Attributes:
    total: float32 scalar, the (weighted) sum of the values seen.
    count: float32 scalar, the number (or total weight) of the values seen.
  """

  total: jax.Array
  count: jax.Array

  @classmethod
  def empty(cls) -> Mean:
    """Returns the mean of nothing: ``total = count = 0``."""
    zero = jnp.zeros((), jnp.float32)
    return cls(total=zero, count=zero)

  @classmethod
  def from_values(
      cls, values: jax.Array, weights: jax.Array | None = None
  ) -> Mean:
    """Summarizes an array of values.

    Args:
      values: array of any shape (a scalar counts as one value).
      weights: optional array of the shape of ``values``: a 0/1 mask or
        non-negative weights.

    Returns:
      A `Mean` with ``total = sum(weights * values)`` and
      ``count = sum(weights)`` (``values.size`` without weights).

    Raises:
      ValueError: if ``weights`` does not have the shape of ``values``.
    """
    values = jnp.asarray(values, jnp.float32)
    if weights is None:
      return cls(
          total=jnp.sum(values), count=jnp.asarray(values.size, jnp.float32)
      )
    weights = jnp.asarray(weights)
    if weights.shape != values.shape:
      raise ValueError(
          f"weights must have the shape of values, {values.shape}, got "
          f"weights.shape={weights.shape}."
      )
    weights = weights.astype(jnp.float32)
    return cls(total=jnp.sum(weights * values), count=jnp.sum(weights))

  def merge(self, other: Mean) -> Mean:
    """Returns the mean of the values seen by ``self`` and ``other``."""
    return type(self)(
        total=self.total + other.total, count=self.count + other.count
    )

  def compute(self) -> jax.Array:
    """Returns ``total / count`` as a float32 scalar, and 0 when count is 0.

    An empty mean reads as 0 rather than NaN, so that a NaN in a log always
    means a NaN in the data.
    """
    return _safe_divide(self.total, self.count)
