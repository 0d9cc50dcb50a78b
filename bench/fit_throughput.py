"""Step throughput of `dlopt.train.fit` against a hand-written jitted loop, in one run.

Both train the same model with the same optimizer on the same batches (the MNIST-subset CNN,
batch 64, AdamW). The hand loop is the least a user could write: the jitted, donated
`train_step` called over `BatchIterator.epoch(e)`, blocking at the end of each epoch. `fit`
runs with its defaults, without validation, checkpoints or progress bar output to a
terminal (`progress=False`), so the comparison isolates the loop's own overhead. The first
epoch of each (compilation) is dropped; the two alternate epoch by epoch over `--rounds`, and
the ratio of medians is reported.

    python bench/fit_throughput.py            # writes bench/results/fit_throughput.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from dlopt.data import BatchIterator, load_mnist_subset, train_val_test_split
from dlopt.models import CNN
from dlopt.optim import OptimizerConfig, make_optimizer
from dlopt.train import FitConfig, Objective, create_train_state, fit, make_train_step

from _env import write_result

MODEL = CNN(num_classes=10, features=(32, 64), dense_width=128)
OPTIMIZER = OptimizerConfig("adamw", 1e-3, weight_decay=1e-4)


def hand_written_epoch_seconds(x, y, batch_size: int, epochs: int, seed: int) -> list[float]:
  batches = BatchIterator((x, y), batch_size, seed=seed)
  tx = make_optimizer(OPTIMIZER, total_steps=epochs * len(batches))
  state = create_train_state(MODEL, tx, x[:1], seed=seed)
  step = make_train_step(Objective("cross_entropy"))
  seconds = []
  for epoch in range(epochs):
    start = time.perf_counter()
    for batch in batches.epoch(epoch):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - start)
  return seconds


def fit_epoch_seconds(x, y, batch_size: int, epochs: int, seed: int) -> list[float]:
  config = FitConfig(epochs=epochs, batch_size=batch_size, seed=seed, val_fraction=0.0,
                     test_fraction=0.0, progress=False, plot=False)
  result = fit(MODEL, (x, y), optimizer=OPTIMIZER, config=config)
  return [record["epoch_seconds"] for record in result.history]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=4, help="epochs per run (first dropped)")
  parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--examples", type=int, default=5000)
  args = parser.parse_args()

  x, y = load_mnist_subset()
  x, y = x[:args.examples], y[:args.examples]
  # The same split fit makes with val_fraction = test_fraction = 0: all examples, shuffled.
  train = train_val_test_split(x, y, val_fraction=0.0, test_fraction=0.0, seed=0).train
  hand, looped = [], []
  for _ in range(args.rounds):
    hand += hand_written_epoch_seconds(train.x, train.y, args.batch_size, args.epochs, 0)[1:]
    looped += fit_epoch_seconds(x, y, args.batch_size, args.epochs, 0)[1:]
  steps = len(train.x) // args.batch_size
  hand_rate, fit_rate = steps / statistics.median(hand), steps / statistics.median(looped)
  record = {
      "benchmark": "fit_throughput",
      "model": "CNN(features=(32, 64), dense_width=128) on MNIST subset 28x28x1",
      "optimizer": "adamw lr 1e-3 wd 1e-4", "batch_size": args.batch_size,
      "steps_per_epoch": steps, "epochs_per_run": args.epochs, "rounds": args.rounds,
      "hand_epoch_seconds": hand, "fit_epoch_seconds": looped,
      "hand_steps_per_second": hand_rate, "fit_steps_per_second": fit_rate,
      "fit_over_hand_throughput": fit_rate / hand_rate,
  }
  path = write_result("fit_throughput", record)
  print(f"hand-written loop {hand_rate:7.2f} steps/s   fit {fit_rate:7.2f} steps/s   "
        f"ratio fit/hand {fit_rate / hand_rate:.3f}   ({len(hand)} epochs each, medians)")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
