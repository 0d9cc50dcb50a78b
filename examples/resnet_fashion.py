"""The residual CNN on Fashion-MNIST: on-device augmentation, warmup-cosine AdamW and an EMA.

    python -m dlopt.data fetch fashion_mnist        # once: from Debian's packages, checksummed
    python examples/resnet_fashion.py               # a fresh run in runs/resnet_fashion-<time>
    python examples/resnet_fashion.py --stage-features 32,64,128 --epochs 20

The official 10,000 test images are the test split; `--val-fraction` of the 60,000
training images is held out for validation. Training batches are augmented on the device
(random crop with padding and horizontal flips; see the augment flags), and the parameters'
exponential moving average (`--ema-decay`) is what validation and the test evaluate.
"""

from __future__ import annotations

import functools
import sys

from dlopt.cli import ConfigParser
from dlopt.data import AugmentConfig, augment, load_fashion_mnist, train_val_test_split
from dlopt.models import ResidualCNN
from dlopt.optim import OptimizerConfig
from dlopt.runner import add_run_flags, fit_summary, run_directory, run_fit, unless_given, \
    write_summary
from dlopt.train import FitConfig, Objective

MODEL = ResidualCNN(num_classes=10, stem_features=24, stage_features=(24, 48, 96),
                    blocks_per_stage=(1, 1, 1), norm="batch", dropout_rate=0.1)
OPTIMIZER = OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="warmup_cosine",
                            warmup_steps=200, weight_decay=5e-4, ema_decay=0.999)
FIT = FitConfig(epochs=10, batch_size=128, seed=0, val_fraction=0.1, test_fraction=0.0,
                monitor="val_accuracy", checkpoint_every=100)
AUGMENT = AugmentConfig(flip=True, crop_padding=2, max_rotation=0.0)
TINY_FIT = {"epochs": 1, "batch_size": 32, "checkpoint_every": None}
TINY_OPTIMIZER = {"warmup_steps": 2, "ema_decay": 0.9}
TINY_EXAMPLES = 512


def main(argv=None) -> int:
  parser = ConfigParser(__doc__.split("\n")[0])
  parser.add_config("model", MODEL, skip=("num_classes", "norm_axis_name"))  # set by fit
  parser.add_config("optimizer", OPTIMIZER, aliases={"name": "optimizer", "learning_rate": "lr"})
  parser.add_config("fit", FIT, skip=("test_fraction",))
  parser.add_config("objective", Objective(), skip=("loss", "temperature", "alpha"))
  parser.add_config("augment", AUGMENT)
  add_run_flags(parser, "resnet_fashion", tiny_help=f"{TINY_EXAMPLES} images, one epoch")
  args = parser.parse(argv)
  model, optimizer, config = (args.configs[k] for k in ("model", "optimizer", "fit"))
  extras = args.extras
  if extras.tiny:
    config = unless_given(config, TINY_FIT, "fit", args.given)
    optimizer = unless_given(optimizer, TINY_OPTIMIZER, "optimizer", args.given)
  workdir = run_directory(parser, "resnet_fashion", extras)

  try:
    (x, y), (x_test, y_test) = load_fashion_mnist("train"), load_fashion_mnist("test")
  except FileNotFoundError as error:
    parser.error(str(error))
  if extras.tiny:
    x, y, x_test, y_test = x[:TINY_EXAMPLES], y[:TINY_EXAMPLES], x_test[:256], y_test[:256]
  train, val, _ = train_val_test_split(x, y, val_fraction=config.val_fraction,
                                       test_fraction=0.0, seed=config.seed)

  print(f"run directory: {workdir}")
  result, seconds = run_fit(parser, model, tuple(train), val_data=tuple(val),
                            test_data=(x_test, y_test), optimizer=optimizer,
                            objective=args.configs["objective"], config=config,
                            workdir=workdir, resume=extras.resume,
                            augment=functools.partial(augment, config=args.configs["augment"]))
  summary = fit_summary(result, seconds)
  write_summary(workdir, summary)
  print(f"test accuracy {summary['test_accuracy']:.4f}  macro F1 {summary['test_macro_f1']:.4f}"
        f"  ({summary['epochs']} epochs, {summary['parameters']:,} parameters, {seconds:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
