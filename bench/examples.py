"""Runs example trainers with their default settings and records what each reached.

    python -m bench examples run lstm_timeseries --dataset GunPoint   # run, then record
    python -m bench examples record resnet_fashion runs/resnet_fashion-...  # a finished run
    python -m bench examples --tiny                 # mlp_digits --tiny, into a temp directory

Results go to bench/results/examples_cpu.json, one entry per example (and data set), each
with its own date, machine, versions, command, run count, wall time (min/median/max over
`--runs`) and the run's `final_metrics.json` summary. Flags of this command (`--runs`,
`--out`, `--tiny`) come before `run`; everything after the example's name goes to it. `record` takes a run directory an example wrote itself (a long run started by
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

from bench._env import environment
from bench._runner import spread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RESULT_NAME = "examples_cpu.json"
TINY_EXAMPLE = "mlp_digits"  # what `--tiny` runs when no example is named


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


def save(path: Path, name: str, record: dict) -> Path:
  """Merges `record` (with the environment) into the JSON at `path` under `name`."""
  results = json.loads(path.read_text()) if path.exists() else {"examples": {}}
  results["examples"][name] = {**environment(), **record}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
  return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The actions of `python -m bench examples` (after --runs, --tiny, --out)."""
  sub = parser.add_subparsers(dest="action")
  run_parser = sub.add_parser("run", help="run an example with its defaults (plus FLAGS)")
  run_parser.add_argument("example", help="a file name in examples/, without .py")
  run_parser.add_argument("flags", nargs=argparse.REMAINDER, help="flags for the example")
  record = sub.add_parser("record", help="record a run directory an example wrote")
  record.add_argument("example")
  record.add_argument("workdir", type=Path)
  record.add_argument("--dataset", help="the data set the run used, when the example has one")
  parser.set_defaults(parser=parser)


def run(args: argparse.Namespace) -> int:
  """Runs (or records) one example and merges its entry into examples_cpu.json."""
  parser = args.parser
  if args.action is None:
    if not args.tiny:
      parser.error("name an action: run EXAMPLE [FLAGS] or record EXAMPLE WORKDIR")
    args.action, args.example, args.flags = "run", TINY_EXAMPLE, []
  if not (EXAMPLES / f"{args.example}.py").exists():
    parser.error(f"example must name a file in {EXAMPLES}; got {args.example!r}")
  common = {"command": args.command_line, "runs": args.runs, "tiny": args.tiny}
  if args.action == "run":
    flags = [*args.flags, *(["--tiny"] if args.tiny and "--tiny" not in args.flags else [])]
    entries = [run_example(args.example, flags) for _ in range(args.runs)]
    walls = [entry["wall_seconds"] for entry in entries]
    name = entry_name(args.example, flags)
    entry = {**entries[-1], **common, "wall_seconds": spread(walls)["median"],
             "wall_seconds_spread": spread(walls)}
  else:
    if not (args.workdir / "final_metrics.json").exists():
      parser.error(f"workdir must be a finished run (with final_metrics.json); got "
                   f"{str(args.workdir)!r}")
    name = args.example + (f":{args.dataset}" if args.dataset else "")
    finished = (args.workdir / "final_metrics.json").stat().st_mtime
    entry = {**read_run(args.workdir), **common, "runs": 1,
             "recorded_from": str(args.workdir),
             "run_finished": datetime.datetime.fromtimestamp(
                 finished, datetime.timezone.utc).isoformat(timespec="seconds")}
  path = save(args.out / RESULT_NAME, name, entry)
  print(f"{name}: {json.dumps(entry['summary'])[:300]}\nwrote {path}")
  return 0
