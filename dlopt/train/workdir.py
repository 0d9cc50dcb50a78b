"""The run directory of `fit`: `config.json`, `checkpoints/`, `final_metrics.json`.

`RunDirectory` refuses to overwrite a run, or to resume one under another configuration;
restores the newest checkpoint as a state and a `LoopState`; and writes the final record.
(`metrics.jsonl` and `curves.png` are written by the `MetricLog` and `PlotCurves`
callbacks.) Only process 0 writes files; every process saves and restores checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax

from dlopt.train.checkpoint import Checkpointer
from dlopt.train.loop import LoopState
from dlopt.train.state import TrainState

__all__ = ["RunDirectory", "config_record"]

# Fields that may change between a run and its resumption without changing its result
# (`parallel` only by the order of float reductions, and pmap's per-device dropout streams).
RESUME_MAY_DIFFER = ("progress", "plot", "tensorboard", "log_every", "parallel")


def config_record(**parts: Any) -> dict:
  """The run's configuration as JSON: each part (the model, the configs) by its dataclass
  fields; the model under its class name; anything else by its type's name."""
  record = {}
  for name, part in parts.items():
    if dataclasses.is_dataclass(part):
      fields = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)
                if f.name not in ("parent", "name")}
      record[name] = {"class": type(part).__name__, **fields} if name == "model" else fields
    else:
      record[name] = {"class": type(part).__name__}
  return json.loads(json.dumps(record, default=repr))


class RunDirectory:
  """One run's directory and its checkpoints.

  Args:
    path: the directory (created if missing).
    keep_last_n: checkpoints kept on disk.
  """

  def __init__(self, path: str | Path, keep_last_n: int):
    self.path = Path(path)
    self.path.mkdir(parents=True, exist_ok=True)
    self.checkpointer = Checkpointer(self.path / "checkpoints", keep_last_n)

  def check_config(self, record: dict, resume: bool) -> None:
    """Refuses to overwrite a run, or to resume one under a different configuration;
    writes `record` as `config.json`.

    Raises:
      ValueError: on a saved run without `resume`, or a config that differs from it.
    """
    path = self.path / "config.json"
    latest = self.checkpointer.latest_step()
    if latest is not None and not resume:
      raise ValueError(f"workdir {self.path} already holds a run (checkpoint at step "
                       f"{latest}); pass resume=True (--resume) to continue it, or choose "
                       "another workdir")
    if resume and latest is not None and path.exists():
      saved = json.loads(path.read_text())
      differ = [f"{group}.{key}: saved {saved[group].get(key)!r}, now {value!r}"
                for group, fields in record.items() for key, value in fields.items()
                if key not in RESUME_MAY_DIFFER and saved.get(group, {}).get(key) != value]
      if differ:
        raise ValueError("cannot resume a run under a different config (the result would "
                         "differ from the run's): " + "; ".join(differ))
    if jax.process_index() == 0:
      _write_text(path, json.dumps(record, indent=2) + "\n")

  def restore(self, state: TrainState, best_template: Any = None
              ) -> tuple[TrainState, LoopState]:
    """The newest checkpoint as `(state, position)`, or `(state, LoopState())` without one.

    The restored arrays take the template's shardings, so any device count resumes.
    """
    if self.checkpointer.latest_step() is None:
      return state, LoopState()
    state, meta, best = self.checkpointer.restore(state, best_template)
    return state, LoopState.from_meta(meta, best)

  def write_final(self, position: LoopState, test_metrics: dict | None, step: int) -> None:
    """`final_metrics.json`: steps, epochs, the best and last epochs, the test metrics."""
    if jax.process_index() != 0:
      return
    early = position.early_stopping
    final = {"step": step, "epochs_run": len(position.history),
             "best_epoch": early.best_epoch if early.best is not None else None,
             "last_epoch": position.history[-1] if position.history else None,
             "test": test_metrics}
    (self.path / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")

  def close(self) -> None:
    """Waits for pending saves and releases the checkpointer."""
    self.checkpointer.close()


def _write_text(path: Path, text: str) -> None:
  """Writes `path` whole or not at all (other processes may be reading it)."""
  partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  partial.write_text(text)
  os.replace(partial, path)
