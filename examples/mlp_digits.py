"""The 64-64-10 MLP on scikit-learn's 1,797 handwritten digits (8x8), end to end.

    python examples/mlp_digits.py                  # a fresh run in runs/mlp_digits-<time>
    python examples/mlp_digits.py --epochs 60 --lr 1e-3 --optimizer sgd --momentum 0.9

Every field of the model, optimizer and loop configs is a flag (see --help). The run
directory gets config.json, metrics.jsonl, curves.png, checkpoints/ and final_metrics.json.
"""

from __future__ import annotations

import sys

from dlopt.cli import ConfigParser
from dlopt.data import fit_normalization, load_digits, normalize
from dlopt.models import MLP
from dlopt.optim import OptimizerConfig
from dlopt.runner import add_run_flags, fit_summary, run_directory, run_fit, unless_given, \
    write_summary
from dlopt.train import FitConfig, Objective

MODEL = MLP(widths=(64, 64), num_outputs=10, dropout_rate=0.1)
OPTIMIZER = OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="warmup_cosine",
                            warmup_steps=20, weight_decay=1e-4)
FIT = FitConfig(epochs=40, batch_size=64, seed=0, val_fraction=0.15, test_fraction=0.15,
                patience=8, monitor="val_accuracy")
TINY_FIT = {"epochs": 2}


def main(argv=None) -> int:
  parser = ConfigParser(__doc__.split("\n")[0])
  parser.add_config("model", MODEL, skip=("num_outputs",))
  parser.add_config("optimizer", OPTIMIZER, aliases={"name": "optimizer", "learning_rate": "lr"})
  parser.add_config("fit", FIT)
  parser.add_config("objective", Objective(), skip=("loss", "temperature", "alpha"))
  add_run_flags(parser, "mlp_digits", tiny_help="two epochs")
  args = parser.parse(argv)
  model, optimizer, config = (args.configs[k] for k in ("model", "optimizer", "fit"))
  if args.extras.tiny:
    config = unless_given(config, TINY_FIT, "fit", args.given)
  workdir = run_directory(parser, "mlp_digits", args.extras)

  x, y = load_digits()
  # Pixel values 0..16 scaled by the statistics of the whole set: a fixed, label-free
  # transform (the same one at test time), so no split leaks into another.
  x = normalize(x, fit_normalization(x))
  print(f"run directory: {workdir}")
  result, seconds = run_fit(parser, model, (x, y), optimizer=optimizer,
                            objective=args.configs["objective"], config=config,
                            workdir=workdir, resume=args.extras.resume)
  summary = fit_summary(result, seconds)
  write_summary(workdir, summary)
  print(f"test accuracy {summary['test_accuracy']:.4f}  macro F1 {summary['test_macro_f1']:.4f}"
        f"  ({summary['epochs']} epochs, {summary['parameters']:,} parameters, {seconds:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
