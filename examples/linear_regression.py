"""Linear regression on scikit-learn's diabetes data: plain gradient descent next to Adam.

    python examples/linear_regression.py            # a fresh run in runs/linear_regression-<time>
    python examples/linear_regression.py --sgd-lr 0.05 --adam-lr 0.01 --epochs 200

Both optimizers fit the same `LinearRegression` model on the same standardized split; the
closed-form least-squares solution (scikit-learn's `LinearRegression`) on that split is the
yardstick. The run directory gets one sub-run per optimizer (config.json, metrics.jsonl,
curves.png, checkpoints/, final_metrics.json), `mse_curves.png` with both side by side,
and `final_metrics.json` comparing the three test MSEs (in the target's own units).
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from dlopt.cli import ConfigParser
from dlopt.data import load_diabetes, train_val_test_split
from dlopt.models import LinearRegression
from dlopt.optim import OptimizerConfig
from dlopt.runner import add_run_flags, run_directory, run_fit, unless_given
from dlopt.train import FitConfig, Objective

FIT = FitConfig(epochs=150, batch_size=32, seed=0, val_fraction=0.1, test_fraction=0.2,
                checkpoint_every=None)
OBJECTIVE = Objective("mse")
TINY_FIT = {"epochs": 3}


def main(argv=None) -> int:
  parser = ConfigParser(__doc__.split("\n")[0])
  parser.add_config("fit", FIT)
  parser.add_argument("--sgd-lr", type=float, default=0.02, help="plain gradient descent step")
  parser.add_argument("--adam-lr", type=float, default=0.01, help="Adam's learning rate")
  add_run_flags(parser, "linear_regression", tiny_help="three epochs")
  args = parser.parse(argv)
  config = args.configs["fit"]
  if args.extras.tiny:
    config = unless_given(config, TINY_FIT, "fit", args.given)
  for name in ("sgd_lr", "adam_lr"):
    if not getattr(args.extras, name) > 0:
      parser.error(f"--{name.replace('_', '-')} must be > 0; got {getattr(args.extras, name)}")
  workdir = run_directory(parser, "linear_regression", args.extras)

  x, y = load_diabetes()
  splits = train_val_test_split(x, y, val_fraction=config.val_fraction,
                                test_fraction=config.test_fraction, seed=config.seed,
                                stratify=False)
  # Standardize features and target with training statistics: gradient descent on raw
  # diabetes features (column norms ~0.05) would crawl. MSE is reported back in target units.
  x_mean, x_std = splits.train.x.mean(0), splits.train.x.std(0)
  y_mean, y_std = float(splits.train.y.mean()), float(splits.train.y.std())
  parts = [((s.x - x_mean) / x_std, ((s.y - y_mean) / y_std)[:, None]) for s in splits]

  print(f"run directory: {workdir}")
  results = {}
  for name, optimizer in (("sgd", OptimizerConfig("sgd", args.extras.sgd_lr)),
                          ("adam", OptimizerConfig("adam", args.extras.adam_lr))):
    result, seconds = run_fit(parser, LinearRegression(features=1), parts[0], val_data=parts[1],
                              test_data=parts[2], optimizer=optimizer, objective=OBJECTIVE,
                              config=config,
                              workdir=workdir / name, resume=args.extras.resume)
    results[name] = {"test_mse": result.test_metrics["loss"] * y_std ** 2,
                     "seconds": round(seconds, 1), "history": result.history}

  closed_form = _least_squares_test_mse(splits)
  summary = {"closed_form_test_mse": closed_form}
  for name, record in results.items():
    summary[f"{name}_test_mse"] = record["test_mse"]
    summary[f"{name}_vs_closed_form"] = record["test_mse"] / closed_form
    summary[f"{name}_seconds"] = record["seconds"]
  if jax.process_index() == 0:  # with several processes, one writes the shared files
    (workdir / "final_metrics.json").write_text(json.dumps({"summary": summary}, indent=2)
                                                + "\n")
    _plot_side_by_side({k: v["history"] for k, v in results.items()}, y_std ** 2,
                       workdir / "mse_curves.png")
  print(f"test MSE: least squares {closed_form:.1f}, gradient descent "
        f"{summary['sgd_test_mse']:.1f} ({summary['sgd_vs_closed_form']:.3f}x), Adam "
        f"{summary['adam_test_mse']:.1f} ({summary['adam_vs_closed_form']:.3f}x)")
  print(f"wrote {workdir}/final_metrics.json, mse_curves.png, sgd/, adam/")
  return 0


def _least_squares_test_mse(splits) -> float:
  from sklearn.linear_model import LinearRegression as LeastSquares
  model = LeastSquares().fit(splits.train.x, splits.train.y)
  return float(np.mean((model.predict(splits.test.x) - splits.test.y) ** 2))


def _plot_side_by_side(histories: dict, scale: float, path) -> None:
  from matplotlib.figure import Figure  # a figure of its own: no backend switched

  fig = Figure(figsize=(10, 3.6))
  axes = fig.subplots(1, len(histories), sharey=True)
  titles = {"sgd": "gradient descent", "adam": "Adam"}
  for ax, (name, history) in zip(axes, histories.items()):
    epochs = [r["epoch"] for r in history]
    for split in ("train", "val"):
      ax.plot(epochs, [r[f"{split}_loss"] * scale for r in history], label=split)
    ax.set(title=titles[name], xlabel="epoch", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_ylabel("MSE (target units)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == "__main__":
  sys.exit(main())
