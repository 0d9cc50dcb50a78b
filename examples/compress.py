"""Model compression on the MNIST CNN: pruning, int8 weights and a distilled student, side by side.

    python -m dlopt.data fetch mnist                 # once (or --dataset mnist5k: bundled)
    python examples/compress.py                      # runs/compress-<time>
    python examples/compress.py --sparsity 0.95 --temperature 2

1. A teacher: the example CNN trained on MNIST.
2. Pruned: one global magnitude threshold zeroes `--sparsity` of the conv and dense
   weights, then a short fine-tune keeps them at zero (`dlopt.compress.keep_masked`).
3. int8: symmetric per-output-channel int8 weights (post-training, no data needed),
   evaluated through `quantized_apply`, which dequantizes inside the jitted model.
4. Distilled: a small CNN trained on the teacher's temperature-softened outputs plus the
   labels, next to the same small CNN trained on the labels alone.

It prints accuracy, parameter count and bytes for each variant; the table also goes to
`final_metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np
import optax

from dlopt import compress
from dlopt.cli import ConfigParser
from dlopt.data import load_mnist, load_mnist_subset, train_val_test_split
from dlopt.models import CNN, count_params
from dlopt.optim import OptimizerConfig, make_optimizer
from dlopt.runner import add_run_flags, run_directory, run_fit
from dlopt.train import FitConfig, Objective

TEACHER = CNN(num_classes=10, features=(32, 64), dense_width=128, dropout_rate=0.25)
STUDENT = CNN(num_classes=10, features=(8, 16), dense_width=32, dropout_rate=0.0)
OPTIMIZER = OptimizerConfig(name="adamw", learning_rate=2e-3, schedule="warmup_cosine",
                            warmup_steps=100, weight_decay=1e-4)
FINE_TUNE = OptimizerConfig(name="adamw", learning_rate=3e-4, schedule="warmup_cosine",
                            warmup_steps=50, weight_decay=0.0)
FIT = FitConfig(epochs=3, batch_size=64, seed=0, val_fraction=0.1, test_fraction=0.0,
                checkpoint_every=None)


def main(argv=None) -> int:
  parser = ConfigParser(__doc__.split("\n")[0])
  parser.add_config("fit", FIT, skip=("test_fraction",))
  parser.add_argument("--dataset", choices=("mnist", "mnist5k"), default="mnist")
  parser.add_argument("--sparsity", type=float, default=0.9, help="share of weights pruned")
  parser.add_argument("--fine-tune-epochs", type=int, default=1)
  parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
  parser.add_argument("--alpha", type=float, default=0.7, help="weight of the distillation term")
  add_run_flags(parser, "compress", tiny_help="1,000 images, one epoch each")
  args = parser.parse(argv)
  config, extras = args.configs["fit"], args.extras
  if not 0 < extras.sparsity < 1:
    parser.error(f"--sparsity must be in (0, 1); got {extras.sparsity}")
  if extras.fine_tune_epochs < 1:
    parser.error(f"--fine-tune-epochs must be an integer >= 1; got {extras.fine_tune_epochs}")
  if extras.resume:
    parser.error("--resume is not supported here: each stage is a separate short run")
  workdir = run_directory(parser, "compress", extras)
  tiny = extras.tiny
  if tiny:
    config = dataclasses.replace(config, epochs=1)
  data = _load(parser, extras.dataset, config, tiny)
  fine_tune = FINE_TUNE if not tiny else OptimizerConfig("adamw", 3e-4)
  optimizer = OPTIMIZER if not tiny else OptimizerConfig("adamw", 2e-3)
  print(f"run directory: {workdir}")

  def train(name, model, **kwargs):
    return run_fit(parser, model, data["data"], val_data=data["val_data"],
                   test_data=data["test_data"], workdir=workdir / name,
                   **{"optimizer": optimizer, "config": config, **kwargs})

  started = time.perf_counter()
  teacher, seconds = train("teacher", TEACHER)
  teacher_variables = {"params": teacher.state.params, **teacher.state.model_state}
  rows = [_row("teacher (float32)", teacher.test_metrics["accuracy"], teacher.state.params,
               compress.param_bytes(teacher.state.params), seconds)]

  masks = compress.magnitude_masks(teacher.state.params, extras.sparsity)
  fine_tune_config = dataclasses.replace(config, epochs=1 if tiny else extras.fine_tune_epochs)
  fine_tune_steps = fine_tune_config.epochs * (len(data["data"][1]) // config.batch_size)
  # The fine-tuning optimizer, chained with keep_masked so that pruned weights stay 0.
  keep_pruned = optax.chain(make_optimizer(fine_tune, total_steps=fine_tune_steps),
                            compress.keep_masked(masks))
  pruned, seconds = train("pruned", TEACHER, optimizer=keep_pruned, config=fine_tune_config,
                 init_variables={**teacher_variables,
                                 "params": compress.apply_masks(teacher.state.params, masks)})
  report = compress.sparsity_report(pruned.state.params, masks)
  rows.append(_row(f"pruned {report['overall']:.0%} + fine-tune", pruned.test_metrics["accuracy"],
                   pruned.state.params, compress.sparse_bytes(pruned.state.params, masks),
                   seconds))

  quantize_start = time.perf_counter()
  qvariables = {**teacher_variables, "params": compress.quantize_params(teacher.state.params)}
  rows.append(_row("int8 weights (per-channel)",
                   _accuracy(TEACHER, qvariables, data["test_data"], quantized=True),
                   teacher.state.params, compress.param_bytes(qvariables["params"]),
                   time.perf_counter() - quantize_start))

  alone, alone_seconds = train("student_alone", STUDENT)
  soft = compress.teacher_logits(TEACHER.apply, teacher_variables, data["data"][0])
  distillation = Objective("distillation", temperature=extras.temperature, alpha=extras.alpha)
  val_soft = compress.teacher_logits(TEACHER.apply, teacher_variables, data["val_data"][0])
  test_soft = compress.teacher_logits(TEACHER.apply, teacher_variables, data["test_data"][0])
  distilled, distilled_seconds = run_fit(parser, STUDENT, (data["data"][0], (data["data"][1], soft)),
                         val_data=(data["val_data"][0], (data["val_data"][1], val_soft)),
                         test_data=(data["test_data"][0], (data["test_data"][1], test_soft)),
                         optimizer=optimizer, objective=distillation, config=config,
                         workdir=workdir / "student_distilled")
  for name, result, seconds in (("student alone", alone, alone_seconds),
                                ("student distilled", distilled, distilled_seconds)):
    rows.append(_row(name, result.test_metrics["accuracy"], result.state.params,
                     compress.param_bytes(result.state.params), seconds))

  total = time.perf_counter() - started
  for row in rows:
    row["times_smaller"] = rows[0]["bytes"] / row["bytes"]
    row["points_vs_teacher"] = 100 * (row["test_accuracy"] - rows[0]["test_accuracy"])
  (workdir / "final_metrics.json").write_text(
      json.dumps({"summary": rows, "seconds": round(total, 1)}, indent=2) + "\n")
  print(f"\n{'variant':28} {'test acc':>8} {'vs teacher':>10} {'parameters':>10} {'bytes':>10} "
        f"{'smaller':>7} {'seconds':>7}")
  for row in rows:
    print(f"{row['variant']:28} {row['test_accuracy']:8.4f} {row['points_vs_teacher']:+9.2f}pt "
          f"{row['parameters']:10,} {row['bytes']:10,} {row['times_smaller']:6.2f}x "
          f"{row['seconds']:7.1f}")
  print(f"total {total:.1f} s")
  return 0


def _row(variant: str, accuracy: float, params, size: int, seconds: float) -> dict:
  return {"variant": variant, "test_accuracy": float(accuracy),
          "parameters": count_params(params), "bytes": int(size),
          "seconds": round(float(seconds), 1)}


def _accuracy(model, variables, split, *, quantized: bool) -> float:
  x, y = split
  logits = []
  for start in range(0, len(x), 500):
    batch = x[start:start + 500]
    if quantized:
      logits.append(compress.quantized_apply(model.apply, variables, batch, train=False))
    else:
      logits.append(model.apply(variables, batch, train=False))
  return float(np.mean(np.argmax(np.concatenate(logits), axis=-1) == y))


def _load(parser, dataset: str, config, tiny: bool) -> dict:
  if dataset == "mnist5k":
    x, y = load_mnist_subset()
    test = None
  else:
    try:
      (x, y), test = load_mnist("train"), load_mnist("test")
    except FileNotFoundError as error:
      parser.error(str(error))
  if tiny:
    keep = np.random.default_rng(0).permutation(len(x))[:1000]
    x, y = x[keep], y[keep]
    test = None if test is None else (test[0][:500], test[1][:500])
  if test is None:
    train, val, held = train_val_test_split(x, y, val_fraction=config.val_fraction,
                                            test_fraction=0.1, seed=config.seed)
    test = tuple(held)
  else:
    train, val, _ = train_val_test_split(x, y, val_fraction=config.val_fraction,
                                         test_fraction=0.0, seed=config.seed)
  return {"data": tuple(train), "val_data": tuple(val), "test_data": test}


if __name__ == "__main__":
  sys.exit(main())
