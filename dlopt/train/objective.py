"""What a run minimizes: the data loss plus optional L1/L2 penalties on the parameters.

`fit(model, data, objective=Objective("mse"))`; the objective is the optimizer's peer,
not a part of `FitConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dlopt import losses, metrics

__all__ = ["Objective", "LOSSES"]

LOSSES = ("cross_entropy", "mse", "distillation")


@dataclasses.dataclass(frozen=True)
class Objective:
  """The training objective.

  Attributes:
    loss: "cross_entropy" (classification: logits [B, C], integer labels [B] or one-hot
      [B, C]; sequence models: logits [B, T, C] with labels [B, T]), "mse" (regression:
      predictions and targets [B, ...]) or "distillation" (targets are pairs
      `(labels [B], teacher_logits [B, C])`: `alpha * T^2 KL(teacher/T || student/T) +
      (1 - alpha) * cross_entropy(labels)`, Hinton et al. 2015).
    label_smoothing: cross-entropy label smoothing in [0, 1).
    l1: coefficient of `dlopt.losses.l1_penalty(params)` added to the loss.
    l2: coefficient of `dlopt.losses.l2_penalty(params)` (coupled L2; for decoupled decay
      use `OptimizerConfig.weight_decay`).
    temperature: the distillation temperature T > 0.
    alpha: the distillation loss's weight in [0, 1] (the hard-label loss gets 1 - alpha).
  """

  loss: str = "cross_entropy"
  label_smoothing: float = 0.0
  l1: float = 0.0
  l2: float = 0.0
  temperature: float = 4.0
  alpha: float = 0.5

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"Objective.loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
    if not self.temperature > 0:
      raise ValueError(f"Objective.temperature must be > 0; got {self.temperature}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"Objective.alpha must be in [0, 1]; got {self.alpha}")
    if self.loss != "cross_entropy" and self.label_smoothing:
      raise ValueError("Objective.label_smoothing applies only to loss='cross_entropy'; "
                       f"got label_smoothing={self.label_smoothing} with loss={self.loss!r}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"Objective.label_smoothing must be in [0, 1); got {self.label_smoothing}")
    for name in ("l1", "l2"):
      if getattr(self, name) < 0:
        raise ValueError(f"Objective.{name} must be >= 0; got {getattr(self, name)}")

  @property
  def is_classification(self) -> bool:
    return self.loss in ("cross_entropy", "distillation")

  def labels(self, targets):
    """The hard labels in `targets` (the first of a distillation pair)."""
    return targets[0] if self.loss == "distillation" else targets

  def data_loss(self, outputs: jax.Array, targets, weights=None) -> jax.Array:
    """The weighted mean data loss of a batch (float32 scalar).

    `weights` are per example, `[B]`; for sequence outputs `[B, T, C]` they weigh every
    position of an example alike.
    """
    if not self.is_classification:
      return losses.mse(outputs, targets, weights=weights)
    weights = _per_position(weights, outputs.shape[:-1])
    if self.loss == "distillation":
      labels, teacher_logits = targets
      return losses.distillation_objective_loss(outputs, labels, teacher_logits,
                                         temperature=self.temperature, alpha=self.alpha,
                                         weights=weights)
    return losses.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing,
                                weights=weights)

  def penalty(self, params: Any) -> jax.Array:
    """The parameter penalty `l1 * |w|_1 + l2 * 0.5 |w|^2` (float32 scalar)."""
    total = jnp.zeros((), jnp.float32)
    if self.l1:
      total += self.l1 * losses.l1_penalty(params)
    if self.l2:
      total += self.l2 * losses.l2_penalty(params)
    return total

  def batch_metrics(self, outputs, targets, weights=None) -> dict[str, jax.Array]:
    """Per-batch metrics logged during training: loss, and accuracy for classification."""
    result = {"loss": self.data_loss(outputs, targets, weights)}
    if self.is_classification:
      labels = self.labels(targets)
      result["accuracy"] = metrics.accuracy(
          outputs, labels, _per_position(weights, outputs.shape[:-1]))
    return result


def _per_position(weights, shape):
  """Per-example weights `[B]` broadcast to per-position `shape` `[B, ...]` (None stays)."""
  if weights is None:
    return None
  weights = jnp.asarray(weights)
  return jnp.broadcast_to(weights.reshape(weights.shape + (1,) * (len(shape) - weights.ndim)),
                          shape)
