"""fit with structured inputs and targets, augmentation, a given start and a user's optax chain."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlopt.data import load_digits
from dlopt.models import MLP
from dlopt.optim import OptimizerConfig
from dlopt.train import FitConfig, Objective, fit

QUIET = dict(progress=False, plot=False)
ADAM = OptimizerConfig("adam", 3e-3)


class _MeanOfValidSteps(nn.Module):
  """Takes `(x [B, T, F], lengths [B])`: classifies the mean of the valid steps."""

  @nn.compact
  def __call__(self, x, lengths, *, train=False):
    valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]  # [B, T]
    mean = jnp.sum(x * valid[..., None], axis=1) / jnp.maximum(lengths, 1)[:, None]
    return nn.Dense(2)(mean)


class _PerPosition(nn.Module):
  """A per-position classifier over [B, T, F] -> [B, T, C] (a language model's shape)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Dense(3)(x)


def test_tuple_inputs_reach_the_model_as_positional_arguments():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((400, 6, 2)).astype(np.float32)
  lengths = rng.integers(1, 7, 400).astype(np.int32)
  valid = np.arange(6)[None, :] < lengths[:, None]
  x[~valid] = 100.0  # garbage past the lengths: a model that reads it cannot learn
  y = ((x * valid[..., None]).sum(axis=(1, 2)) > 0).astype(np.int32)
  result = fit(_MeanOfValidSteps(), ((x, lengths), y), optimizer=OptimizerConfig("adam", 3e-2),
               config=FitConfig(epochs=15, batch_size=32, **QUIET))
  assert result.test_metrics["accuracy"] >= 0.9


def test_sequence_labels_count_every_position():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((300, 5, 4)).astype(np.float32)
  y = np.argmax(x[..., :3], axis=-1).astype(np.int32)  # [N, T]: learnable per position
  result = fit(_PerPosition(), (x, y), optimizer=OptimizerConfig("adam", 3e-2),
               config=FitConfig(epochs=10, batch_size=30, **QUIET))
  assert result.test_metrics["accuracy"] >= 0.95
  assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_distillation_follows_the_teacher_and_reports_label_accuracy():
  x, y = load_digits()
  x = x.reshape(len(x), -1)
  teacher = np.zeros((len(x), 10), np.float32)
  teacher[np.arange(len(x)), (y + 1) % 10] = 10.0  # a teacher that is always wrong by one
  config = FitConfig(epochs=6, batch_size=64, **QUIET)
  distillation = Objective("distillation", alpha=1.0, temperature=2.0)
  result = fit(MLP(widths=(64,), num_outputs=10), (x, (y, teacher)),
               optimizer=OptimizerConfig("adam", 3e-3), objective=distillation, config=config)
  # Pure distillation (alpha=1) learns the teacher's labels, not the true ones.
  assert result.test_metrics["accuracy"] < 0.2
  shifted = fit(MLP(widths=(64,), num_outputs=10), (x, ((y + 1) % 10, teacher)),
                optimizer=OptimizerConfig("adam", 3e-3), objective=distillation,
                config=config)
  assert shifted.test_metrics["accuracy"] > 0.85


def test_distillation_needs_a_target_pair():
  x, y = load_digits()
  with pytest.raises(ValueError, match="loss='distillation' needs targets"):
    fit(MLP(widths=(8,), num_outputs=10), (x, y),
        objective=Objective("distillation"), config=FitConfig(epochs=1, **QUIET))


def test_augment_runs_on_every_training_batch_with_fresh_keys():
  x, y = load_digits()
  seen = []

  def augment(key, images):
    jax.debug.callback(lambda k: seen.append(np.asarray(k)), jax.random.key_data(key))
    return images + 0.01 * jax.random.normal(key, images.shape)

  config = FitConfig(epochs=2, batch_size=128, **QUIET)
  a = fit(MLP(widths=(16,), num_outputs=10), (x, y), optimizer=ADAM, config=config,
          augment=augment)
  b = fit(MLP(widths=(16,), num_outputs=10), (x, y), optimizer=ADAM, config=config,
          augment=augment)
  steps = int(a.state.step)
  assert len(seen) == 2 * steps  # every step of both runs
  assert len({k.tobytes() for k in seen[:steps]}) == steps  # a fresh key per step
  chex.assert_trees_all_equal(a.state.params, b.state.params)  # same seed, same run
  plain = fit(MLP(widths=(16,), num_outputs=10), (x, y), optimizer=ADAM, config=config)
  assert not np.allclose(np.asarray(jax.tree.leaves(plain.state.params)[0]),
                         np.asarray(jax.tree.leaves(a.state.params)[0]))


def test_init_variables_and_a_users_optax_chain_keep_frozen_entries():
  x, y = load_digits()
  model = MLP(widths=(16,), num_outputs=10)
  first = fit(model, (x, y), optimizer=ADAM, config=FitConfig(epochs=1, **QUIET))
  params = first.state.params
  mask = jax.tree.map(lambda p: (jnp.arange(p.size).reshape(p.shape) % 2).astype(p.dtype),
                      params)
  start = jax.tree.map(lambda p, m: p * m, params, mask)
  keep = optax.stateless(lambda updates, params=None: jax.tree.map(
      lambda u, m: u * m, updates, mask))
  tuned = fit(model, (x, y), optimizer=optax.chain(optax.adamw(1e-3, weight_decay=1e-2), keep),
              config=FitConfig(epochs=1, **QUIET), init_variables={"params": start})
  for p, m, s in zip(jax.tree.leaves(tuned.state.params), jax.tree.leaves(mask),
                     jax.tree.leaves(start)):
    p, m, s = map(np.asarray, (p, m, s))
    assert np.all(p[m == 0] == 0)  # frozen at their (zero) start
    assert not np.allclose(p[m == 1], s[m == 1])  # the rest trained on from the start
  with pytest.raises(ValueError, match="init_variables must have the model's variable"):
    fit(model, (x, y), config=FitConfig(epochs=1, **QUIET),
        init_variables={"params": {"Dense_0": params["Dense_0"]}})
