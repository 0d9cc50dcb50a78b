"""The one entry of every benchmark: `python -m bench <command> [flags]`.

Each command is a module of this package with `add_arguments(parser)` and `run(args)`.
The runner gives every measuring command the same flags (`--runs`, `--tiny`, `--out`),
the exact command line, and `write_result`, which stores the record as JSON with the
machine, device, package versions, date, command and run count. `spread` turns repeated
timings into the min/median/max every timed quantity is reported with.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from bench._env import RESULTS, environment

__all__ = ["COMMANDS", "Command", "main", "spread", "write_result"]


@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand of `python -m bench`.

  Attributes:
    module: the module (in this package) with `add_arguments(parser)` and `run(args)`.
    help: one line for `python -m bench --help`.
    runs: the default run count, and the one under `--tiny`; None: the command has no
      run count or decides it itself.
    runs_aliases: older names of `--runs` that the command also accepts.
    runs_help: what one run is, for `--help`.
    common: whether the command takes `--runs`, `--tiny` and `--out`.
    packages: versions recorded beyond jax, jaxlib, flax, optax, orbax and numpy.
  """

  module: str
  help: str
  runs: tuple[int | None, int | None] = (None, None)
  runs_aliases: tuple[str, ...] = ()
  runs_help: str = "timed repetitions"
  common: bool = True
  packages: tuple[str, ...] = ()


COMMANDS = {
    "attention": Command("bench.attention", "attention paths: time, TFLOP/s, memory",
                         (None, 2), ("--reps",), "timed runs per point (default 5, quick 3)"),
    "conv": Command("bench.conv", "fused conv2d vs XLA's convolution + epilogue",
                    (None, 2), ("--reps",), "timed runs per point (default 7 CPU, 20 GPU)"),
    "fit-throughput": Command("bench.fit_throughput", "dlopt's fit vs a hand-written loop",
                              (3, 1), ("--rounds",), "alternating runs of each loop"),
    "default-trainer": Command("bench.default_trainer",
                               "the default trainer end to end: accuracy and wall time",
                               (1, 1), (), "runs of the trainer"),
    "examples": Command("bench.examples", "run or record an example trainer",
                        (1, 1), (), "runs of the example"),
    "gpu-suite": Command("bench.gpu_suite",
                         "within --budget seconds on a GPU: kernel smoke vs the references, "
                         "attention and conv speed, the kernel tests", (5, 2), (),
                         "timed runs per benchmark point"),
    "gpu-compile": Command("bench.gpu_compile",
                           "every Pallas GPU kernel compiled for sm_90a without a GPU: "
                           "registers, spills, shared memory, blocks per SM", (1, 1), (),
                           "compiles of the grid"),
    "cpu-speed": Command("bench.cpu_speed",
                         "the CNN's CPU train step: every speed attempt side by side",
                         (5, 1), ("--rounds",), "interleaved rounds of every variant"),
    "peers-throughput": Command("bench.peers_throughput",
                                "Keras, PyTorch, Flax and dlopt: images/s, same network",
                                (3, 1), ("--rounds",), "rounds; each runs every peer once",
                                packages=("torch", "keras")),
    "time-to-accuracy": Command("bench.time_to_accuracy",
                                "Keras, PyTorch, Flax and dlopt: seconds to 99% on MNIST",
                                (1, 1), (), "runs of every peer, one after the other",
                                packages=("torch", "keras")),
    "checkpoint-save": Command("bench.checkpoint_save",
                               "step time and memory around a checkpoint save: the state "
                               "copied on device first (before), not at all, and now",
                               (3, 1), (),
                               "rounds; each runs every variant once, in a fresh process"),
    "remat": Command("bench.remat", "remat on and off: compiled train-step memory and step "
                     "time of a DecoderLM and a ResidualCNN", (3, 1), (),
                     "interleaved rounds of every variant"),
    "tables": Command("bench.tables", "regenerate README's benchmark tables from the JSON",
                      common=False),
}


def spread(samples) -> dict:
  """`{"min", "median", "max", "samples"}` of repeated measurements (one or more)."""
  samples = [float(s) for s in samples]
  if not samples:
    raise ValueError("spread needs at least one sample; got none")
  return {"min": min(samples), "median": statistics.median(samples), "max": max(samples),
          "samples": samples}


def write_result(args: argparse.Namespace, name: str, record: dict) -> Path:
  """Writes `record` to `<args.out>/<name>.json` with what every result carries.

  Args:
    args: the parsed flags of a command (the runner set `out`, `runs`, `tiny`,
      `command_line` and `packages`).
    name: the file's stem, e.g. "conv_cpu".
    record: the command's own fields.

  Returns:
    The path written.
  """
  args.out.mkdir(parents=True, exist_ok=True)
  path = args.out / f"{name}.json"
  full = {**environment(args.packages), "command": args.command_line, "runs": args.runs,
          "tiny": args.tiny, **record}
  # Written whole, then renamed: a run killed mid-write leaves the previous file intact.
  partial = path.with_name(f".{path.name}.partial")
  partial.write_text(json.dumps(full, indent=2) + "\n")
  os.replace(partial, path)
  return path


def command_line(argv: list[str]) -> str:
  """The command as a user types it from the repository root."""
  return shlex.join(["python", "-m", "bench", *argv])


def _top_parser() -> argparse.ArgumentParser:
  width = max(map(len, COMMANDS))
  listing = "\n".join(f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items())
  parser = argparse.ArgumentParser(
      prog="python -m bench", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="dlopt's benchmarks, one command each; results go to bench/results/*.json.",
      epilog=f"commands:\n{listing}\n\n`python -m bench COMMAND --help` shows its flags. "
             "Every measuring command takes --runs, --tiny (a smoke run of seconds, written "
             "to a temporary directory unless --out is given) and --out DIR.")
  parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
  return parser


def _command_parser(name: str, command: Command, module) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  if command.common:
    default, tiny = command.runs
    parser.add_argument("--runs", *command.runs_aliases, type=_positive_int, default=None,
                        help=f"{command.runs_help} (default {default or 'per command'}"
                             f"{f', tiny {tiny}' if tiny else ''})")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke run of seconds over tiny sizes; it writes to a "
                             "temporary directory unless --out is given")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the JSON goes (default bench/results)")
  module.add_arguments(parser)
  return parser


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
  return value


def main(argv: list[str] | None = None) -> int:
  """Parses `argv` (`sys.argv[1:]` by default), runs the command; returns its exit code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  top = _top_parser()
  if not argv:
    top.print_help(sys.stderr)
    return 2
  if argv[0].startswith("-"):
    top.parse_args(argv[:1])  # --help, or the usage error
  name = top.parse_args(argv[:1]).command
  command = COMMANDS[name]
  module = importlib.import_module(command.module)
  args = _command_parser(name, command, module).parse_args(argv[1:])
  args.command_line = command_line(argv)
  args.packages = command.packages
  if command.common:
    if args.runs is None:
      args.runs = command.runs[1] if args.tiny else command.runs[0]
    if args.out is None:
      args.out = Path(tempfile.mkdtemp(prefix="bench-tiny-")) if args.tiny else RESULTS
  return module.run(args) or 0
