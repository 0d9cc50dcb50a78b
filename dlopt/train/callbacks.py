"""What happens around the train steps of `fit`: callbacks, and the records they keep.

A callback is an object with hooks that the loop (`dlopt.train.loop.Loop`) calls in order;
subclass `Callback` and override the ones you need, then pass it as `fit(...,
callbacks=[...])`. Every hook gets the loop, which holds `state`, `step`, `position` (the
`LoopState`: epoch, history, ...), `config`, `workdir` and `primary` (process 0), and can
`save()` or `request_stop(reason)`:

- `on_train_begin(loop)`, `on_train_end(loop)` (also after an error or a stop);
- `on_step_end(loop)`: after every train step (`loop.step` steps taken; the step's
  metrics may still be on the device);
- `on_metrics(loop, step, metrics)`: a step's metrics as host floats (`loss`, `accuracy`,
  `grad_norm`), every `log_every` steps;
- `on_evaluate(loop, record)`: at the end of an epoch, add metrics to its record;
- `on_epoch_end(loop, record)`: the record is complete and in `loop.position.history`.

`fit` runs its own behaviour as callbacks of this kind, in this order: `Validation`,
`EarlyStop`, `ProgressBar`, then the user's, then `MetricLog`, `WriteMetrics`
(`dlopt.train.writers`), `PlotCurves`, `Checkpoint` and `StopOnSignal`.

>>> class PrintLoss(Callback):
...   def on_epoch_end(self, loop, record):
...     print(record["epoch"], round(record["train_loss"], 3))
>>> fit(model, data, callbacks=[PrintLoss()])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from dlopt.train.interrupt import Interrupted, StopRequest

__all__ = ["Callback", "Checkpoint", "EarlyStop", "EarlyStopping", "MetricLog", "PlotCurves",
           "ProgressBar", "StopOnSignal", "Validation", "append_metric_log", "plot_curves",
           "write_metric_log"]


class Callback:
  """The hooks `fit` calls (see the module docstring); each does nothing here."""

  def on_train_begin(self, loop) -> None:
    """Before the first step (also when a resumed run has nothing left to do)."""

  def on_step_end(self, loop) -> None:
    """After every train step; `loop.step` steps are done."""

  def on_metrics(self, loop, step: int, metrics: dict[str, float]) -> None:
    """Step `step`'s metrics reached the host (host floats)."""

  def on_evaluate(self, loop, record: dict) -> None:
    """At an epoch's end: add this epoch's evaluation metrics to `record`."""

  def on_epoch_end(self, loop, record: dict) -> None:
    """After an epoch; `record` is complete and last in `loop.position.history`."""

  def on_train_end(self, loop) -> None:
    """After the last step, a stop or an error."""


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
  """Draws loss and (when present) accuracy per epoch, train and validation, into a PNG.

  It draws on a `matplotlib.figure.Figure` of its own: pyplot and the user's backend (a
  notebook's inline plots, say) are left alone.

  Raises:
    ImportError: without matplotlib, naming the `plot` extra.
  """
  try:
    from matplotlib.figure import Figure
  except ImportError as error:
    raise ImportError("plot_curves (FitConfig.plot, curves.png) needs matplotlib: "
                      "pip install 'dlopt[plot]', or pass FitConfig(plot=False)") from error

  epochs = [record["epoch"] for record in history]
  panels = [("loss", "loss")]
  if any("train_accuracy" in record for record in history):
    panels.append(("accuracy", "accuracy"))
  fig = Figure(figsize=(5 * len(panels), 3.6))
  axes = fig.subplots(1, len(panels), squeeze=False)
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


class Validation(Callback):
  """Evaluates on a held-out split at every epoch's end: `val_<metric>` in the record.

  Args:
    split: `(x, y)` host arrays.
    evaluate: `(state, split) -> {metric: value}` (e.g. `dlopt.train.evaluate` bound to an
      eval step); list values (per-class F1) are left out of the record.
    prefix: the record's key prefix.
  """

  def __init__(self, split: tuple, evaluate: Callable[[Any, tuple], dict], prefix: str = "val"):
    self.split, self.evaluate, self.prefix = split, evaluate, prefix

  def on_evaluate(self, loop, record: dict) -> None:
    metrics = self.evaluate(loop.state, self.split)
    record.update({f"{self.prefix}_{k}": v for k, v in metrics.items()
                   if not isinstance(v, list)})


class EarlyStop(Callback):
  """Tracks the monitored metric (`config.monitor`), keeps the best epoch's parameters
  (with `keep_best`), and stops after `config.patience` epochs without improvement.

  Args:
    keep_best: keep a copy of the best epoch's parameters in `loop.position.best`.
    copy: how to copy a pytree of the state (the placement's `copy`, keeping its layout).
  """

  def __init__(self, keep_best: bool, copy: Callable[[Any], Any]):
    self.keep_best, self.copy = keep_best, copy

  def on_epoch_end(self, loop, record: dict) -> None:
    config, position = loop.config, loop.position
    if config.monitor not in record:
      return
    position.early_stopping, improved = position.early_stopping.update(
        record[config.monitor], record["epoch"], mode=config.monitor_mode,
        min_delta=config.min_delta)
    if improved and self.keep_best:
      position.best = self.copy(best_tree(loop.state))
    if position.early_stopping.should_stop(config.patience):
      early = position.early_stopping
      reason = (f"early stopping after epoch {record['epoch']}: {config.monitor} has not "
                f"improved for {config.patience} epochs (best {early.best:.4f} at epoch "
                f"{early.best_epoch})")
      if config.progress and loop.primary:
        tqdm.write(reason)
      loop.request_stop(reason)


def best_tree(state) -> dict:
  """The parts of a `TrainState` that early stopping keeps: params, model state, EMA."""
  tree = {"params": state.params, "model_state": state.model_state}
  if state.ema_params is not None:
    tree["ema_params"] = state.ema_params
  return tree


class ProgressBar(Callback):
  """A tqdm bar per epoch with running metrics (process 0, when `config.progress`)."""

  _SHOWN = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")

  def __init__(self):
    self.bar = None

  def on_step_end(self, loop) -> None:
    if self.bar is None:
      config = loop.config
      self.bar = tqdm(total=loop.steps_per_epoch, initial=loop.position.step_in_epoch - 1,
                      desc=f"epoch {loop.position.epoch + 1}/{config.epochs}",
                      disable=not (config.progress and loop.primary), leave=True,
                      dynamic_ncols=True)
    self.bar.update(1)

  def on_metrics(self, loop, step: int, metrics: dict) -> None:
    if self.bar is not None:
      self.bar.set_postfix({k: f"{v:.4f}" for k, v in loop.running_means().items()},
                           refresh=False)

  def on_epoch_end(self, loop, record: dict) -> None:
    if self.bar is not None:
      self.bar.set_postfix({k.replace("train_", ""): f"{record[k]:.4f}"
                            for k in self._SHOWN if k in record})
      self.bar.close()
      self.bar = None

  def on_train_end(self, loop) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


class MetricLog(Callback):
  """`metrics.jsonl` in the workdir, one line per epoch (process 0); a resumed run's log
  is rewritten from its history first."""

  def __init__(self, path: Path):
    self.path = Path(path)

  def on_train_begin(self, loop) -> None:
    if loop.primary:
      write_metric_log(loop.position.history, self.path)

  def on_epoch_end(self, loop, record: dict) -> None:
    if loop.primary:
      append_metric_log(record, self.path)


class PlotCurves(Callback):
  """`curves.png` in the workdir, redrawn after every epoch (process 0)."""

  def __init__(self, path: Path):
    self.path = Path(path)

  def on_epoch_end(self, loop, record: dict) -> None:
    if loop.primary:
      plot_curves(loop.position.history, self.path)


class Checkpoint(Callback):
  """Saves at every epoch's end, and every `every` steps inside an epoch (None: never)."""

  def __init__(self, every: int | None = None):
    self.every = every

  def on_step_end(self, loop) -> None:
    if self.every and loop.step % self.every == 0 and not loop.last_step_of_epoch:
      loop.save()

  def on_epoch_end(self, loop, record: dict) -> None:
    loop.save()


class StopOnSignal(Callback):
  """On SIGINT or SIGTERM (`request`, set by `dlopt.train.interrupt.stop_on_signals`):
  saves at the next step and raises `Interrupted`.

  One process stops at the next step. Several stop only together, at the steps where every
  process checks (multiples of `log_every`, and epoch ends): a process that stopped alone
  would leave the others waiting on it in the next collective.
  """

  def __init__(self, request: StopRequest):
    self.request = request
    self._agreed_signum = 0  # the signal some process got, once the processes agreed

  def on_step_end(self, loop) -> None:
    if loop.last_step_of_epoch:  # on_epoch_end decides, after the epoch's save
      return
    if self._agreed(at_sync_point=loop.step % loop.config.log_every == 0):
      loop.save()
      raise Interrupted(self._signum(), loop.step)

  def on_epoch_end(self, loop, record: dict) -> None:
    if loop.position.epoch < loop.config.epochs and self._agreed(at_sync_point=True):
      loop.save()
      raise Interrupted(self._signum(), loop.step)

  def _agreed(self, at_sync_point: bool) -> bool:
    if jax.process_count() == 1:
      return self.request.requested
    if not at_sync_point:
      return False
    signums = multihost_utils.process_allgather(np.int32(self.request.signum or 0))
    self._agreed_signum = int(np.max(signums))
    return self._agreed_signum > 0

  def _signum(self) -> int:
    return self.request.signum or self._agreed_signum
