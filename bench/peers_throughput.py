"""Training throughput of Keras, PyTorch, plain Flax and dlopt on one network, in one run.

    python -m bench peers-throughput                    # 3 rounds x 4 peers, full MNIST
    python -m bench peers-throughput --rounds 5 --steps 500
    python -m bench peers-throughput --tiny             # 3 steps, bundled digits, 1 round

Every peer trains the network of `bench.peers` (Keras' MNIST convnet, Adam, batch 128) on
the same `--steps * 128` MNIST images, for two epochs of `--steps` steps each, in a
process of its own: forward, backward and the Adam update every step, with whatever host
work the framework's ordinary loop does (Keras `fit`, a PyTorch `DataLoader` loop, a
jitted Flax step, dlopt's `fit`). The second epoch is the steady measurement:
images/s = steps * 128 / its seconds. Start-up is reported apart: the whole run's time
(model built, traced, compiled, both epochs) less two steady epochs, i.e. what the first
epoch cost beyond a steady one plus the set-up before it.

Rounds interleave the peers: each round runs every peer once, the order rotated by one
each round, so that no peer always runs first or after the same neighbour. Reported per
peer: min/median/max images/s and start-up seconds over the rounds, and the ratio of its
median to torch's and to dlopt's. Writes bench/results/peers_throughput_<backend>.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench._runner import spread, write_result
from bench.peers import PEERS, run_in_subprocess
from bench.peers import _data

BATCH_SIZE = 128
STEPS, TINY_STEPS = 300, 3
NETWORK = ("Conv2D(32, 3x3, relu, VALID) - MaxPool 2x2 - Conv2D(64, 3x3, relu, VALID) - "
           "MaxPool 2x2 - Flatten - Dense(64, relu) - Dense(10); Adam; sparse categorical "
           "cross-entropy; 28x28x1 float32 in [0, 1]")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench peers-throughput` (besides --runs/--rounds, --tiny, --out)."""
  parser.add_argument("--steps", type=int, default=None,
                      help=f"steps per epoch; each peer runs two epochs, the second timed "
                           f"(default {STEPS}, tiny {TINY_STEPS})")
  parser.add_argument("--data", choices=_data.DATASETS, default=None,
                      help="mnist (fetched once, the default) or mnist_subset (bundled, tiny)")
  parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS),
                      help="which peers (default all)")


def rotations(names: list[str], rounds: int) -> list[list[str]]:
  """The order of each round: `names` rotated left by the round's index."""
  return [names[r % len(names):] + names[:r % len(names)] for r in range(rounds)]


def summarize(records: list[dict], steps: int, batch_size: int) -> dict:
  """One peer's entry from its rounds' records (each with two `epoch_seconds`)."""
  done = [r for r in records if "epoch_seconds" in r]
  failed = [r for r in records if "epoch_seconds" not in r]
  if not done:
    return failed[0] if failed else {"error": "no runs"}
  steady = [r["epoch_seconds"][1] for r in done]
  return {
      "description": done[0]["description"], "environment": done[0]["environment"],
      "images_per_s": spread(steps * batch_size / s for s in steady),
      "startup_s": spread(r["total_seconds"] - 2 * r["epoch_seconds"][1] for r in done),
      "steady_epoch_s": spread(steady),
      "first_epoch_s": spread(r["epoch_seconds"][0] for r in done),
      "import_s": spread(r["import_seconds"] for r in done),
      "failed_rounds": [r.get("error") for r in failed],
  }


def add_ratios(peers: dict) -> None:
  """Adds `vs_torch` and `vs_dlopt`: a peer's median images/s over theirs."""
  for reference in ("torch", "dlopt"):
    base = peers.get(reference, {}).get("images_per_s")
    for entry in peers.values():
      if base and "images_per_s" in entry:
        entry[f"vs_{reference}"] = entry["images_per_s"]["median"] / base["median"]


def run(args: argparse.Namespace) -> int:
  """Runs the rounds and writes peers_throughput_<backend>.json."""
  import jax
  steps = args.steps or (TINY_STEPS if args.tiny else STEPS)
  data = args.data or ("mnist_subset" if args.tiny else "mnist")
  arrays = _data.load_or_explain(data)
  if arrays is None:
    return 2
  x, y = _data.first_examples(arrays["x_train"], arrays["y_train"], steps * BATCH_SIZE)
  orders = rotations(args.peers, args.runs)
  records = {name: [] for name in args.peers}
  with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
    _data.save(Path(tmp), {"x_train": x, "y_train": y})
    for index, order in enumerate(orders):
      for name in order:
        record = run_in_subprocess("throughput", name, Path(tmp),
                                   {"steps": steps, "batch_size": BATCH_SIZE})
        records[name].append(record)
        print(f"round {index + 1}/{len(orders)} {name:<6} {_brief(record, steps)}", flush=True)
  peers = {name: summarize(rounds, steps, BATCH_SIZE) for name, rounds in records.items()}
  add_ratios(peers)
  result = {"benchmark": "peers_throughput", "network": NETWORK, "batch_size": BATCH_SIZE,
            "steps": steps, "data": {"name": data, "images": len(x)},
            "method": "two epochs of `steps` steps per peer and round, each peer in its own "
                      "process; the second epoch timed; startup_s = whole run - 2 x steady "
                      "epoch", "orders": orders, "peers": peers,
            "raw": records}
  path = write_result(args, f"peers_throughput_{jax.default_backend()}", result)
  print(f"\nwrote {path}\n\n{table(peers)}")
  return 0


def _brief(record: dict, steps: int) -> str:
  if "epoch_seconds" not in record:
    return (record.get("skipped") or record.get("error", "?")).strip().splitlines()[-1]
  first, steady = record["epoch_seconds"]
  return (f"{steps * BATCH_SIZE / steady:8.1f} images/s   first epoch {first:.2f} s, "
          f"steady {steady:.2f} s")


def table(peers: dict) -> str:
  """A plain-text table of the peers' images/s, start-up and ratios."""
  lines = [f"{'peer':<6} {'images/s median':>15} {'min':>8} {'max':>8} {'startup s':>9} "
           f"{'vs torch':>8} {'vs dlopt':>8}"]
  for name, entry in peers.items():
    if "images_per_s" not in entry:
      why = entry.get("skipped") or entry.get("error", "?")
      lines.append(f"{name:<6} {why.strip().splitlines()[-1]}")
      continue
    rate = entry["images_per_s"]
    ratios = [f"{entry[key]:8.2f}" if key in entry else f"{'-':>8}"
              for key in ("vs_torch", "vs_dlopt")]
    lines.append(f"{name:<6} {rate['median']:15.1f} {rate['min']:8.1f} {rate['max']:8.1f} "
                 f"{entry['startup_s']['median']:9.2f} {' '.join(ratios)}")
  return "\n".join(lines)
