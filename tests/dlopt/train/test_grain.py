"""fit fed by grain pipelines: the adapter, its iterator state, and kill -9 + exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

grain = pytest.importorskip("grain", reason="pip install 'dlopt[grain]'")

from dlopt.data import load_digits  # noqa: E402
from dlopt.models import MLP  # noqa: E402
from dlopt.train import FitConfig, GrainBatches, fit  # noqa: E402
from dlopt.train.inputs import batch_source  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
JOB = Path(__file__).with_name("grain_job.py")


def _arrays(n=40):
  rng = np.random.default_rng(0)
  return rng.standard_normal((n, 3)).astype(np.float32), (np.arange(n) % 2).astype(np.int32)


def _dataset(n=40, batch=8):
  x, y = _arrays(n)
  return grain.MapDataset.range(n).shuffle(seed=1).map(lambda i: (x[i], y[i])).batch(batch)


def test_a_grain_dataset_is_a_batch_source_through_the_door():
  source = batch_source(_dataset(), batch_size=999, seed=0)  # the pipeline's own batches
  assert isinstance(source, GrainBatches)
  assert len(source) == 5 and source.batch_size == 8
  assert jax.tree.map(np.shape, source.sample()) == ((1, 3), (1,))
  first = list(source.epoch(0))
  second = list(source.epoch(1))  # a finite dataset starts its next pass
  assert len(first) == len(second) == 5
  np.testing.assert_array_equal(first[0][1], second[0][1])
  rows = list(source.epoch(2, rows=slice(2, 6)))
  assert rows[0][0].shape == (4, 3)


@pytest.mark.parametrize("kind", ["dataset", "loader"])
def test_the_iterator_state_round_trips_through_json(kind):
  x, y = _arrays()
  if kind == "dataset":
    pipeline = grain.MapDataset.range(40).shuffle(seed=1).repeat().map(
        lambda i: (x[i], y[i])).batch(8)
  else:
    sampler = grain.samplers.IndexSampler(num_records=40, shuffle=True, seed=1, num_epochs=None)
    pipeline = grain.DataLoader(data_source=list(zip(x, y)), sampler=sampler,
                                operations=[grain.transforms.Batch(batch_size=8)])
  source = GrainBatches(pipeline, steps_per_epoch=5)
  batches = source.epoch(0)
  for _ in range(3):
    next(batches)
  state = json.loads(json.dumps(source.iterator_state()))  # as the checkpoint keeps it
  expected = [next(batches) for _ in range(2)] + list(source.epoch(1))
  resumed = GrainBatches(pipeline, steps_per_epoch=5)
  resumed.restore_iterator(state)
  got = list(resumed.epoch(0, start_step=3)) + list(resumed.epoch(1))
  assert len(got) == len(expected) == 7
  for a, b in zip(got, expected):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_pipeline_without_len_needs_steps_per_epoch():
  endless = grain.MapDataset.range(10).repeat().batch(2).to_iter_dataset()
  with pytest.raises(ValueError, match="has no len\\(\\): pass GrainBatches\\(pipeline, "
                                       "steps_per_epoch=N\\)"):
    fit(MLP(widths=(4,), num_outputs=2), endless)


def test_fit_trains_on_a_grain_dataset():
  x, y = load_digits()
  x = x.reshape(len(x), -1)
  pipeline = grain.MapDataset.range(len(x)).shuffle(seed=0).map(lambda i: (x[i], y[i])).batch(
      64, drop_remainder=True)
  result = fit(MLP(widths=(32,), num_outputs=10), pipeline, val_data=(x[:300], y[:300]),
               config=FitConfig(epochs=3, batch_size=64, progress=False, plot=False))
  assert int(result.state.step) == 3 * (len(x) // 64)
  assert result.history[-1]["val_accuracy"] > 0.8


def _final_params(workdir: Path):
  directory = workdir / "checkpoints"
  latest = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  return latest, ocp.StandardCheckpointer().restore(directory / str(latest) / "state")


def _job(workdir: Path, *extra: str, **kwargs):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
  return subprocess.Popen([sys.executable, str(JOB), str(workdir), *extra], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_a_grain_fed_run_killed_mid_epoch_resumes_bit_exact(tmp_path):
  unbroken = _job(tmp_path / "unbroken")
  stopped_dir = tmp_path / "stopped"
  stopped = _job(stopped_dir)
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and stopped.poll() is None:
    steps = [int(p.name) for p in (stopped_dir / "checkpoints").glob("*") if p.name.isdigit()]
    if steps and max(steps) >= 36:  # epoch 2 of 4 (28 steps each), mid-epoch
      break
    time.sleep(0.01)
  stopped.send_signal(signal.SIGKILL)
  stopped.communicate(timeout=60)
  assert not (stopped_dir / "final_metrics.json").exists(), "the run ended before the kill"
  _, err = unbroken.communicate(timeout=300)
  assert unbroken.returncode == 0, err
  resumed = _job(stopped_dir, "--resume")
  _, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err
  (step_a, a), (step_b, b) = _final_params(tmp_path / "unbroken"), _final_params(stopped_dir)
  assert step_a == step_b == 4 * 28
  for key in ("params", "opt_state", "step", "rng"):
    chex.assert_trees_all_equal(a[key], b[key])
