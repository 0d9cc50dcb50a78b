"""What every example trainer shares: run flags, `--tiny` overrides, a clean fit, a summary.

`run_fit` prints the model's layers first (`dlopt.models.summary` on one training example).

An example is a thin script: it declares its configs, loads its data and calls these.

>>> from dlopt.cli import ConfigParser
>>> parser = ConfigParser("demo")
>>> add_run_flags(parser, "demo", tiny_help="a smoke run")
>>> extras = parser.parse(["--tiny"]).extras
>>> extras.tiny, extras.resume, extras.workdir
(True, False, None)
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax

from dlopt.cli import ConfigParser
from dlopt.models import count_params
from dlopt.models import summary as model_summary
from dlopt.train import FitResult, Interrupted, fit

__all__ = ["add_run_flags", "unless_given", "run_directory", "run_fit", "write_summary",
           "fit_summary"]


def add_run_flags(parser: ConfigParser, name: str, *, tiny_help: str) -> None:
  """Adds `--workdir`, `--resume` and `--tiny` to an example's parser."""
  parser.add_argument("--workdir", type=Path, default=None,
                      help=f"run directory (default: a new runs/{name}-<time>)")
  parser.add_argument("--resume", action="store_true",
                      help="continue the run in --workdir from its newest checkpoint")
  parser.add_argument("--tiny", action="store_true", help=f"smoke run: {tiny_help}")


def unless_given(config, overrides: dict, group: str, given: frozenset):
  """`config` with the `--tiny` `overrides` applied to the fields not set on the command line."""
  return dataclasses.replace(config, **{k: v for k, v in overrides.items()
                                        if f"{group}.{k}" not in given})


def run_directory(parser: ConfigParser, name: str, extras) -> Path:
  """The run directory: `--workdir`, or a new `runs/<name>-<time>` (the time
  `DLOPT_RUN_STAMP` names, when `python -m dlopt.launch` starts several processes, so that
  all choose the same); checks `--resume`."""
  if extras.resume and extras.workdir is None:
    parser.error("--resume needs --workdir: the run directory to continue")
  stamp = os.environ.get("DLOPT_RUN_STAMP") or time.strftime("%Y%m%d-%H%M%S")
  return extras.workdir or Path("runs") / f"{name}-{stamp}"


def run_fit(parser: ConfigParser, model, data, *, workdir: Path, resume: bool = False,
            **fit_kwargs) -> tuple[FitResult, float]:
  """`dlopt.train.fit` as a script runs it: bad configs exit with one clear line (code 2);
  Ctrl-C or SIGTERM saves, says how to resume and exits with 128 + the signal's number
  (130, 143). Returns `(result, seconds)`. Process 0 first prints the model's summary on the
  first training example, once per model."""
  if jax.process_index() == 0 and repr(model) not in _SUMMARIZED:
    _SUMMARIZED.add(repr(model))
    try:
      # Two levels: blocks and their layers, not the insides of a cell or an attention.
      print(model_summary(model, *_sample_inputs(data), depth=2), flush=True)
    except Exception as error:  # noqa: BLE001 - a summary is never worth stopping a run
      print(f"(no model summary: {type(error).__name__}: {error})", flush=True)
  started = time.perf_counter()
  try:
    result = fit(model, data, workdir=workdir, resume=resume, **fit_kwargs)
  except KeyboardInterrupt as interrupt:
    signum = interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT
    print(f"\ninterrupted ({interrupt}); continue with: python {sys.argv[0]} --workdir "
          f"{workdir} --resume", file=sys.stderr)
    raise SystemExit(128 + signum) from None
  except ValueError as error:
    parser.error(str(error))
  return result, time.perf_counter() - started


_SUMMARIZED: set[str] = set()  # repr of each model whose summary run_fit printed


def _sample_inputs(data) -> tuple:
  """The model's positional inputs for one example of `fit`'s `data`: `(x[:1],)` of an
  `(x, y)` pair, one `[:1]` per array of a tuple `x`; else of a batch source's `sample()` or
  an iterable's first batch."""
  if not (isinstance(data, tuple) and len(data) == 2):
    data = data.sample() if hasattr(data, "sample") else next(iter(data))
  x = jax.tree.map(lambda leaf: leaf[:1], data[0])
  return x if isinstance(x, tuple) else (x,)


def fit_summary(result: FitResult, seconds: float) -> dict[str, Any]:
  """Test metrics, epochs, steps, parameter count and time of a finished run."""
  test = result.test_metrics or {}
  summary = {f"test_{k}": v for k, v in test.items() if k != "per_class_f1"}
  summary.update(epochs=len(result.history), steps=int(result.state.step),
                 parameters=count_params(result.state.params), seconds=round(seconds, 1))
  return summary


def write_summary(workdir: Path, summary: dict[str, Any]) -> None:
  """Adds `summary` to the run's `final_metrics.json` (written by fit) under "summary";
  with several processes, process 0 writes it."""
  if jax.process_index() != 0:
    return
  path = Path(workdir) / "final_metrics.json"
  final = json.loads(path.read_text()) if path.exists() else {}
  final["summary"] = summary
  path.write_text(json.dumps(final, indent=2) + "\n")
