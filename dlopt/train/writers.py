"""Metric writers: where a run's scalars go, per step and per epoch.

A writer has `write_scalars(step, scalars)`, `write_hparams(hparams)`, `flush()` and
`close()`. `JsonlWriter` (one JSON line per call, the default: `steps.jsonl` in the
workdir) and `TensorBoardWriter` (event files through tensorboardX, the `tensorboard`
extra) are the two here; write your own to the same four methods. `WriteMetrics` is the
callback that feeds writers from `fit`: every step's `train/loss`, `train/accuracy` and
`train/grad_norm` (as they reach the host, every `log_every` steps), every epoch's record
as `epoch/<key>` at the epoch's last step, and the run's configuration as hparams.

>>> import json, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "steps.jsonl"
>>> writer = JsonlWriter(path)
>>> writer.write_scalars(1, {"train/loss": 2.5})
>>> writer.close()
>>> json.loads(path.read_text())
{'step': 1, 'train/loss': 2.5}

`fit(..., config=FitConfig(tensorboard=True), workdir="runs/a")` writes TensorBoard
events into `runs/a/tensorboard` (`tensorboard --logdir runs`); any writer can be added
with `fit(..., callbacks=[WriteMetrics([MyWriter()])])`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from dlopt.train.callbacks import Callback

__all__ = ["JsonlWriter", "MetricWriter", "TensorBoardWriter", "WriteMetrics",
           "flatten_hparams"]


class MetricWriter(Protocol):
  """What `WriteMetrics` needs of a writer."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

  def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

  def flush(self) -> None: ...

  def close(self) -> None: ...


class JsonlWriter:
  """Scalars as JSON lines `{"step": s, name: value, ...}`; hparams as `{"hparams": {...}}`.

  Lines are written through at once (line-buffered), so a killed run loses none.

  Args:
    path: the file.
    start_step: the step the run starts from: 0 starts the file afresh; a resumed run
      keeps the lines up to its checkpoint's step and rewrites what came after.
  """

  def __init__(self, path: str | Path, start_step: int = 0):
    self.path = Path(path)
    kept = []
    if start_step and self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if json.loads(line).get("step", 0) <= start_step]
    self.path.write_text("".join(line + "\n" for line in kept))
    self._file = open(self.path, "a", buffering=1)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in
                                                     scalars.items()}}) + "\n")

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._file.write(json.dumps({"hparams": dict(hparams)}, default=repr) + "\n")

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """TensorBoard event files in `logdir`, through tensorboardX (`pip install
  'dlopt[tensorboard]'`).

  Args:
    logdir: the run's event directory.
    start_step: the step the run starts from; a resumed run hides the events written
      after it (they are written again; tensorboardX's `purge_step`).

  Raises:
    ImportError: without tensorboardX, naming the extra.
  """

  def __init__(self, logdir: str | Path, start_step: int = 0):
    try:
      from tensorboardX import SummaryWriter
    except ImportError as error:
      raise ImportError("TensorBoardWriter needs tensorboardX: pip install "
                        "'dlopt[tensorboard]' (or pip install tensorboardX)") from error
    self._writer = SummaryWriter(str(logdir), purge_step=start_step + 1 if start_step else None)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The hparams plugin's record in this run (no sub-run, unlike `add_hparams`)."""
    from tensorboardX.summary import hparams as hparams_summary
    values = {k: v if isinstance(v, (bool, int, float, str)) else repr(v)
              for k, v in hparams.items()}
    for summary in hparams_summary(values, {}):
      self._writer.file_writer.add_summary(summary)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def flatten_hparams(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """`{"fit": {"epochs": 3}}` as `{"fit/epochs": 3}` (nested dicts joined by "/")."""
  flat = {}
  for key, value in record.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten_hparams(value, f"{name}/"))
    else:
      flat[name] = value
  return flat


class WriteMetrics(Callback):
  """Feeds `writers` from the loop (process 0 only): steps, epochs, hparams.

  Args:
    writers: `MetricWriter`s, or a callable `start_step -> list of writers`, so that they
      are opened when the run starts and know the step a resumed run starts from.
    hparams: the run's configuration (e.g. `dlopt.train.workdir.config_record(...)`),
      written once at the start of a new run; None writes none.
  """

  def __init__(self, writers, hparams: Mapping[str, Any] | None = None):
    self._make = writers if callable(writers) else (lambda start_step: list(writers))
    self.hparams = hparams
    self.writers: Sequence[MetricWriter] = ()

  def on_train_begin(self, loop) -> None:
    if not loop.primary:
      return
    self.writers = self._make(loop.step)
    if self.hparams is not None and loop.step == 0:
      for writer in self.writers:
        writer.write_hparams(flatten_hparams(self.hparams))

  def on_metrics(self, loop, step: int, metrics: dict) -> None:
    for writer in self.writers:
      writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})

  def on_epoch_end(self, loop, record: dict) -> None:
    scalars = {f"epoch/{k}": v for k, v in record.items()
               if k not in ("step",) and isinstance(v, (int, float)) and math.isfinite(v)}
    for writer in self.writers:
      writer.write_scalars(record["step"], scalars)
      writer.flush()

  def on_train_end(self, loop) -> None:
    for writer in self.writers:
      writer.close()
    self.writers = ()
