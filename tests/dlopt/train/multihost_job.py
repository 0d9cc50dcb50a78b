"""One process of the multi-process tests (run by test_multihost.py, not collected by pytest).

    python tests/dlopt/train/multihost_job.py train --workdir W --out params.npz
        [--parallel fsdp] [--epochs 1] [--resume] [--die-at STEP] [--local-data [--as-one N]]

Trains a small MLP on a fixed slice of the digits with `fit`; every process runs the same
command, joined through the DLOPT_* variables (`python -m dlopt.launch` sets them).
Process 0 writes the final parameters (gathered from all processes) and the history to
`--out`. `--die-at S` makes the last process exit abruptly (code 3) before step S.
`--local-data`: each process trains on its own `process_shard` of the rows only, through
`ProcessLocal`; with `--as-one N`, one process trains on the global batches that N such
processes would make together (their batches side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from dlopt.data import load_digits
from dlopt.models import MLP
from dlopt.optim import OptimizerConfig
from dlopt.train import FitConfig, ProcessLocal, fit, initialize_distributed, process_shard

EXAMPLES = 300
MODEL = MLP(widths=(64, 32), num_outputs=10)
OPTIMIZER = OptimizerConfig("adam", 3e-3)


def config(parallel: str, epochs: int) -> FitConfig:
  return FitConfig(epochs=epochs, batch_size=32, eval_batch_size=50, seed=1, progress=False,
                   plot=False, parallel=parallel, checkpoint_every=4)


def data():
  x, y = load_digits()
  return x[:EXAMPLES], y[:EXAMPLES]


class _DieAt:
  """The training batches, where the last process dies before yielding batch `step`."""

  def __init__(self, x, y, batch_size: int, step: int):
    self.x, self.y, self.batch_size, self.step = x, y, batch_size, step

  def __len__(self):
    return len(self.x) // self.batch_size

  def __iter__(self):
    for i in range(len(self)):
      if i == self.step and jax.process_index() == jax.process_count() - 1:
        print(f"process {jax.process_index()} dies before step {i}", flush=True)
        os._exit(3)
      rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
      yield self.x[rows], self.y[rows]


class _Shards:
  """Fixed-order batches of `size` rows from each of `shards` (row slices), side by side."""

  def __init__(self, x, y, size: int, shards: list[slice]):
    self.parts = [(x[s], y[s]) for s in shards]
    self.size = size

  def __len__(self):
    return min(len(px) for px, _ in self.parts) // self.size

  def __iter__(self):
    for i in range(len(self)):
      rows = slice(i * self.size, (i + 1) * self.size)
      yield (np.concatenate([px[rows] for px, _ in self.parts]),
             np.concatenate([py[rows] for _, py in self.parts]))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("command", choices=["train"])
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--out", default=None)
  parser.add_argument("--parallel", default="auto")
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--resume", action="store_true")
  parser.add_argument("--die-at", type=int, default=None)
  parser.add_argument("--local-data", action="store_true")
  parser.add_argument("--as-one", type=int, default=None)
  args = parser.parse_args(argv)
  x, y = data()
  fit_config = config(args.parallel, args.epochs)
  train = (x, y)
  extra = {}
  if args.local_data:
    initialize_distributed()  # before jax.process_count(), the first JAX call here
    n, local = 256, fit_config.batch_size // (args.as_one or jax.process_count())
    if args.as_one:   # one process, the global batches of `as_one` processes
      train = _Shards(x, y, local, [slice(p * n // args.as_one, (p + 1) * n // args.as_one)
                                    for p in range(args.as_one)])
    else:             # this process's rows only
      train = ProcessLocal(_Shards(x, y, local, [process_shard(n)]))
    extra = {"val_data": (x[n:], y[n:])}
  if args.die_at is not None:
    train = _DieAt(x[:256], y[:256], fit_config.batch_size, args.die_at)
    extra = {"val_data": (x[256:], y[256:])}
  result = fit(MODEL, train, optimizer=OPTIMIZER, config=fit_config, workdir=args.workdir,
               resume=args.resume, **extra)
  params = multihost_utils.process_allgather(result.state.params, tiled=True)
  if jax.process_index() == 0 and args.out:
    flat = {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(args.out, **flat)
    with open(args.out + ".json", "w") as f:
      json.dump({"history": result.history, "test": result.test_metrics,
                 "processes": jax.process_count(), "devices": jax.device_count()}, f)
  print(f"process {jax.process_index()} of {jax.process_count()} done: step "
        f"{int(result.state.step)}, {jax.device_count()} devices", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
