"""Runs example trainers with their default settings and records what each reached.

    python bench/examples.py run lstm_timeseries --dataset GunPoint   # run, then record
    python bench/examples.py record resnet_fashion runs/resnet_fashion-...  # a finished run

Results go to bench/results/examples_cpu.json, one entry per example (and data set), each
with its own date, machine, versions, command, wall time and the run's `final_metrics.json`
summary. `record` takes a run directory an example wrote itself (a long run started by
hand); its entry says so and carries the run's own seconds instead of a wall time.
README's example table is written from this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _env import RESULTS, environment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RESULT = RESULTS / "examples_cpu.json"


def entry_name(example: str, flags: list[str]) -> str:
  """`example`, plus the value of `--dataset` when given: one entry per data set."""
  if "--dataset" in flags[:-1]:
    return f"{example}:{flags[flags.index('--dataset') + 1]}"
  return example


def run_example(example: str, flags: list[str]) -> dict:
  """Runs examples/<example>.py in a fresh run directory; returns its record."""
  with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(tmp) / "run"
    command = [sys.executable, str(EXAMPLES / f"{example}.py"), "--workdir", str(workdir),
               *flags]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    record = read_run(workdir)
  return {**record, "flags": flags, "wall_seconds": round(wall, 1)}


def read_run(workdir: Path) -> dict:
  """The summary and config of a finished run directory."""
  final = json.loads((workdir / "final_metrics.json").read_text())
  config_path = workdir / "config.json"
  config = json.loads(config_path.read_text()) if config_path.exists() else None
  record = {"summary": final["summary"], "config": config}
  if "seconds" in final:
    record["seconds"] = final["seconds"]
  return record


def save(name: str, record: dict) -> Path:
  """Merges `record` (with the environment) into RESULT under `name`."""
  results = json.loads(RESULT.read_text()) if RESULT.exists() else {"examples": {}}
  results["examples"][name] = {**environment(), **record}
  RESULT.parent.mkdir(parents=True, exist_ok=True)
  RESULT.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
  return RESULT


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="action", required=True)
  run = sub.add_parser("run", help="run an example with its defaults (plus FLAGS)")
  run.add_argument("example", help="a file name in examples/, without .py")
  run.add_argument("flags", nargs=argparse.REMAINDER, help="flags for the example")
  record = sub.add_parser("record", help="record a run directory an example wrote")
  record.add_argument("example")
  record.add_argument("workdir", type=Path)
  record.add_argument("--dataset", help="the data set the run used, when the example has one")
  args = parser.parse_args(argv)
  if not (EXAMPLES / f"{args.example}.py").exists():
    parser.error(f"example must name a file in {EXAMPLES}; got {args.example!r}")
  if args.action == "run":
    name, entry = entry_name(args.example, args.flags), run_example(args.example, args.flags)
  else:
    if not (args.workdir / "final_metrics.json").exists():
      parser.error(f"workdir must be a finished run (with final_metrics.json); got "
                   f"{str(args.workdir)!r}")
    name = args.example + (f":{args.dataset}" if args.dataset else "")
    finished = (args.workdir / "final_metrics.json").stat().st_mtime
    entry = {**read_run(args.workdir), "recorded_from": str(args.workdir),
             "run_finished": datetime.datetime.fromtimestamp(
                 finished, datetime.timezone.utc).isoformat(timespec="seconds")}
  path = save(name, entry)
  print(f"{name}: {json.dumps(entry['summary'])[:300]}\nwrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
