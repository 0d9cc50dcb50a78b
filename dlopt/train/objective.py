"""What a run minimizes: the data loss plus optional L1/L2 penalties on the parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dlopt import losses, metrics

__all__ = ["Objective", "LOSSES"]

LOSSES = ("cross_entropy", "mse")


@dataclasses.dataclass(frozen=True)
class Objective:
  """The training objective.

  Attributes:
    loss: "cross_entropy" (classification: logits [B, C], integer labels [B] or one-hot
      [B, C]) or "mse" (regression: predictions and targets [B, ...]).
    label_smoothing: cross-entropy label smoothing in [0, 1).
    l1: coefficient of `dlopt.losses.l1_penalty(params)` added to the loss.
    l2: coefficient of `dlopt.losses.l2_penalty(params)` (coupled L2; for decoupled decay
      use `OptimizerConfig.weight_decay`).
  """

  loss: str = "cross_entropy"
  label_smoothing: float = 0.0
  l1: float = 0.0
  l2: float = 0.0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"Objective.loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
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
    return self.loss == "cross_entropy"

  def data_loss(self, outputs: jax.Array, targets: jax.Array, weights=None) -> jax.Array:
    """The weighted mean data loss of a batch (float32 scalar)."""
    if self.is_classification:
      return losses.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing,
                                  weights=weights)
    return losses.mse(outputs, targets, weights=weights)

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
      result["accuracy"] = metrics.accuracy(outputs, targets, weights)
    return result
