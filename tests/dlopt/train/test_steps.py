"""Train and eval steps: pure, seeded, and doing what their docstrings say."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlopt.models import CNN, MLP, ResidualCNN
from dlopt.train import Objective, create_train_state, eval_step, train_step
from dlopt.train.steps import make_train_step


def _batch(n=16, features=12, classes=4, seed=0):
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(kx, (n, features)), jax.random.randint(ky, (n,), 0, classes))


def _state(model=None, tx=None, seed=0, ema=False, x=None):
  model = model or MLP(widths=(16,), num_outputs=4, dropout_rate=0.5)
  x = _batch()[0] if x is None else x
  return create_train_state(model, tx or optax.adam(1e-2), x, seed=seed, ema=ema)


def test_same_seed_same_state_different_seed_different_params():
  a, b, c = _state(seed=1), _state(seed=1), _state(seed=2)
  chex.assert_trees_all_equal(a.params, b.params)
  assert not np.array_equal(a.params["Dense_0"]["kernel"], c.params["Dense_0"]["kernel"])


def test_train_step_is_pure_and_lowers_the_loss():
  step = jax.jit(functools.partial(train_step, objective=Objective()))
  state, batch = _state(), _batch()
  once_a, m_a = step(state, batch)
  once_b, m_b = step(state, batch)
  np.testing.assert_array_equal(m_a["loss"], m_b["loss"])
  chex.assert_trees_all_equal(once_a.params, once_b.params)
  assert int(once_a.step) == 1 and int(state.step) == 0
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]


def test_dropout_key_changes_with_the_step():
  step = jax.jit(functools.partial(train_step, objective=Objective(), ),)
  state = _state(tx=optax.sgd(0.0))  # lr 0: only the dropout mask differs between steps
  batch = _batch()
  state1, m1 = step(state, batch)
  _, m2 = step(state1, batch)
  assert float(m1["loss"]) != float(m2["loss"])


def test_donated_step_matches_plain_step():
  state, batch = _state(), _batch()
  expected, _ = jax.jit(functools.partial(train_step, objective=Objective()))(state, batch)
  donated, _ = make_train_step(Objective())(_state(), batch)
  np.testing.assert_array_equal(expected.params["Dense_1"]["kernel"],
                                donated.params["Dense_1"]["kernel"])


def test_batch_norm_statistics_update_in_training_only():
  x = jax.random.normal(jax.random.PRNGKey(3), (8, 12, 12, 1))
  y = jnp.arange(8) % 10
  model = ResidualCNN(stem_features=4, stage_features=(4, 8), norm="batch", norm_groups=2)
  state = _state(model=model, x=x)
  new_state, _ = jax.jit(functools.partial(train_step, objective=Objective()))(state, (x, y))
  before = jax.tree.leaves(state.model_state)
  after = jax.tree.leaves(new_state.model_state)
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  sums = jax.jit(functools.partial(eval_step, objective=Objective(), num_classes=10))(
      new_state, (x, y), jnp.ones(8))
  assert int(sums["confusion"].sum()) == 8


def test_ema_follows_params():
  from dlopt.optim import ema_decay_at, ema_update
  state, batch = _state(ema=True), _batch()
  new_state, _ = jax.jit(functools.partial(train_step, objective=Objective(),
                                           ema_decay=0.9))(state, batch)
  expected = ema_update(state.ema_params, new_state.params, ema_decay_at(0.9, 0))
  np.testing.assert_allclose(new_state.ema_params["Dense_0"]["kernel"],
                             expected["Dense_0"]["kernel"], rtol=1e-6)
  assert new_state.eval_params is new_state.ema_params


def test_ema_waits_for_accumulated_updates():
  from dlopt.optim import OptimizerConfig, make_optimizer
  tx = make_optimizer(OptimizerConfig("sgd", 0.1, accumulate_steps=2))
  state, batch = _state(tx=tx, ema=True), _batch()
  step = jax.jit(functools.partial(train_step, objective=Objective(), ema_decay=0.5))
  micro, _ = step(state, batch)
  np.testing.assert_array_equal(micro.params["Dense_0"]["kernel"],
                                state.params["Dense_0"]["kernel"])
  np.testing.assert_array_equal(micro.ema_params["Dense_0"]["kernel"],
                                state.ema_params["Dense_0"]["kernel"])
  full, _ = step(micro, batch)
  assert not np.array_equal(full.ema_params["Dense_0"]["kernel"],
                            state.ema_params["Dense_0"]["kernel"])


def test_eval_step_ignores_padding():
  state = _state()
  x, y = _batch(n=12)
  step = jax.jit(functools.partial(eval_step, objective=Objective(), num_classes=4))
  full = step(state, (x[:8], y[:8]), jnp.ones(8))
  padded_x = jnp.concatenate([x[:8], 100 * x[8:]])
  padded = step(state, (padded_x, y), jnp.concatenate([jnp.ones(8), jnp.zeros(4)]))
  np.testing.assert_allclose(padded["loss_sum"], full["loss_sum"], rtol=1e-5)
  np.testing.assert_array_equal(padded["confusion"], full["confusion"])
  assert float(padded["count"]) == 8.0


def test_l2_penalty_changes_the_gradient_step():
  state, batch = _state(tx=optax.sgd(0.1)), _batch()
  plain, _ = jax.jit(functools.partial(train_step, objective=Objective()))(state, batch)
  decayed, _ = jax.jit(functools.partial(train_step, objective=Objective(l2=1.0)))(state, batch)
  kernel = state.params["Dense_0"]["kernel"]
  # d/dw 0.5*|w|^2 = w, so the L2 run moves each weight by an extra -lr * w.
  np.testing.assert_allclose(decayed.params["Dense_0"]["kernel"],
                             plain.params["Dense_0"]["kernel"] - 0.1 * kernel, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(loss="hinge"), dict(label_smoothing=1.0), dict(l1=-1.0),
                                 dict(loss="mse", label_smoothing=0.1)])
def test_objective_rejects_bad_fields(bad):
  with pytest.raises(ValueError, match="Objective"):
    Objective(**bad)
