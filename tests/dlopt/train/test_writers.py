"""Metric writers (JSONL, TensorBoard, your own) fed by fit, per step and per epoch, and
the curves plot that leaves matplotlib's backend alone."""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from dlopt.data import load_digits
from dlopt.models import MLP
from dlopt.train import Callback, FitConfig, Interrupted, WriteMetrics, fit, plot_curves

QUIET = dict(progress=False, plot=False)


@pytest.fixture(scope="module")
def digits():
  x, y = load_digits()
  return x.reshape(len(x), -1), y


def _mlp():
  return MLP(widths=(16,), num_outputs=10)


def _events(logdir: Path) -> list:
  """Every TensorBoard event in `logdir`'s files (TFRecord framing: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2
  events = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  return events


def _scalars(events) -> dict[str, list[tuple[int, float]]]:
  found: dict = {}
  for event in events:
    for value in event.summary.value:
      if value.HasField("simple_value"):
        found.setdefault(value.tag, []).append((event.step, value.simple_value))
  return found


def _lines(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_fit_writes_every_step_and_epoch_to_jsonl_and_tensorboard(digits, tmp_path):
  pytest.importorskip("tensorboardX", reason="pip install 'dlopt[tensorboard]'")
  config = FitConfig(epochs=2, batch_size=128, log_every=4, tensorboard=True, **QUIET)
  result = fit(_mlp(), digits, config=config, workdir=tmp_path)
  steps = int(result.state.step)
  lines = _lines(tmp_path / "steps.jsonl")
  assert lines[0]["hparams"]["fit/epochs"] == 2 and lines[0]["hparams"]["model/class"] == "MLP"
  per_step = [line for line in lines if "train/loss" in line]
  assert [line["step"] for line in per_step] == list(range(1, steps + 1))
  assert all(set(line) == {"step", "train/loss", "train/accuracy", "train/grad_norm"}
             for line in per_step)
  per_epoch = [line for line in lines if "epoch/train_loss" in line]
  assert [line["step"] for line in per_epoch] == [r["step"] for r in result.history]
  assert [line["epoch/val_loss"] for line in per_epoch] == [r["val_loss"] for r in result.history]

  scalars = _scalars(_events(tmp_path / "tensorboard"))
  assert [s for s, _ in scalars["train/loss"]] == list(range(1, steps + 1))
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]],
                             [line["train/loss"] for line in per_step], rtol=1e-6)
  assert [s for s, _ in scalars["epoch/val_accuracy"]] == [r["step"] for r in result.history]
  plugins = {value.metadata.plugin_data.plugin_name for event in _events(tmp_path / "tensorboard")
             for value in event.summary.value}
  assert "hparams" in plugins


class _SendSignal(Callback):
  def __init__(self, at_step: int):
    self.at_step = at_step

  def on_step_end(self, loop):
    if loop.step == self.at_step:
      os.kill(os.getpid(), signal.SIGTERM)


def test_a_resumed_run_writes_each_step_once(digits, tmp_path):
  pytest.importorskip("tensorboardX", reason="pip install 'dlopt[tensorboard]'")
  config = FitConfig(epochs=2, batch_size=128, log_every=3, tensorboard=True, **QUIET)
  with pytest.raises(Interrupted):
    fit(_mlp(), digits, config=config, workdir=tmp_path, callbacks=[_SendSignal(7)])
  result = fit(_mlp(), digits, config=config, workdir=tmp_path, resume=True)
  steps = int(result.state.step)
  lines = _lines(tmp_path / "steps.jsonl")
  assert [line["step"] for line in lines if "train/loss" in line] == list(range(1, steps + 1))
  assert sum("hparams" in line for line in lines) == 1
  # TensorBoard keeps the stopped run's events after step 7 in its files but hides them
  # (purge_step); the newest event per step is the resumed run's.
  latest = {}
  for step, value in _scalars(_events(tmp_path / "tensorboard"))["train/loss"]:
    latest[step] = value
  assert sorted(latest) == list(range(1, steps + 1))


class _ListWriter:
  def __init__(self):
    self.scalars, self.hparams, self.closed = [], None, False

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))

  def write_hparams(self, hparams):
    self.hparams = dict(hparams)

  def flush(self):
    pass

  def close(self):
    self.closed = True


def test_a_users_own_writer(digits):
  writer = _ListWriter()
  result = fit(_mlp(), digits, config=FitConfig(epochs=1, batch_size=256, **QUIET),
               callbacks=[WriteMetrics([writer], hparams={"note": {"lr": 0.1}})])
  assert writer.hparams == {"note/lr": 0.1} and writer.closed
  steps = [s for s, scalars in writer.scalars if "train/loss" in scalars]
  assert steps == list(range(1, int(result.state.step) + 1))
  assert writer.scalars[-1][1]["epoch/epoch"] == 1


def test_tensorboard_needs_a_workdir(digits):
  with pytest.raises(ValueError, match="tensorboard=True writes into the run directory"):
    fit(_mlp(), digits, config=FitConfig(epochs=1, tensorboard=True, **QUIET))


def test_plot_curves_leaves_the_backend_and_pyplot_alone(tmp_path):
  import matplotlib.pyplot as plt
  previous = matplotlib.get_backend()
  matplotlib.use("svg")  # a stand-in for a notebook's backend
  try:
    figures = plt.get_fignums()
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5}
               for e in (1, 2, 3)]
    plot_curves(history, tmp_path / "curves.png")
    assert matplotlib.get_backend() == "svg"
    assert plt.get_fignums() == figures  # nothing left open in pyplot
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  finally:
    matplotlib.use(previous)
