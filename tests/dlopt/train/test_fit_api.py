"""fit's reshaped API: any optax optimizer, NNX models through the Linen bridge, callbacks,
SIGTERM, the batch-source door, and the shape of the code itself."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import chex
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from dlopt.data import BatchIterator, load_digits
from dlopt.models import MLP
from dlopt.optim import OptimizerConfig
from dlopt.train import (BatchSource, Callback, FitConfig, Interrupted, IterableBatches,
                         ProcessLocal, fit)
from dlopt.train.inputs import batch_source

ROOT = Path(__file__).resolve().parents[3]
QUIET = dict(progress=False, plot=False)


@pytest.fixture(scope="module")
def digits():
  x, y = load_digits()
  return x.reshape(len(x), -1), y


def _mlp():
  return MLP(widths=(32,), num_outputs=10)


def _assert_same_trees(a, b):
  chex.assert_trees_all_equal(a, b)


def test_a_users_optax_chain_trains_and_logs_its_injected_learning_rate(digits):
  schedule = optax.linear_schedule(3e-3, 1e-4, transition_steps=40)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.inject_hyperparams(optax.lion)(learning_rate=schedule))
  result = fit(_mlp(), digits, optimizer=tx, config=FitConfig(epochs=2, batch_size=64, **QUIET))
  assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
  for record in result.history:  # the rate of the epoch's last update, read from the state
    assert record["learning_rate"] == pytest.approx(float(schedule(record["step"] - 1)))
  assert result.test_metrics["accuracy"] > 0.6
  plain = fit(_mlp(), digits, optimizer=optax.adam(1e-3), config=FitConfig(epochs=1, **QUIET))
  assert "learning_rate" not in plain.history[0]  # nothing in the state says it


def test_an_optax_optimizer_and_its_config_twin_give_the_same_run(digits):
  config = FitConfig(epochs=1, batch_size=64, **QUIET)
  a = fit(_mlp(), digits, optimizer=OptimizerConfig("adam", 1e-3), config=config)
  b = fit(_mlp(), digits, optimizer=optax.adam(1e-3), config=config)
  _assert_same_trees(a.state.params, b.state.params)


class _NNXClassifier(nnx.Module):
  def __init__(self, features: int, classes: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(features, 32, rngs=rngs)
    self.out = nnx.Linear(32, classes, rngs=rngs)

  def __call__(self, x, *, train: bool = False):
    return self.out(nnx.relu(self.hidden(x)))


def test_an_nnx_model_trains_through_the_linen_bridge(digits):
  model = nnx.bridge.to_linen(_NNXClassifier, 64, 10)
  result = fit(model, digits, optimizer=OptimizerConfig("adam", 3e-3),
               config=FitConfig(epochs=3, batch_size=64, **QUIET))
  assert result.test_metrics["accuracy"] > 0.85


def test_a_bare_nnx_module_gets_an_error_pointing_to_the_bridge(digits):
  with pytest.raises(ValueError, match=r"NNX module .*nnx\.bridge\.to_linen"):
    fit(_NNXClassifier(64, 10, rngs=nnx.Rngs(0)), digits, config=FitConfig(epochs=1, **QUIET))
  with pytest.raises(ValueError, match="model must be a flax.linen.Module; got function"):
    fit(lambda x: x, digits, config=FitConfig(epochs=1, **QUIET))
  with pytest.raises(ValueError, match="optimizer must be .* GradientTransformation; got str"):
    fit(_mlp(), digits, optimizer="adam", config=FitConfig(epochs=1, **QUIET))
  with pytest.raises(ValueError, match="callbacks must be dlopt.train.Callback instances; got builtin_function"):
    fit(_mlp(), digits, callbacks=[print], config=FitConfig(epochs=1, **QUIET))


class _Recorder(Callback):
  """Records every hook; adds a metric at evaluation; stops after `stop_after` steps."""

  def __init__(self, stop_after: int | None = None):
    self.events, self.stop_after = [], stop_after

  def on_train_begin(self, loop):
    self.events.append(("begin", loop.step))

  def on_step_end(self, loop):
    self.events.append(("step", loop.step))
    if self.stop_after is not None and loop.step == self.stop_after:
      loop.request_stop("enough")

  def on_metrics(self, loop, step, metrics):
    assert set(metrics) == {"loss", "accuracy", "grad_norm"}
    assert all(isinstance(v, float) for v in metrics.values())
    self.events.append(("metrics", step))

  def on_evaluate(self, loop, record):
    assert "val_loss" in record  # the built-in validation came first
    record["val_custom"] = float(loop.position.epoch + 1) * 10

  def on_epoch_end(self, loop, record):
    assert loop.position.history[-1] is record
    self.events.append(("epoch", record["epoch"]))

  def on_train_end(self, loop):
    self.events.append(("end", loop.step))


def test_a_custom_callback_sees_every_event_and_its_metrics_are_logged(digits, tmp_path):
  recorder = _Recorder()
  config = FitConfig(epochs=2, batch_size=128, log_every=3, **QUIET)
  result = fit(_mlp(), digits, config=config, callbacks=[recorder], workdir=tmp_path)
  steps_per_epoch = int(result.state.step) // 2
  kinds = [kind for kind, _ in recorder.events]
  assert kinds[0] == "begin" and kinds[-1] == "end"
  assert [s for kind, s in recorder.events if kind == "step"] == list(range(1, 2 * steps_per_epoch + 1))
  assert sorted(s for kind, s in recorder.events if kind == "metrics") == list(
      range(1, 2 * steps_per_epoch + 1))  # every step's metrics, once
  assert [e for kind, e in recorder.events if kind == "epoch"] == [1, 2]
  assert [r["val_custom"] for r in result.history] == [10.0, 20.0]
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["val_custom"] for r in logged] == [10.0, 20.0]


def test_a_callback_can_stop_the_run_at_a_step(digits):
  recorder = _Recorder(stop_after=5)
  result = fit(_mlp(), digits, config=FitConfig(epochs=3, batch_size=64, **QUIET),
               callbacks=[recorder])
  assert int(result.state.step) == 5 and result.history == []


class _SendSignal(Callback):
  def __init__(self, at_step: int, signum: int):
    self.at_step, self.signum = at_step, signum

  def on_step_end(self, loop):
    if loop.step == self.at_step:
      os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_signal_saves_at_the_next_step_and_resumes_bit_exact(digits, tmp_path, signum):
  config = FitConfig(epochs=2, batch_size=128, **QUIET)
  unbroken = fit(_mlp(), digits, config=config, workdir=tmp_path / "unbroken")
  with pytest.raises(Interrupted, match=f"stopped at step 7 on {signal.Signals(signum).name}") \
      as stopped:
    fit(_mlp(), digits, config=config, workdir=tmp_path / "stopped",
        callbacks=[_SendSignal(7, signum)])
  assert stopped.value.signum == signum and stopped.value.step == 7
  assert isinstance(stopped.value, KeyboardInterrupt)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
  resumed = fit(_mlp(), digits, config=config, workdir=tmp_path / "stopped", resume=True)
  _assert_same_trees(unbroken.state.params, resumed.state.params)
  _assert_same_trees(unbroken.state.opt_state, resumed.state.opt_state)
  untimed = lambda history: [{k: v for k, v in r.items() if k != "epoch_seconds"}
                             for r in history]
  assert untimed(resumed.history) == untimed(unbroken.history)  # metrics too, bit for bit


def test_every_input_kind_becomes_one_batch_source(digits):
  x, y = digits
  arrays = batch_source((x, y), batch_size=100, seed=0)
  assert isinstance(arrays, BatchIterator) and isinstance(arrays, BatchSource)
  assert arrays.batch_size == 100 and len(arrays) == len(x) // 100
  listed = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 1000, 100)]
  iterable = batch_source(listed, batch_size=7, seed=0)
  assert isinstance(iterable, IterableBatches) and iterable.batch_size == 100
  assert len(iterable) == 10 and iterable.examples() is None
  assert jax.tree.map(np.shape, iterable.sample()) == ((1, 64), (1,))
  resumed = list(iterable.epoch(0, start_step=8, rows=slice(0, 100)))
  np.testing.assert_array_equal(resumed[0][1], y[800:900])
  local = ProcessLocal(listed)
  assert batch_source(local, 7, 0) is local and local.batch_size == 100
  with pytest.raises(ValueError, match="data must be an .* got int"):
    batch_source(3, 7, 0)


def test_batch_iterator_takes_any_pytree_of_arrays():
  rng = np.random.default_rng(0)
  tree = ((rng.standard_normal((10, 3)), np.arange(10)), {"labels": np.arange(10) % 2})
  iterator = BatchIterator(tree, 4, seed=1)
  batch = next(iterator.epoch(0))
  assert jax.tree.structure(batch) == jax.tree.structure(tree)
  order = iterator.permutation(0)[:4]
  np.testing.assert_array_equal(batch[0][1], order)
  np.testing.assert_array_equal(batch[1]["labels"], order % 2)
  assert jax.tree.map(np.shape, iterator.sample()) == (((1, 3), (1,)), {"labels": (1,)})
  with pytest.raises(ValueError, match="same number of examples"):
    BatchIterator((np.ones(3), {"a": np.ones(4)}), 2)


def _functions(path: Path):
  tree = ast.parse(path.read_text())
  return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef,
                                                               ast.AsyncFunctionDef))]


def test_no_function_of_dlopt_train_takes_more_than_6_positional_parameters():
  offenders = []
  for path in sorted((ROOT / "dlopt" / "train").glob("*.py")):
    for function in _functions(path):
      positional = [a.arg for a in function.args.posonlyargs + function.args.args
                    if a.arg not in ("self", "cls")]
      if len(positional) > 6:
        offenders.append(f"{path.name}:{function.lineno} {function.name}({len(positional)})")
  assert not offenders, offenders


def test_fit_and_the_loop_never_ask_what_kind_of_data_or_placement_they_have():
  for name in ("fit.py", "loop.py"):
    source = (ROOT / "dlopt" / "train" / name).read_text()
    tree = ast.parse(source)
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not names & {"ProcessLocal", "BatchIterator", "IterableBatches", "Splits",
                        "PmapParallel", "DataParallel"}, name
    assert "mode" not in attributes, name  # no `strategy.mode == "pmap"` branches


def test_dlopt_train_does_not_import_compress():
  code = "import sys, dlopt.train; print('dlopt.compress' in sys.modules)"
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        check=True)
  assert done.stdout.strip() == "False"


@pytest.mark.parametrize("module", ["inputs", "callbacks", "loop", "state", "parallel"])
def test_docstring_examples_run(module):
  import doctest
  import importlib
  assert doctest.testmod(importlib.import_module(f"dlopt.train.{module}"),
                         raise_on_error=False).failed == 0
