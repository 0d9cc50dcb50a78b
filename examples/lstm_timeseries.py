"""A 3-layer bidirectional LSTM classifying UCR/UEA time series: JapaneseVowels or GunPoint.

    python -m dlopt.data fetch ucr                  # once: from the aeon wheel on PyPI, checksummed
    python examples/lstm_timeseries.py              # JapaneseVowels, runs/lstm_timeseries-<time>
    python examples/lstm_timeseries.py --dataset GunPoint --cell gru --pooling last

The official train/test splits are kept; `--val-fraction` of the training cases is held
out for validation. Sequences are zero-padded to a common length and the model is told
each one's length, so padding never enters the recurrence. Channels are standardized with
statistics of the valid training steps.
"""

from __future__ import annotations

import sys

import numpy as np

from dlopt.cli import ConfigParser
from dlopt.data import load_ucr, train_val_test_split
from dlopt.models import RecurrentClassifier
from dlopt.optim import OptimizerConfig
from dlopt.runner import add_run_flags, fit_summary, run_directory, run_fit, unless_given, \
    write_summary
from dlopt.train import FitConfig

MODEL = RecurrentClassifier(num_classes=2, hidden_size=64, num_layers=3, cell="lstm",
                            bidirectional=True, dropout_rate=0.1, pooling="mean")
OPTIMIZER = OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="warmup_cosine",
                            warmup_steps=30, weight_decay=1e-4, clip_norm=1.0)
FIT = FitConfig(epochs=80, batch_size=16, seed=0, val_fraction=0.1, test_fraction=0.0,
                monitor="val_loss", patience=25)
DATASETS = ("JapaneseVowels", "GunPoint", "BasicMotions")
PAA = {"JapaneseVowels": 1, "GunPoint": 5, "BasicMotions": 2}  # --paa defaults


def paa(x: np.ndarray, lengths: np.ndarray, factor: int):
  """Means of each `factor` steps: `[N, T, C]` -> `[N, ceil(T / factor), C]`, lengths too."""
  if factor == 1:
    return x, lengths
  steps = -(-x.shape[1] // factor)
  padded = np.zeros((x.shape[0], steps * factor, x.shape[2]), np.float32)
  padded[:, :x.shape[1]] = x
  valid = np.arange(steps * factor)[None, :] < lengths[:, None]  # [N, T']
  sums = (padded * valid[..., None]).reshape(x.shape[0], steps, factor, -1).sum(axis=2)
  counts = valid.reshape(x.shape[0], steps, factor).sum(axis=2)[..., None]
  return (sums / np.maximum(counts, 1)).astype(np.float32), -(-lengths // factor)
TINY_FIT = {"epochs": 2}
TINY_OPTIMIZER = {"warmup_steps": 2}


def standardize(train_x, train_lengths, *others):
  """Per-channel standardization from the valid training steps; padding stays zero."""
  valid = np.arange(train_x.shape[1])[None, :] < train_lengths[:, None]  # [N, T]
  mean, std = train_x[valid].mean(axis=0), train_x[valid].std(axis=0) + 1e-6  # [C]
  out = []
  for x, lengths in ((train_x, train_lengths), *others):
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    out.append((((x - mean) / std) * valid[..., None]).astype(np.float32))
  return out


def main(argv=None) -> int:
  parser = ConfigParser(__doc__.split("\n")[0])
  parser.add_config("model", MODEL, skip=("num_classes",))
  parser.add_config("optimizer", OPTIMIZER, aliases={"name": "optimizer", "learning_rate": "lr"})
  parser.add_config("fit", FIT, skip=("test_fraction",))
  parser.add_argument("--dataset", choices=DATASETS, default="JapaneseVowels")
  parser.add_argument("--paa", type=int, default=None,
                      help="piecewise aggregate approximation factor (default per data set: "
                           + ", ".join(f"{k} {v}" for k, v in PAA.items()) + ")")
  add_run_flags(parser, "lstm_timeseries", tiny_help="two epochs")
  args = parser.parse(argv)
  model, optimizer, config = (args.configs[k] for k in ("model", "optimizer", "fit"))
  extras = args.extras
  if extras.tiny:
    config = unless_given(config, TINY_FIT, "fit", args.given)
    optimizer = unless_given(optimizer, TINY_OPTIMIZER, "optimizer", args.given)
  workdir = run_directory(parser, "lstm_timeseries", extras)

  factor = PAA[extras.dataset] if extras.paa is None else extras.paa
  if factor < 1:
    parser.error(f"--paa must be an integer >= 1; got {factor}")
  try:
    train, test = load_ucr(extras.dataset, "train"), load_ucr(extras.dataset, "test")
  except FileNotFoundError as error:
    parser.error(str(error))
  train = train._replace(**dict(zip(("x", "lengths"), paa(train.x, train.lengths, factor))))
  test = test._replace(**dict(zip(("x", "lengths"), paa(test.x, test.lengths, factor))))
  index = np.arange(len(train.y))
  fit_part, val_part, _ = train_val_test_split(index, train.y, val_fraction=config.val_fraction,
                                               test_fraction=0.0, seed=config.seed)
  parts = [(train.x[p.x], train.lengths[p.x], train.y[p.x]) for p in (fit_part, val_part)]
  parts.append((test.x, test.lengths, test.y))
  xs = standardize(parts[0][0], parts[0][1], *[(x, n) for x, n, _ in parts[1:]])
  (fit_data, val_data, test_data) = [((x, n), y) for x, (_, n, y) in zip(xs, parts)]
  model = model.clone(num_classes=len(train.classes))

  print(f"run directory: {workdir}")
  print(f"{extras.dataset}: {len(train.y)} train / {len(test.y)} test cases, "
        f"{train.x.shape[2]} channels, lengths {train.lengths.min()}-{train.lengths.max()}, "
        f"{len(train.classes)} classes")
  result, seconds = run_fit(parser, model, fit_data, val_data=val_data, test_data=test_data,
                            optimizer=optimizer, config=config, workdir=workdir,
                            resume=extras.resume)
  summary = fit_summary(result, seconds)
  summary["dataset"] = extras.dataset
  write_summary(workdir, summary)
  print(f"test accuracy {summary['test_accuracy']:.4f}  macro F1 {summary['test_macro_f1']:.4f}"
        f"  ({summary['epochs']} epochs, {summary['parameters']:,} parameters, {seconds:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
