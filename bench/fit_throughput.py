"""Step throughput of `dlopt.train.fit` against a hand-written jitted loop, in one run.

Both train the same model with the same optimizer on the same batches (the MNIST-subset CNN,
batch 64, AdamW). The hand loop is the least a user could write: the jitted, donated
`train_step` (with the XLA options `fit` would choose) called over `BatchIterator.epoch(e)`,
blocking at the end of each epoch. `fit` runs with its defaults, without validation,
checkpoints or progress bar output to a terminal (`progress=False`), so the comparison
isolates the loop's own overhead. The first
epoch of each run (compilation) is dropped; the two alternate run by run over `--runs`
rounds (alias `--rounds`), and the ratio of medians is reported, with the min/median/max
steps/s of each over all their kept epochs.

    python -m bench fit-throughput            # writes bench/results/fit_throughput.json
    python -m bench fit-throughput --tiny     # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from dlopt.data import BatchIterator, load_mnist_subset, train_val_test_split
from dlopt.models import CNN
from dlopt.optim import OptimizerConfig, make_optimizer
from dlopt.train import (FitConfig, Objective, create_train_state, fit, make_train_step,
                         step_compiler_options)

from bench._runner import spread, write_result

MODEL = CNN(num_classes=10, features=(32, 64), dense_width=128)
OPTIMIZER = OptimizerConfig("adamw", 1e-3, weight_decay=1e-4)


def hand_written_epoch_seconds(x, y, batch_size: int, epochs: int, seed: int) -> list[float]:
  """Seconds per epoch of the least loop a user could write around dlopt's train step."""
  batches = BatchIterator((x, y), batch_size, seed=seed)
  tx = make_optimizer(OPTIMIZER, total_steps=epochs * len(batches))
  state = create_train_state(MODEL, tx, x[:1], seed=seed)
  # The XLA options fit picks for a convolving model on the CPU, so that the two loops
  # differ only in the loop around the step.
  options = step_compiler_options(state.apply_fn, {"params": state.params}, x[:1], train=False)
  step = make_train_step(Objective("cross_entropy"), compiler_options=options)
  seconds = []
  for epoch in range(epochs):
    start = time.perf_counter()
    for batch in batches.epoch(epoch):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - start)
  return seconds


def fit_epoch_seconds(x, y, batch_size: int, epochs: int, seed: int) -> list[float]:
  """Seconds per epoch of `fit` on the same data, as its history records them."""
  config = FitConfig(epochs=epochs, batch_size=batch_size, seed=seed, val_fraction=0.0,
                     test_fraction=0.0, progress=False, plot=False)
  result = fit(MODEL, (x, y), optimizer=OPTIMIZER, config=config)
  return [record["epoch_seconds"] for record in result.history]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench fit-throughput` (besides --runs, --tiny, --out)."""
  parser.add_argument("--epochs", type=int, default=None,
                      help="epochs per run, the first dropped (default 4, tiny 2)")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--examples", type=int, default=None,
                      help="MNIST-subset examples used (default 5000, tiny 512)")


def run(args: argparse.Namespace) -> int:
  """Alternates the two loops over `args.runs` rounds; writes fit_throughput.json."""
  epochs = args.epochs or (2 if args.tiny else 4)
  examples = args.examples or (512 if args.tiny else 5000)
  x, y = load_mnist_subset()
  x, y = x[:examples], y[:examples]
  # The same split fit makes with val_fraction = test_fraction = 0: all examples, shuffled.
  train = train_val_test_split(x, y, val_fraction=0.0, test_fraction=0.0, seed=0).train
  hand, looped = [], []
  for _ in range(args.runs):
    hand += hand_written_epoch_seconds(train.x, train.y, args.batch_size, epochs, 0)[1:]
    looped += fit_epoch_seconds(x, y, args.batch_size, epochs, 0)[1:]
  steps = len(train.x) // args.batch_size
  hand_rate, fit_rate = steps / statistics.median(hand), steps / statistics.median(looped)
  record = {
      "benchmark": "fit_throughput",
      "model": "CNN(features=(32, 64), dense_width=128) on MNIST subset 28x28x1",
      "optimizer": "adamw lr 1e-3 wd 1e-4", "batch_size": args.batch_size,
      "examples": examples, "steps_per_epoch": steps, "epochs_per_run": epochs,
      "rounds": args.runs, "hand_epoch_seconds": hand, "fit_epoch_seconds": looped,
      "steps_per_second": {"hand": spread(steps / s for s in hand),
                           "fit": spread(steps / s for s in looped)},
      "hand_steps_per_second": hand_rate, "fit_steps_per_second": fit_rate,
      "fit_over_hand_throughput": fit_rate / hand_rate,
  }
  path = write_result(args, "fit_throughput", record)
  print(f"hand-written loop {hand_rate:7.2f} steps/s   fit {fit_rate:7.2f} steps/s   "
        f"ratio fit/hand {fit_rate / hand_rate:.3f}   ({len(hand)} epochs each, medians)")
  print(f"wrote {path}")
  return 0
