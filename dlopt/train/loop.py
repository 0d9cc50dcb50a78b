"""The step loop of `fit`: one flat loop over steps, with events by step, and its record.

`LoopState` is where a run stands: exactly what a checkpoint's metadata holds (and the best
parameters, saved beside the state). `Loop` runs the train step over a batch source from
that position and calls its callbacks (`dlopt.train.callbacks`):

    for step, batch in zip(range(start, total), batches):
      state, metrics = train_step(state, batch)
      ... on_metrics (every log_every steps), on_step_end
      ... at the end of an epoch: on_evaluate (fill the record), on_epoch_end

Logging, checkpoints, evaluation, plots, early stopping and the stop agreement are
callbacks; the loop itself only steps, brings metrics to the host (checking that they are
finite) and keeps the record.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from dlopt.train.callbacks import Callback, EarlyStopping
from dlopt.train.checkpoint import Checkpointer
from dlopt.train.config import FitConfig
from dlopt.train.inputs import BatchSource, iterator_state, restore_iterator
from dlopt.train.state import TrainState

__all__ = ["Loop", "LoopState", "NonFiniteLossError", "save_checkpoint"]


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss or gradient norm stops being finite."""


@dataclasses.dataclass
class LoopState:
  """Where a run stands, as a checkpoint records it.

  Attributes:
    epoch: the current epoch (epochs finished).
    step_in_epoch: steps taken in `epoch`.
    partial_sums: sums of the step metrics of `epoch` so far (and their `count`).
    history: one record per finished epoch.
    early_stopping: the early-stopping record.
    best: the best epoch's `{"params", "model_state", ["ema_params"]}`, or None; saved
      with the state, not in the metadata.
    source_state: the batch source's iterator state (e.g. a grain iterator's), or None.
  """

  epoch: int = 0
  step_in_epoch: int = 0
  partial_sums: dict = dataclasses.field(default_factory=dict)
  history: list = dataclasses.field(default_factory=list)
  early_stopping: EarlyStopping = EarlyStopping()
  best: Any = None
  source_state: Any = None

  def meta(self) -> dict:
    """The JSON metadata of a checkpoint at this position."""
    return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "partial_sums": self.partial_sums or None, "history": self.history,
            "early_stopping": self.early_stopping._asdict(), "source_state": self.source_state}

  @classmethod
  def from_meta(cls, meta: dict, best: Any = None) -> LoopState:
    """The position a checkpoint's `meta` (and `best`) records."""
    return cls(meta["epoch"], meta["step_in_epoch"], dict(meta["partial_sums"] or {}),
               list(meta["history"]), EarlyStopping(**meta["early_stopping"]), best,
               meta.get("source_state"))


def save_checkpoint(checkpointer: Checkpointer, state: TrainState, position: LoopState) -> None:
  """Saves `state` at `position` unless the parameters went non-finite (a bad save would
  hide the last good one).

  Raises:
    NonFiniteLossError: for non-finite parameters; the saved checkpoints are kept.
  """
  if not bool(_all_finite(state.params)):
    checkpointer.wait()
    raise NonFiniteLossError(
        f"parameters became non-finite at step {int(state.step)}; the last good checkpoint "
        f"(step {checkpointer.latest_step()}) is kept in {checkpointer.directory}. Lower "
        "the learning rate or clip gradients (clip_norm).")
  checkpointer.save(state, position.meta(), position.best)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


@dataclasses.dataclass(kw_only=True)
class Loop:
  """The steps of one run, from `position` to `config.epochs` epochs of `source`.

  Attributes (what callbacks read):
    config: the run's `FitConfig`.
    source: the training batches.
    rows: this process's rows of every global batch.
    train_step: `(state, local_batch) -> (state, metrics)`, donating the state.
    callbacks: called in order at every event.
    checkpointer: where `save()` writes, or None.
    workdir: the run directory, or None.
    learning_rate: `state -> float | None`, the learning rate of the last update.
    position: the `LoopState`, updated as the loop runs.
    state: the current `TrainState` (donated by the next step: do not keep it).
    step: steps taken in the whole run.
  """

  config: FitConfig
  source: BatchSource
  rows: slice | None
  train_step: Callable
  callbacks: Sequence[Callback] = ()
  checkpointer: Checkpointer | None = None
  workdir: Path | None = None
  learning_rate: Callable[[TrainState], float | None] = lambda state: None
  position: LoopState = dataclasses.field(default_factory=LoopState)
  state: TrainState | None = None
  step: int = 0
  _pending: list = dataclasses.field(default_factory=list)
  _stop_reason: str | None = None
  _saved_step: int | None = None
  _epoch_started: float = 0.0

  @property
  def primary(self) -> bool:
    """Whether this process writes logs, plots and the progress bar (process 0)."""
    return jax.process_index() == 0

  @property
  def steps_per_epoch(self) -> int:
    return len(self.source)

  @property
  def last_step_of_epoch(self) -> bool:
    """In `on_step_end`: whether this step ended its epoch (its end events follow)."""
    return self.position.step_in_epoch == self.steps_per_epoch

  def running_means(self) -> dict[str, float]:
    """The means of the epoch's step metrics that reached the host so far."""
    sums = self.position.partial_sums
    return {k: v / sums["count"] for k, v in sums.items() if k != "count"}

  def request_stop(self, reason: str) -> None:
    """Ends the loop after the current step's events (e.g. early stopping)."""
    self._stop_reason = reason

  def run(self, state: TrainState) -> TrainState:
    """Trains from `position` to the end (or a stop); returns the final state."""
    self.state = state
    total = self.config.epochs * self.steps_per_epoch
    start = self.position.epoch * self.steps_per_epoch + self.position.step_in_epoch
    self.step = start
    if start:  # resumed: the source's iterator continues where the checkpoint left it
      restore_iterator(self.source, self.position.source_state)
    self._epoch_started = time.perf_counter()
    self._call("on_train_begin")
    try:
      if self.position.early_stopping.should_stop(self.config.patience):
        return self.state  # resumed after an early stop: nothing to do
      for step, batch in zip(range(start + 1, total + 1), self._batches()):
        self.state, metrics = self.train_step(self.state, batch)
        self.step = step
        self._pending.append((self.step, metrics))
        self.position.step_in_epoch += 1
        if len(self._pending) >= self.config.log_every:
          # The newest step stays pending: not waiting for it keeps the device busy.
          self.flush(keep=1)
        self._call("on_step_end")
        if self.last_step_of_epoch:
          self._end_epoch()
        if self._stop_reason is not None:
          break
      return self.state
    finally:
      self._call("on_train_end")

  def flush(self, keep: int = 0) -> None:
    """Brings pending step metrics to the host, checks that they are finite, adds them to
    the epoch's sums and passes each step's to `on_metrics`; the newest `keep` stay.

    Raises:
      NonFiniteLossError: naming the step; the saved checkpoints are kept.
    """
    ready = self._pending[:len(self._pending) - keep]
    del self._pending[:len(ready)]
    if not ready:
      return
    sums = self.position.partial_sums
    for (step, _), values in zip(ready, jax.device_get([m for _, m in ready])):
      values = {name: float(value) for name, value in values.items()}
      self._check_finite(step, values)
      for name, value in values.items():
        if name != "grad_norm":
          sums[name] = sums.get(name, 0.0) + value
      sums["count"] = sums.get("count", 0) + 1
      self._call("on_metrics", step, values)

  def save(self) -> None:
    """Saves a checkpoint at the current step (once per step; nothing without one)."""
    if self.checkpointer is None or self._saved_step == self.step:
      return
    self.flush()
    self.position.source_state = iterator_state(self.source)
    save_checkpoint(self.checkpointer, self.state, self.position)
    self._saved_step = self.step

  def _batches(self):
    """The batches from `position` on, epoch after epoch, as one stream."""
    first = self.position.epoch
    return itertools.chain.from_iterable(
        self.source.epoch(epoch, self.position.step_in_epoch if epoch == first else 0,
                          self.rows)
        for epoch in range(first, self.config.epochs))

  def _end_epoch(self) -> None:
    self.flush()
    record = {"epoch": self.position.epoch + 1, "step": self.step}
    record.update({f"train_{k}": v for k, v in self.running_means().items()})
    learning_rate = self.learning_rate(self.state)
    if learning_rate is not None:
      record["learning_rate"] = learning_rate
    self._call("on_evaluate", record)
    record["epoch_seconds"] = time.perf_counter() - self._epoch_started
    self.position.history.append(record)
    self.position.epoch += 1
    self.position.step_in_epoch = 0
    self.position.partial_sums = {}
    self._call("on_epoch_end", record)
    self._epoch_started = time.perf_counter()

  def _check_finite(self, step: int, values: dict) -> None:
    for name in ("loss", "grad_norm"):
      if not math.isfinite(values[name]):
        where = ""
        if self.checkpointer is not None:
          self.checkpointer.wait()
          where = (f"; the last good checkpoint (step {self.checkpointer.latest_step()}) is "
                   f"kept in {self.checkpointer.directory}")
        raise NonFiniteLossError(f"training {name} became {values[name]} at step {step}"
                                 f"{where}. Lower the learning rate, clip gradients "
                                 "(clip_norm) or check the inputs for NaN.")

  def _call(self, hook: str, *args) -> None:
    for callback in self.callbacks:
      getattr(callback, hook)(self, *args)
