"""Wall-clock seconds until each peer reaches 99.0% on the full MNIST test set.

    python -m bench time-to-accuracy                    # keras, torch, flax, dlopt; full MNIST
    python -m bench time-to-accuracy --max-epochs 20 --target 0.992
    python -m bench time-to-accuracy --tiny             # 512 bundled digits, 2 epochs

Each peer (`bench.peers`: one network, Keras' MNIST convnet) trains in a process of its
own, one after the other, on the 60,000 training images already in memory, and tests on
all 10,000 test images after every epoch. The clock starts before the model is built, so
it counts building, compilation, training and every evaluation, and stops at the end of
the first evaluation at or above `--target`; training stops there too, except for dlopt,
whose `fit` runs its recipe's schedule to the end (the epochs after the target are not
counted). A peer that never reaches the target within `--max-epochs` is recorded as not
reached, with its best accuracy and its total time. Every epoch is recorded as
(epoch, wall seconds, test accuracy).

Recipes: Keras, PyTorch and Flax train as their tutorials do, Adam at 1e-3, batch 128,
constant rate; dlopt trains with its own recipe (`bench.peers.dlopt_peer.Recipe`). Each
peer's recipe is written into the JSON. Writes bench/results/time_to_accuracy_<backend>.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench._runner import spread, write_result
from bench.peers import PEERS, run_in_subprocess
from bench.peers import _data
from bench.peers_throughput import NETWORK, rotations

TARGET = 0.99
MAX_EPOCHS, TINY_MAX_EPOCHS = 12, 2
TINY_TRAIN, TINY_TEST = 512, 256  # examples of the bundled digits in --tiny


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench time-to-accuracy` (besides --runs, --tiny, --out)."""
  parser.add_argument("--max-epochs", type=int, default=None,
                      help=f"epochs at most (default {MAX_EPOCHS}, tiny {TINY_MAX_EPOCHS})")
  parser.add_argument("--target", type=float, default=TARGET,
                      help=f"test accuracy to reach (default {TARGET})")
  parser.add_argument("--data", choices=_data.DATASETS, default=None,
                      help="mnist (60,000 / 10,000, fetched once; the default) or "
                           "mnist_subset (4,000 / 1,000 of the bundled digits)")
  parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS),
                      help="which peers (default all)")


def summarize_run(per_epoch: list[dict], target: float) -> dict:
  """What one run reached: the first epoch at or above `target`, or the best it got.

  Args:
    per_epoch: `{"epoch", "wall_s", "test_accuracy"}` per epoch, in order.
    target: the test accuracy to reach.

  Returns:
    `reached`, `seconds_to_target` and `epochs_to_target` (None when not reached),
    `best_accuracy` and `total_seconds` (the wall time at the last epoch).
  """
  if not per_epoch:
    raise ValueError("per_epoch must hold at least one epoch; got none")
  hit = next((e for e in per_epoch if e["test_accuracy"] >= target), None)
  return {"reached": hit is not None,
          "seconds_to_target": hit["wall_s"] if hit else None,
          "epochs_to_target": hit["epoch"] if hit else None,
          "best_accuracy": max(e["test_accuracy"] for e in per_epoch),
          "total_seconds": per_epoch[-1]["wall_s"]}


def summarize(records: list[dict], target: float) -> dict:
  """One peer's entry from its runs' records."""
  done = [r for r in records if r.get("per_epoch")]
  if not done:
    return next(iter(records), {"error": "no runs"})
  runs = [{**summarize_run(r["per_epoch"], target), "per_epoch": r["per_epoch"]}
          for r in done]
  reached = [run["seconds_to_target"] for run in runs if run["reached"]]
  return {
      "description": done[0]["description"], "recipe": done[0]["recipe"],
      "environment": done[0]["environment"],
      "reached": f"{len(reached)}/{len(runs)} runs",
      "seconds_to_target": spread(reached) if reached else None,
      "epochs_to_target": [run["epochs_to_target"] for run in runs],
      "best_accuracy": spread(run["best_accuracy"] for run in runs),
      "total_seconds": spread(run["total_seconds"] for run in runs),
      "import_s": spread(r["import_seconds"] for r in done),
      "stops_at_target": done[0].get("stops_at_target", True),
      "runs": runs,
      "failed_runs": [r.get("error") for r in records if not r.get("per_epoch")],
  }


def run(args: argparse.Namespace) -> int:
  """Runs every peer `args.runs` times, one after the other; writes the JSON."""
  import jax
  max_epochs = args.max_epochs or (TINY_MAX_EPOCHS if args.tiny else MAX_EPOCHS)
  data = args.data or ("mnist_subset" if args.tiny else "mnist")
  arrays = _data.load_or_explain(data)
  if arrays is None:
    return 2
  if args.tiny:
    arrays = {name: array[:TINY_TRAIN if "train" in name else TINY_TEST]
              for name, array in arrays.items()}
  config = {"max_epochs": max_epochs, "target": args.target}
  records = {name: [] for name in args.peers}
  with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
    _data.save(Path(tmp), arrays)
    for order in rotations(args.peers, args.runs):
      for name in order:
        record = run_in_subprocess("time_to_accuracy", name, Path(tmp), config)
        records[name].append(record)
        print(f"{name:<6} {_brief(record, args.target)}", flush=True)
  peers = {name: summarize(runs, args.target) for name, runs in records.items()}
  result = {"benchmark": "time_to_accuracy", "network": NETWORK, "target": args.target,
            "max_epochs": max_epochs,
            "data": {"name": data, "train": len(arrays["x_train"]),
                     "test": len(arrays["x_test"])},
            "clock": "from before the model is built (data in memory) to the end of the "
                     "first test evaluation at or above the target; compilation and every "
                     "evaluation included", "peers": peers}
  path = write_result(args, f"time_to_accuracy_{jax.default_backend()}", result)
  print(f"\nwrote {path}\n\n{table(peers, args.target)}")
  return 0


def _brief(record: dict, target: float) -> str:
  if not record.get("per_epoch"):
    return (record.get("skipped") or record.get("error", "?")).strip().splitlines()[-1]
  summary = summarize_run(record["per_epoch"], target)
  accuracies = " ".join(f"{e['test_accuracy']:.4f}" for e in record["per_epoch"])
  if summary["reached"]:
    return (f"{target:.2%} after {summary['epochs_to_target']} epochs, "
            f"{summary['seconds_to_target']:.1f} s   ({accuracies})")
  return (f"not reached: best {summary['best_accuracy']:.4f} in "
          f"{summary['total_seconds']:.1f} s   ({accuracies})")


def table(peers: dict, target: float) -> str:
  """A plain-text table: seconds and epochs to the target, best accuracy, per peer."""
  lines = [f"{'peer':<6} {f'seconds to {target:.1%}':>18} {'epochs':>6} {'best acc':>8} "
           f"{'total s':>8}"]
  for name, entry in peers.items():
    if "best_accuracy" not in entry:
      why = entry.get("skipped") or entry.get("error", "?")
      lines.append(f"{name:<6} {why.strip().splitlines()[-1]}")
      continue
    seconds = entry["seconds_to_target"]
    shown = f"{seconds['median']:.1f}" if seconds else "not reached"
    epochs = [e for e in entry["epochs_to_target"] if e is not None]
    lines.append(f"{name:<6} {shown:>18} "
                 f"{epochs[0] if epochs else '-':>6} {entry['best_accuracy']['max']:8.4f} "
                 f"{entry['total_seconds']['median']:8.1f}")
  return "\n".join(lines)
