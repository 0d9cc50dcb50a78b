"""Host-side bookkeeping of the `fit` loop: early stopping, the metric log, the curves plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple, Sequence

__all__ = ["EarlyStopping", "write_metric_log", "append_metric_log", "plot_curves"]


class EarlyStopping(NamedTuple):
  """The early-stopping record: the best monitored value, its epoch, and epochs since.

  Immutable; `update` returns the next record. Serializes with `_asdict()`.
  """

  best: float | None = None
  best_epoch: int = -1
  wait: int = 0

  def update(self, value: float, epoch: int, *, mode: str, min_delta: float
             ) -> tuple["EarlyStopping", bool]:
    """Takes one epoch's monitored value; returns (next record, whether it improved)."""
    if self.best is None:
      improved = math.isfinite(value)
    elif mode == "min":
      improved = value < self.best - min_delta
    else:
      improved = value > self.best + min_delta
    if improved:
      return EarlyStopping(value, epoch, 0), True
    return self._replace(wait=self.wait + 1), False

  def should_stop(self, patience: int | None) -> bool:
    """True once `patience` epochs have passed without improvement."""
    return patience is not None and self.wait >= patience


def append_metric_log(record: dict, path: Path) -> None:
  """Appends one JSON line to the metric log."""
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def write_metric_log(history: Sequence[dict], path: Path) -> None:
  """Writes the whole metric log, one JSON line per epoch (used on resume)."""
  path.write_text("".join(json.dumps(record) + "\n" for record in history))


def plot_curves(history: Sequence[dict], path: Path) -> None:
  """Draws loss and (when present) accuracy per epoch, train and validation, into a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = [record["epoch"] for record in history]
  panels = [("loss", "loss")]
  if any("train_accuracy" in record for record in history):
    panels.append(("accuracy", "accuracy"))
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
  for ax, (key, title) in zip(axes[0], panels):
    for split, style in (("train", "-o"), ("val", "-s")):
      values = [record.get(f"{split}_{key}") for record in history]
      if any(v is not None for v in values):
        ax.plot(epochs, [math.nan if v is None else v for v in values], style,
                label=split, markersize=3)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
