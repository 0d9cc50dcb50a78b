"""Data parallelism: every `parallel` mode of `fit` on 8 fake CPU devices (in a subprocess:
this process keeps its one device) against single-device training, and the pieces here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dlopt.data import load_digits
from dlopt.models import MLP
from dlopt.optim import OptimizerConfig
from dlopt.train import FitConfig, fit
from dlopt.train.parallel import DATA_AXIS, fsdp_spec, resolve_mode

CHECKS = Path(__file__).with_name("parallel_checks.py")
DEVICES = 8
TOL = 1e-5  # float32 sums in another order, over a few steps


def _run_checks(group: str, tmp_path: Path) -> dict:
  """Runs `parallel_checks.py group` on 8 fake CPU devices; returns its report."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("DLOPT_")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}", JAX_PLATFORMS="cpu")
  out = tmp_path / f"{group}.json"
  done = subprocess.run([sys.executable, str(CHECKS), group, str(out), str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
  return json.loads(out.read_text())


def _assert_modes_match(report: dict) -> None:
  base = report["none"]
  for mode in ("pmap", "mesh", "fsdp"):
    result = report[mode]
    assert result["steps"] == base["steps"] > 0, mode
    assert result["param_diff"] < TOL, (mode, result["param_diff"])
    assert result["stats_diff"] < TOL, (mode, result["stats_diff"])
    for key in ("train_loss", "val_loss", "test_loss"):
      if base[key] is not None:
        assert result[key] == pytest.approx(base[key], rel=TOL), (mode, key)
    assert result["param_shardings"] != ["one device"], mode


def _assert_fsdp_shards(shards: dict) -> list[str]:
  """Every leaf of >= 2**10 elements split 8 ways on 8 devices, smaller ones whole on each;
  returns the sharded leaves."""
  sharded = []
  for part, leaves in shards.items():
    for leaf in leaves:
      assert leaf["devices"] == DEVICES, leaf
      shard_sizes = {int(np.prod(shape)) for shape in leaf["shard_shapes"]}
      if leaf["size"] >= 2 ** 10:
        assert shard_sizes == {leaf["size"] // DEVICES}, leaf
        assert DATA_AXIS in leaf["spec"], leaf
        sharded.append(f"{part}{leaf['path']}")
      else:
        assert shard_sizes == {leaf["size"]} and leaf["spec"] == "P()", leaf
  return sharded


@pytest.mark.slow
def test_mlp_on_8_devices_matches_one_device_in_every_mode(tmp_path):
  report = _run_checks("mlp", tmp_path)
  assert report["devices"] == DEVICES
  _assert_modes_match(report)  # val (40) and test (39) examples padded to 8 devices
  sharded = _assert_fsdp_shards(report["fsdp_shards"])
  # The two big kernels, and Adam's two moments of each.
  assert len([name for name in sharded if name.startswith("params")]) == 2
  assert len([name for name in sharded if name.startswith("opt_state")]) == 4
  assert report["dropout_mesh_param_diff"] < TOL
  for direction, resumed in report["resume"].items():
    assert resumed["from_step"] == 4 and resumed["steps"] == report["none"]["steps"], direction
    assert resumed["param_diff"] < TOL, direction
  assert report["resume"]["fsdp->none"]["devices"] == 1
  assert report["resume"]["none->fsdp"]["devices"] == DEVICES
  message = report["errors"]["batch_size"]
  assert "batch_size=36" in message and "8 devices" in message and "'mesh'" in message
  assert "norm_axis_name" in report["errors"]["pmap_unsynced_state"]


@pytest.mark.slow
def test_cnn_with_batch_norm_on_8_devices_matches_one_device(tmp_path):
  report = _run_checks("cnn", tmp_path)
  _assert_modes_match(report)  # parameters and running statistics
  sharded = _assert_fsdp_shards(report["fsdp_shards"])
  assert any("conv2" in name for name in sharded)


def test_one_device_mesh_and_pmap_match_the_plain_step():
  x, y = load_digits()
  x, y = x[:200], y[:200]
  runs = {mode: fit(MLP(widths=(16,), num_outputs=10), (x, y),
                    optimizer=OptimizerConfig("adam", 3e-3),
                    config=FitConfig(epochs=1, batch_size=32, progress=False, plot=False,
                                     parallel=mode))
          for mode in ("none", "mesh", "pmap")}
  for mode in ("mesh", "pmap"):
    chex.assert_trees_all_close(runs["none"].state.params, runs[mode].state.params,
                                atol=TOL, rtol=TOL)
    assert runs[mode].history[-1]["val_loss"] == pytest.approx(
        runs["none"].history[-1]["val_loss"], rel=TOL)


def test_fsdp_spec_splits_the_largest_divisible_axis_of_large_arrays():
  assert fsdp_spec((64, 64), 8) == P(DATA_AXIS)
  assert fsdp_spec((3, 3, 8, 16), 8) == P(None, None, None, DATA_AXIS)
  assert fsdp_spec((3, 3, 16, 16), 8) == P(None, None, DATA_AXIS)  # first of the largest
  assert fsdp_spec((1001, 3), 8) == P()  # no axis divides
  assert fsdp_spec((64, 10), 8) == P()  # too small to be worth it
  assert fsdp_spec((64, 10), 8, min_size=1) == P(DATA_AXIS)
  assert fsdp_spec((4096,), 1) == P()


def test_parallel_modes_and_their_errors():
  assert resolve_mode("auto", 1) == "none"
  assert resolve_mode("auto", 8) == "mesh"
  assert resolve_mode("pmap", 1) == "pmap"
  with pytest.raises(ValueError, match="FitConfig.parallel must be one of auto, none, pmap, "
                     "mesh, fsdp; got 'ddp'"):
    FitConfig(parallel="ddp")


def test_parallel_batches_from_an_iterable_must_all_have_the_first_size():
  x, y = load_digits()
  batches = [(x[i:i + 32], y[i:i + 32]) for i in (0, 32)] + [(x[64:80], y[64:80])]
  with pytest.raises(ValueError, match="every training batch must hold 32 examples .* got one "
                     "of 16"):
    fit(MLP(widths=(8,), num_outputs=10), batches, val_data=(x[100:120], y[100:120]),
        config=FitConfig(epochs=1, progress=False, plot=False, parallel="mesh"))
