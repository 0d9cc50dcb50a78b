"""The fit loop on small real data: learning, seeding, early stopping, checkpoints, resume,
logs, plots, and clear errors for bad input."""

import json
import shutil

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dlopt.data import BatchIterator, load_diabetes, load_digits, train_val_test_split
from dlopt.models import CNN, MLP, LinearRegression
from dlopt.optim import OptimizerConfig
from dlopt.train import Checkpointer, FitConfig, NonFiniteLossError, Objective, fit

QUIET = dict(progress=False, plot=False)


@pytest.fixture(scope="module")
def digits():
  return load_digits()


def _mlp():
  return MLP(widths=(32,), num_outputs=10)


def _assert_same_params(a, b):
  chex.assert_trees_all_equal(a, b)


def test_mlp_learns_digits_and_reports_metrics(digits):
  result = fit(_mlp(), digits, optimizer=OptimizerConfig("adamw", 3e-3, schedule="warmup_cosine",
                                                          warmup_steps=10, weight_decay=1e-4),
               config=FitConfig(epochs=4, batch_size=32, **QUIET))
  assert len(result.history) == 4
  first, last = result.history[0], result.history[-1]
  assert last["train_loss"] < first["train_loss"]
  assert result.test_metrics["accuracy"] > 0.85
  assert 0.8 < result.test_metrics["macro_f1"] <= 1.0
  assert len(result.test_metrics["per_class_f1"]) == 10
  assert last["learning_rate"] < 3e-3 * 0.2  # cosine has decayed near its end
  steps_per_epoch = int(round(0.8 * len(digits[0]))) // 32
  assert int(result.state.step) == 4 * steps_per_epoch


def test_same_seed_same_run_bit_for_bit(digits):
  config = FitConfig(epochs=2, batch_size=64, seed=3, **QUIET)
  a = fit(_mlp(), digits, config=config)
  b = fit(_mlp(), digits, config=config)
  c = fit(_mlp(), digits, config=FitConfig(epochs=2, batch_size=64, seed=4, **QUIET))
  _assert_same_params(a.state.params, b.state.params)
  assert a.history[-1]["val_loss"] == b.history[-1]["val_loss"]
  assert not np.array_equal(a.state.params["Dense_0"]["kernel"], c.state.params["Dense_0"]["kernel"])


def test_early_stopping_stops_and_restores_the_best_epoch(digits, tmp_path):
  # min_delta so large that no epoch after the first counts as an improvement.
  config = FitConfig(epochs=10, batch_size=64, patience=2, min_delta=1e9, **QUIET)
  result = fit(_mlp(), digits, optimizer=OptimizerConfig("sgd", 0.05), config=config,
               workdir=tmp_path)
  assert len(result.history) == 3
  again = fit(_mlp(), digits, optimizer=OptimizerConfig("sgd", 0.05), config=config,
              workdir=tmp_path, resume=True)  # a stopped run stays stopped
  assert len(again.history) == 3
  _assert_same_params(result.state.params, again.state.params)
  one_epoch = fit(_mlp(), digits, optimizer=OptimizerConfig("sgd", 0.05),
                  config=FitConfig(epochs=1, batch_size=64, **QUIET))
  _assert_same_params(result.state.params, one_epoch.state.params)


def test_checkpoints_keep_last_n_and_logs_and_plot(tmp_path, digits):
  config = FitConfig(epochs=2, batch_size=64, checkpoint_every=5, keep_last_n=2, progress=False)
  fit(_mlp(), digits, config=config, workdir=tmp_path)
  steps = Checkpointer(tmp_path / "checkpoints").all_steps()
  assert len(steps) == 2 and steps[-1] == 2 * (int(round(0.8 * len(digits[0]))) // 64)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
  png = (tmp_path / "curves.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 5000
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  assert final["test"]["accuracy"] > 0.5
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["fit"]["checkpoint_every"] == 5


def test_resume_from_a_mid_epoch_checkpoint_is_bit_exact(tmp_path, digits):
  optimizer = OptimizerConfig("adamw", 3e-3, schedule="warmup_cosine", warmup_steps=5,
                              weight_decay=1e-3, ema_decay=0.9)
  model = MLP(widths=(32,), num_outputs=10, dropout_rate=0.3)
  config = FitConfig(epochs=3, batch_size=64, checkpoint_every=7, keep_last_n=20,
                     patience=5, **QUIET)
  unbroken = fit(model, digits, optimizer=optimizer, config=config, workdir=tmp_path / "a")
  # Pretend the run died after step 28 (mid-epoch 2): drop every later checkpoint.
  directory = tmp_path / "a" / "checkpoints"
  for step in Checkpointer(directory).all_steps():
    if step > 28:
      shutil.rmtree(directory / str(step))
  resumed = fit(model, digits, optimizer=optimizer, config=config, workdir=tmp_path / "a",
                resume=True)
  _assert_same_params(unbroken.state.params, resumed.state.params)
  _assert_same_params(unbroken.state.ema_params, resumed.state.ema_params)
  _assert_same_params(unbroken.state.opt_state, resumed.state.opt_state)
  timeless = lambda history: [{k: v for k, v in h.items() if k != "epoch_seconds"}
                               for h in history]
  assert timeless(resumed.history) == timeless(unbroken.history)
  lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_existing_run_is_not_overwritten_and_config_must_match(tmp_path, digits):
  config = FitConfig(epochs=1, batch_size=64, **QUIET)
  fit(_mlp(), digits, config=config, workdir=tmp_path)
  before = Checkpointer(tmp_path / "checkpoints").all_steps()
  with pytest.raises(ValueError, match="already holds a run"):
    fit(_mlp(), digits, config=config, workdir=tmp_path)
  with pytest.raises(ValueError, match="batch_size"):
    fit(_mlp(), digits, config=FitConfig(epochs=1, batch_size=32, **QUIET), workdir=tmp_path,
        resume=True)
  with pytest.raises(ValueError, match=r"model\.widths: saved \[32\], now \[16\]"):
    fit(MLP(widths=(16,), num_outputs=10), digits, config=config, workdir=tmp_path, resume=True)
  assert Checkpointer(tmp_path / "checkpoints").all_steps() == before


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  x, y = load_diabetes()
  config = FitConfig(epochs=50, batch_size=32, checkpoint_every=1, keep_last_n=3,
                     val_fraction=0.0, test_fraction=0.0, log_every=1, **QUIET)
  with pytest.raises(NonFiniteLossError, match=r"at step \d+") as error:
    fit(LinearRegression(), (x, y), optimizer=OptimizerConfig("sgd", 10.0),
        objective=Objective("mse"), config=config, workdir=tmp_path)
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  latest = checkpointer.latest_step()
  assert latest is not None and f"step {latest}" in str(error.value)
  saved = ocp.StandardCheckpointer().restore(checkpointer.directory / str(latest) / "state")
  tree = jax.tree.leaves(saved["params"])
  assert all(np.all(np.isfinite(leaf)) for leaf in tree)


def test_fit_takes_a_batch_iterator_with_separate_validation(digits):
  splits = train_val_test_split(*digits, seed=0)
  batches = BatchIterator(tuple(splits.train), 50, seed=0)
  result = fit(_mlp(), batches, val_data=tuple(splits.val), test_data=tuple(splits.test),
               config=FitConfig(epochs=2, **QUIET))
  assert int(result.state.step) == 2 * len(batches)
  assert "val_accuracy" in result.history[-1] and result.test_metrics["accuracy"] > 0.5


def test_one_hot_labels_accumulation_and_regression(digits):
  x, y = digits
  one_hot = np.eye(10, dtype=np.float32)[y]
  result = fit(_mlp(), (x, one_hot), optimizer=OptimizerConfig("momentum", 0.05,
                                                                 accumulate_steps=2),
               objective=Objective(label_smoothing=0.1),
               config=FitConfig(epochs=2, batch_size=32, **QUIET))
  assert result.test_metrics["accuracy"] > 0.5
  xr, yr = load_diabetes()
  xr = (xr - xr.mean(0)) / xr.std(0)
  yr = (yr - yr.mean()) / yr.std()
  reg = fit(LinearRegression(), (xr, yr), optimizer=OptimizerConfig("adam", 0.05),
            objective=Objective("mse"), config=FitConfig(epochs=20, batch_size=32, **QUIET))
  assert reg.history[-1]["train_loss"] < 0.7 * reg.history[0]["train_loss"]
  assert reg.test_metrics["loss"] < 0.8  # standardized target: predicting the mean gives 1.0


def test_bad_inputs_get_clear_errors(digits):
  x, y = digits
  config = FitConfig(epochs=1, **QUIET)
  with pytest.raises(ValueError, match=r"same number of examples.*\(1796,\)"):
    fit(_mlp(), (x, y[:-1]), config=config)
  with pytest.raises(ValueError, match=r"x\.shape"):
    fit(CNN(), (x.reshape(len(x), -1), y), config=config)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
    fit(MLP(widths=(8,), num_outputs=5), (x, y), config=config)
  with pytest.raises(ValueError, match="integer class ids"):
    fit(_mlp(), (x, y.astype(np.float32)), config=config)
  with pytest.raises(ValueError, match="batch_size"):
    fit(_mlp(), (x, y), config=FitConfig(epochs=1, batch_size=100000, **QUIET))
  with pytest.raises(ValueError, match="FitConfig.batch_size"):
    FitConfig(batch_size=0)
  with pytest.raises(ValueError, match="FitConfig.monitor"):
    FitConfig(monitor="val_auc")


def test_progress_bar_shows_live_loss_and_accuracy(digits, capsys):
  fit(_mlp(), digits, config=FitConfig(epochs=1, batch_size=64, log_every=5, plot=False))
  err = capsys.readouterr().err
  assert "epoch 1/1" in err and "loss=" in err and "accuracy=" in err and "val_accuracy=" in err


def test_bad_data_on_resume_loses_nothing_saved(tmp_path, digits):
  x, y = digits
  config = FitConfig(epochs=1, batch_size=64, **QUIET)
  fit(_mlp(), (x, y), config=config, workdir=tmp_path)
  files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  log = (tmp_path / "metrics.jsonl").read_text()
  with pytest.raises(ValueError, match="same number of examples"):
    fit(_mlp(), (x, y[:100]), config=config, workdir=tmp_path, resume=True)
  with pytest.raises(ValueError, match="does not take the training inputs"):
    fit(CNN(), (x.reshape(len(x), -1), y), config=config, workdir=tmp_path, resume=True)
  assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == files
  assert (tmp_path / "metrics.jsonl").read_text() == log
