"""Evaluation over a whole split in fixed-size padded batches (one compile per split)."""

from __future__ import annotations

import jax
import numpy as np

from dlopt import metrics

__all__ = ["evaluate"]


def evaluate(state, x: np.ndarray, y: np.ndarray, *, eval_step, batch_size: int,
             is_classification: bool, multiple_of: int = 1) -> dict[str, float]:
  """Evaluates `state` on all of `(x, y)`.

  Args:
    state: a `TrainState`.
    x: inputs [N, ...], or a tuple of them (the model's positional inputs).
    y: labels [N] / [N, C] or targets [N, ...] (or a tuple, e.g. a distillation pair).
    eval_step: a jitted `dlopt.train.eval_step` bound to the objective.
    batch_size: examples per eval step; the last batch is padded with weight 0.
    is_classification: whether to report accuracy and F1 from the confusion matrix.
    multiple_of: round the batch size up to a multiple of this (the device count, so
      that every batch splits evenly over the devices).

  Returns:
    `loss`, and for classification `accuracy`, `macro_precision`, `macro_recall`,
    `macro_f1` and `per_class_f1`, as Python floats (lists for per-class values).
  """
  n = len(jax.tree.leaves(x)[0])
  if n == 0:
    return {}
  batch_size = -(-min(batch_size, n) // multiple_of) * multiple_of
  totals = None
  for start in range(0, n, batch_size):
    xb, yb = jax.tree.map(lambda a: a[start:start + batch_size], (x, y))
    real = min(batch_size, n - start)
    weights = np.ones(batch_size, np.float32)
    if real < batch_size:  # pad with copies of the last example, weighted 0
      weights[real:] = 0.0
      xb, yb = jax.tree.map(
          lambda a: np.concatenate([a, np.repeat(a[-1:], batch_size - real, axis=0)]), (xb, yb))
    sums = eval_step(state, (xb, yb), weights)
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = jax.device_get(totals)
  result = {"loss": float(totals["loss_sum"] / totals["count"])}
  if is_classification:
    confusion = totals["confusion"]
    scores = metrics.precision_recall_f1(confusion)
    # Out of the confusion matrix's own total: sequence models count positions, not examples.
    result["accuracy"] = float(np.trace(confusion) / max(np.sum(confusion), 1))
    for key in ("macro_precision", "macro_recall", "macro_f1"):
      result[key] = float(scores[key])
    result["per_class_f1"] = [float(v) for v in np.asarray(scores["f1"])]
  return result
