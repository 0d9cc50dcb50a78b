"""The 8-device checks of test_parallel.py, run in a subprocess (not collected by pytest).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python tests/dlopt/train/parallel_checks.py {mlp,cnn} OUT.json [WORKDIR]

Trains the same model on the same global batches with `fit` in every `parallel` mode and
writes what test_parallel.py asserts on: each mode's largest parameter (and batch-norm
statistic) difference from the single-device run, metrics, the shards FSDP laid out,
and the errors bad set-ups raise.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from dlopt.data import load_digits
from dlopt.models import MLP, ResidualCNN
from dlopt.optim import OptimizerConfig
from dlopt.train import FitConfig, fit

MODES = ("none", "pmap", "mesh", "fsdp")
OPTIMIZER = OptimizerConfig("adam", 3e-3)
QUIET = dict(progress=False, plot=False)


def _max_diff(a, b) -> float:
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max((float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs),
             default=0.0)


def _shards(tree) -> list[dict]:
  """Per leaf: global shape, spec, and the shape of every device's shard."""
  return [{"path": jax.tree_util.keystr(path), "shape": list(leaf.shape),
           "size": math.prod(leaf.shape), "spec": str(leaf.sharding.spec),
           "shard_shapes": [list(s.data.shape) for s in leaf.addressable_shards],
           "devices": len({s.device for s in leaf.addressable_shards})}
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _compare_modes(model, data, config: FitConfig, workdirs: dict | None = None) -> dict:
  results = {mode: fit(model, data, optimizer=OPTIMIZER, workdir=(workdirs or {}).get(mode),
                       config=FitConfig(**{**config.__dict__, "parallel": mode}))
             for mode in MODES}
  base = results["none"]
  report = {}
  for mode, result in results.items():
    report[mode] = {
        "steps": int(result.state.step),
        "param_diff": _max_diff(base.state.params, result.state.params),
        "stats_diff": _max_diff(base.state.model_state, result.state.model_state),
        "train_loss": result.history[-1]["train_loss"],
        "val_loss": result.history[-1].get("val_loss"),
        "test_loss": (result.test_metrics or {}).get("loss"),
        "param_shardings": sorted({str(getattr(leaf.sharding, "spec", "one device"))
                                   for leaf in jax.tree.leaves(result.state.params)}),
    }
  fsdp = results["fsdp"].state
  report["fsdp_shards"] = {"params": _shards(fsdp.params), "opt_state": _shards(fsdp.opt_state),
                           "model_state": _shards(fsdp.model_state)}
  return report, results


def _error(fn) -> str | None:
  try:
    fn()
  except ValueError as error:
    return str(error)
  return None


class _InlineBatchNorm(nn.Module):
  """A model with batch statistics and no `norm_axis_name` field."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(x)


def check_mlp(workdir: Path) -> dict:
  x, y = load_digits()
  x, y = x[:397], y[:397]  # val and test of 40 and 39 examples: padded to 8 devices
  config = FitConfig(epochs=1, batch_size=32, eval_batch_size=50, seed=2,
                     checkpoint_every=4, **QUIET)
  model = MLP(widths=(64, 32), num_outputs=10)
  report, results = _compare_modes(model, (x, y), config,
                                   {"none": workdir / "none", "fsdp": workdir / "fsdp"})
  report["devices"] = jax.device_count()

  # Dropout under jit over the mesh draws the single-device run's masks.
  dropout = MLP(widths=(64, 32), num_outputs=10, dropout_rate=0.3)
  a, b = (fit(dropout, (x, y), optimizer=OPTIMIZER,
              config=FitConfig(**{**config.__dict__, "parallel": mode}))
          for mode in ("none", "mesh"))
  report["dropout_mesh_param_diff"] = _max_diff(a.state.params, b.state.params)

  # A checkpoint of the 8-device FSDP run resumes on one device, mid-epoch, and the other
  # way round.
  report["resume"] = {}
  for saved, resumed_as in (("fsdp", "none"), ("none", "fsdp")):
    checkpoints = workdir / saved / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    for step in steps[1:]:
      shutil.rmtree(checkpoints / str(step))
    resumed = fit(model, (x, y), optimizer=OPTIMIZER, workdir=workdir / saved, resume=True,
                  config=FitConfig(**{**config.__dict__, "parallel": resumed_as}))
    report["resume"][f"{saved}->{resumed_as}"] = {
        "from_step": steps[0], "saved_steps": steps, "steps": int(resumed.state.step),
        "param_diff": _max_diff(results["none"].state.params, resumed.state.params),
        "devices": len(jax.tree.leaves(resumed.state.params)[0].devices())}

  report["errors"] = {
      "batch_size": _error(lambda: fit(model, (x, y), optimizer=OPTIMIZER,
                                       config=FitConfig(epochs=1, batch_size=36, parallel="mesh",
                                                        **QUIET))),
      "pmap_unsynced_state": _error(lambda: fit(
          _InlineBatchNorm(), (x, y), optimizer=OPTIMIZER,
          config=FitConfig(epochs=1, batch_size=32, parallel="pmap", **QUIET))),
  }
  return report


def check_cnn(workdir: Path) -> dict:
  del workdir
  x, y = load_digits()
  x, y = x[:256], y[:256]
  model = ResidualCNN(num_classes=10, stem_features=8, stage_features=(16,),
                      blocks_per_stage=(1,), norm="batch")
  config = FitConfig(epochs=1, batch_size=32, seed=3, val_fraction=0.0, test_fraction=0.0,
                     **QUIET)
  report, _ = _compare_modes(model, (x, y), config)
  return report


def main(argv) -> int:
  group, out = argv[0], Path(argv[1])
  workdir = Path(argv[2]) if len(argv) > 2 else out.parent
  report = {"mlp": check_mlp, "cnn": check_cnn}[group](workdir)
  out.write_text(json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
