"""One peer, one task, in a process of its own (started by the peers' commands).

    python -m bench.peers._worker TASK PEER DATA_DIR CONFIG_JSON RESULT_JSON

TASK is "throughput" or "time_to_accuracy"; DATA_DIR holds the .npy arrays
(`bench.peers._data.save`); CONFIG_JSON the task's keyword arguments. The result (the
peer's own record, its description, recipe, devices and import seconds, or the error)
goes to RESULT_JSON; the exit code is 0 on success.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from bench.peers import PEERS
from bench.peers._data import read

TASKS = ("throughput", "time_to_accuracy")


def run(task: str, peer: str, data_dir: Path, config: dict) -> dict:
  """Imports the peer (timed), reads the data, runs `task`; returns the peer's record."""
  if task not in TASKS:
    raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
  start = time.perf_counter()
  module = importlib.import_module(PEERS[peer].module)
  import_seconds = time.perf_counter() - start
  arrays = read(data_dir)
  if task == "throughput":
    record = module.throughput(arrays["x_train"], arrays["y_train"], **config)
  else:
    record = module.time_to_accuracy(arrays["x_train"], arrays["y_train"], arrays["x_test"],
                                     arrays["y_test"], **config)
  return {**record, "import_seconds": import_seconds, "description": module.DESCRIPTION,
          "recipe": module.RECIPE, "environment": module.environment()}


def main(argv: list[str]) -> int:
  """Runs one peer's task and writes its record (or the error) as JSON."""
  task, peer, data_dir, config, result = argv
  try:
    record = run(task, peer, Path(data_dir), json.loads(config))
    code = 0
  except Exception:  # noqa: BLE001 - the parent reports it with the others' results
    record, code = {"error": traceback.format_exc()[-3000:]}, 1
  Path(result).write_text(json.dumps(record, indent=2) + "\n")
  return code


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
