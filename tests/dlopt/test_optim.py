"""Tests for dlopt.optim."""

import dataclasses
import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlopt import optim

LR = 0.1
HPARAMS = dict(momentum=0.8, b1=0.8, b2=0.99, eps=1e-6, rmsprop_decay=0.8)
N_STEPS = 5


def _params(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {
      "dense": {"kernel": jax.random.normal(k1, (3, 4)),
                "bias": jax.random.normal(k2, (4,))},
      "norm": {"scale": jax.random.normal(k3, (4,))},
  }


def _grads(n, seed=1, scale=1.0):
  params = _params()
  keys = jax.random.split(jax.random.key(seed), n)
  out = []
  for key in keys:
    leaves, treedef = jax.tree.flatten(params)
    subkeys = jax.random.split(key, len(leaves))
    out.append(jax.tree.unflatten(treedef, [
        scale * jax.random.normal(k, x.shape) for k, x in zip(subkeys, leaves)
    ]))
  return out


def _run(tx, params, grads_seq, jit):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _first_updates(tx, params, grads):
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def _assert_trees_close(a, b, tol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol,
                                                       atol=tol), a, b)


_ALIASES = {
    "sgd": lambda: optax.sgd(LR),
    "momentum": lambda: optax.sgd(LR, momentum=HPARAMS["momentum"]),
    "nesterov": lambda: optax.sgd(LR, momentum=HPARAMS["momentum"],
                                  nesterov=True),
    "adagrad": lambda: optax.adagrad(LR),
    "rmsprop": lambda: optax.rmsprop(LR, decay=HPARAMS["rmsprop_decay"],
                                     eps=HPARAMS["eps"]),
    "adam": lambda: optax.adam(LR, b1=HPARAMS["b1"], b2=HPARAMS["b2"],
                               eps=HPARAMS["eps"]),
    "adamw": lambda: optax.adamw(LR, b1=HPARAMS["b1"], b2=HPARAMS["b2"],
                                 eps=HPARAMS["eps"], weight_decay=0.1,
                                 mask=optim.default_decay_mask),
}


# Equivalence with the optax aliases.


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_matches_optax_alias(name, jit):
  weight_decay = 0.1 if name == "adamw" else 0.0
  config = optim.OptimizerConfig(name=name, learning_rate=LR,
                                 weight_decay=weight_decay, **HPARAMS)
  params, grads = _params(), _grads(N_STEPS)
  got = _run(optim.make_optimizer(config), params, grads, jit)
  want = _run(_ALIASES[name](), params, grads, jit)
  _assert_trees_close(got, want)
  assert not np.allclose(got["dense"]["kernel"], params["dense"]["kernel"])


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
def test_adam_with_weight_decay_is_adamw(jit):
  params, grads = _params(), _grads(N_STEPS)
  runs = [
      _run(optim.make_optimizer(optim.OptimizerConfig(
          name=name, learning_rate=LR, weight_decay=0.1, **HPARAMS)),
           params, grads, jit)
      for name in ("adam", "adamw")
  ]
  _assert_trees_close(*runs, tol=0)
  _assert_trees_close(runs[0], _run(_ALIASES["adamw"](), params, grads, jit))


# Weight decay and its mask.


def test_default_decay_mask_by_name():
  mask = optim.default_decay_mask(_params())
  assert mask == {"dense": {"kernel": True, "bias": False},
                  "norm": {"scale": False}}
  frozen = flax.core.freeze({"Conv_0": {"kernel": jnp.ones((3, 3, 1, 2)),
                                        "bias": jnp.ones((2,))},
                             "BatchNorm_0": {"scale": jnp.ones((2,)),
                                             "bias": jnp.ones((2,))},
                             "embedding": jnp.ones((5,))})
  mask = flax.core.unfreeze(optim.default_decay_mask(frozen))
  assert mask == {"Conv_0": {"kernel": True, "bias": False},
                  "BatchNorm_0": {"scale": False, "bias": False},
                  "embedding": True}
  assert optim.default_decay_mask([jnp.ones(2), jnp.ones(2)]) == [True, True]


def _sgd_updates(weight_decay, config_mask="default", decay_mask=None):
  config = optim.OptimizerConfig(name="momentum", learning_rate=LR,
                                 weight_decay=weight_decay,
                                 decay_mask=config_mask)
  tx = optim.make_optimizer(config, decay_mask=decay_mask)
  return _first_updates(tx, _params(), _grads(1)[0])


def test_default_mask_skips_bias_and_scale():
  decayed, plain = _sgd_updates(0.1), _sgd_updates(0.0)
  np.testing.assert_array_equal(decayed["dense"]["bias"],
                                plain["dense"]["bias"])
  np.testing.assert_array_equal(decayed["norm"]["scale"],
                                plain["norm"]["scale"])
  np.testing.assert_allclose(
      decayed["dense"]["kernel"],
      plain["dense"]["kernel"] - LR * 0.1 * _params()["dense"]["kernel"],
      rtol=1e-6, atol=1e-7)
  assert not np.allclose(decayed["dense"]["kernel"], plain["dense"]["kernel"])


def test_decay_mask_all_decays_every_leaf():
  decayed, plain = _sgd_updates(0.1, "all"), _sgd_updates(0.0)
  want = jax.tree.map(lambda u, p: u - LR * 0.1 * p, plain, _params())
  _assert_trees_close(decayed, want)
  assert not np.allclose(decayed["dense"]["bias"], plain["dense"]["bias"])


def test_decay_mask_none_disables_weight_decay():
  _assert_trees_close(_sgd_updates(0.1, "none"), _sgd_updates(0.0), tol=0)


@pytest.mark.parametrize("as_callable", [False, True])
def test_decay_mask_argument_overrides_config(as_callable):
  mask = {"dense": {"kernel": False, "bias": True}, "norm": {"scale": False}}
  arg = (lambda _: mask) if as_callable else mask
  decayed = _sgd_updates(0.1, "none", decay_mask=arg)
  plain = _sgd_updates(0.0)
  np.testing.assert_array_equal(decayed["dense"]["kernel"],
                                plain["dense"]["kernel"])
  np.testing.assert_array_equal(decayed["norm"]["scale"],
                                plain["norm"]["scale"])
  np.testing.assert_allclose(
      decayed["dense"]["bias"],
      plain["dense"]["bias"] - LR * 0.1 * _params()["dense"]["bias"],
      rtol=1e-6, atol=1e-7)


# Schedules.


def _schedule(total_steps=None, **kwargs):
  return optim.make_schedule(
      optim.OptimizerConfig(learning_rate=1.0, **kwargs), total_steps)


_SCHEDULE_CASES = [
    ("constant", dict(), None, {0: 1.0, 10_000: 1.0}),
    ("constant+warmup", dict(warmup_steps=4), None,
     {0: 0.0, 1: 0.25, 2: 0.5, 4: 1.0, 10_000: 1.0}),
    ("cosine", dict(schedule="warmup_cosine"), 100,
     {0: 1.0, 25: 0.5 * (1 + math.cos(math.pi / 4)), 50: 0.5, 100: 0.0,
      200: 0.0}),
    ("cosine+warmup", dict(schedule="warmup_cosine", warmup_steps=10,
                           final_lr_fraction=0.1), 110,
     {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 200: 0.1}),
    ("exponential", dict(schedule="exponential", decay_rate=0.1), 100,
     {0: 1.0, 50: 0.1 ** 0.5, 100: 0.1}),
    ("exponential+decay_steps", dict(schedule="exponential", decay_rate=0.5,
                                     decay_steps=10), 100,
     {0: 1.0, 10: 0.5, 20: 0.25, 25: 0.5 ** 2.5}),
    ("exponential+warmup", dict(schedule="exponential", decay_rate=0.1,
                                warmup_steps=20), 120,
     {10: 0.5, 20: 1.0, 70: 0.1 ** 0.5, 120: 0.1}),
    ("step", dict(schedule="step", step_boundaries=(0.5, 0.75),
                  step_factor=0.1), 100,
     {0: 1.0, 49: 1.0, 50: 0.1, 74: 0.1, 75: 0.01, 1000: 0.01}),
    ("step+warmup", dict(schedule="step", step_boundaries=(0.5, 0.75),
                         step_factor=0.5, warmup_steps=10), 100,
     {5: 0.5, 10: 1.0, 49: 1.0, 50: 0.5, 74: 0.5, 75: 0.25}),
    ("linear", dict(schedule="linear", final_lr_fraction=0.2), 10,
     {0: 1.0, 5: 0.6, 10: 0.2, 20: 0.2}),
    ("linear+warmup", dict(schedule="linear", final_lr_fraction=0.2,
                           warmup_steps=2), 12,
     {1: 0.5, 2: 1.0, 7: 0.6, 12: 0.2}),
]


@pytest.mark.parametrize("case", _SCHEDULE_CASES, ids=lambda c: c[0])
def test_schedule_values(case):
  _, kwargs, total_steps, expected = case
  schedule = _schedule(total_steps, **kwargs)
  jitted = jax.jit(schedule)
  for step, value in expected.items():
    assert float(schedule(step)) == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert float(jitted(jnp.int32(step))) == pytest.approx(value, rel=1e-5,
                                                           abs=1e-7)


def test_step_boundaries_on_same_step_compound():
  schedule = _schedule(4, schedule="step", step_boundaries=(0.5, 0.6),
                       step_factor=0.1)
  assert float(schedule(1)) == 1.0
  assert float(schedule(2)) == pytest.approx(0.01)


@pytest.mark.parametrize("schedule", [s for s in optim.SCHEDULES
                                      if s != "constant"])
def test_schedule_needs_total_steps(schedule):
  config = optim.OptimizerConfig(schedule=schedule)
  with pytest.raises(ValueError, match="total_steps"):
    optim.make_schedule(config)
  with pytest.raises(ValueError, match="total_steps"):
    optim.make_optimizer(config)
  with pytest.raises(ValueError, match="total_steps"):
    optim.make_schedule(dataclasses.replace(config, warmup_steps=10), 10)


def test_optimizer_uses_schedule():
  config = optim.OptimizerConfig(name="sgd", learning_rate=1.0,
                                 schedule="linear", warmup_steps=2)
  params, grads = _params(), _grads(3)
  tx = optim.make_optimizer(config, total_steps=4)
  state = tx.init(params)
  for grads_i, lr in zip(grads, [0.0, 0.5, 1.0]):
    updates, state = tx.update(grads_i, state, params)
    _assert_trees_close(updates, jax.tree.map(lambda g: -lr * g, grads_i))


# Gradient accumulation.


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
def test_accumulation_equals_step_on_mean_gradient(jit):
  kwargs = dict(name="adam", learning_rate=LR, weight_decay=0.1, clip_norm=2.0)
  tx_acc = optim.make_optimizer(
      optim.OptimizerConfig(accumulate_steps=4, **kwargs))
  tx_one = optim.make_optimizer(optim.OptimizerConfig(**kwargs))
  params0, grads = _params(), _grads(8)

  update = jax.jit(tx_acc.update) if jit else tx_acc.update
  state, params = tx_acc.init(params0), params0
  for i, grads_i in enumerate(grads):
    updates, state = update(grads_i, state, params)
    params = optax.apply_updates(params, updates)
    if i % 4 != 3:
      _assert_trees_close(params, params0 if i < 4 else checkpoint, tol=0)
    else:
      checkpoint = params

  mean_grads = [jax.tree.map(lambda *g: sum(g) / 4, *grads[i:i + 4])
                for i in (0, 4)]
  want = _run(tx_one, params0, mean_grads, jit)
  _assert_trees_close(params, want)
  assert not np.allclose(params["dense"]["kernel"],
                         params0["dense"]["kernel"])


@pytest.mark.parametrize("total_steps, lrs", [(8, [1.0, 0.5]),
                                              (9, [1.0, 2 / 3])])
def test_accumulation_divides_total_steps(total_steps, lrs):
  config = optim.OptimizerConfig(name="sgd", learning_rate=1.0,
                                 schedule="linear", accumulate_steps=4)
  tx = optim.make_optimizer(config, total_steps=total_steps)
  params0, grads = _params(), _grads(8)
  state, params = tx.init(params0), params0
  for grads_i in grads:
    updates, state = tx.update(grads_i, state, params)
    params = optax.apply_updates(params, updates)
  want = params0
  for lr, i in zip(lrs, (0, 4)):
    mean = jax.tree.map(lambda *g: sum(g) / 4, *grads[i:i + 4])
    want = jax.tree.map(lambda p, g, lr=lr: p - lr * g, want, mean)
  _assert_trees_close(params, want, tol=1e-5)


# Clipping.


def test_clip_norm_bounds_update_norm():
  config = optim.OptimizerConfig(name="sgd", learning_rate=LR, clip_norm=0.5)
  tx = optim.make_optimizer(config)
  huge = _grads(1, scale=1e6)[0]
  updates = _first_updates(tx, _params(), huge)
  assert float(optax.tree.norm(updates)) == pytest.approx(LR * 0.5,
                                                            rel=1e-5)
  grads = _grads(1)[0]
  small = jax.tree.map(lambda g: 0.1 * g / optax.tree.norm(grads), grads)
  _assert_trees_close(_first_updates(tx, _params(), small),
                      jax.tree.map(lambda g: -LR * g, small))


# EMA.


def test_ema_update():
  ema = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(4.0)}
  params = {"a": jnp.array([3.0, 2.0]), "b": jnp.array(0.0)}
  got = optim.ema_update(ema, params, 0.9)
  _assert_trees_close(got, {"a": jnp.array([1.2, -1.6]), "b": jnp.array(3.6)})
  got = jax.jit(optim.ema_update)(ema, params, jnp.float32(0.9))
  _assert_trees_close(got, {"a": jnp.array([1.2, -1.6]), "b": jnp.array(3.6)})
  _assert_trees_close(optim.ema_update(ema, params, 1.0), ema, tol=0)
  with pytest.raises(ValueError, match="decay"):
    optim.ema_update(ema, params, 1.5)


# Config validation.


def test_default_config_is_valid_and_list_is_coerced():
  config = optim.OptimizerConfig(step_boundaries=[0.3, 0.6])
  assert config.step_boundaries == (0.3, 0.6)
  hash(config)
  assert optim.OptimizerConfig().name == "adam"


def test_invalid_name_message():
  with pytest.raises(ValueError) as info:
    optim.OptimizerConfig(name="adamx")
  assert str(info.value) == (
      "OptimizerConfig.name must be one of sgd, momentum, nesterov, adagrad, "
      "rmsprop, adam, adamw; got 'adamx'")


_INVALID = [
    ("name", "adamx"), ("learning_rate", -1.0), ("learning_rate", 0.0),
    ("learning_rate", float("nan")), ("learning_rate", "0.1"),
    ("learning_rate", True), ("schedule", "cosine"), ("warmup_steps", -1),
    ("warmup_steps", 1.5), ("final_lr_fraction", -0.1),
    ("final_lr_fraction", 1.5), ("decay_rate", 0.0), ("decay_rate", 1.5),
    ("decay_steps", 0), ("decay_steps", 2.0),
    ("step_boundaries", (0.5, 0.5)), ("step_boundaries", (0.75, 0.5)),
    ("step_boundaries", (0.0, 0.5)), ("step_boundaries", (0.5, 1.0)),
    ("step_boundaries", 0.5), ("step_factor", 0.0), ("momentum", 1.0),
    ("momentum", -0.1), ("b1", 1.0), ("b2", -0.1), ("eps", 0.0),
    ("rmsprop_decay", 1.0), ("weight_decay", -1e-4), ("decay_mask", "bias"),
    ("clip_norm", 0.0), ("clip_norm", -1.0), ("accumulate_steps", 0),
    ("accumulate_steps", 2.0), ("ema_decay", 0.0), ("ema_decay", 1.0),
]


@pytest.mark.parametrize("field, value", _INVALID,
                         ids=[f"{f}={v!r}" for f, v in _INVALID])
def test_invalid_field_raises(field, value):
  with pytest.raises(ValueError,
                     match=re.escape(f"OptimizerConfig.{field} must be")):
    optim.OptimizerConfig(**{field: value})


# The module docstring's example runs.


def test_module_docstring_example():
  doc = optim.__doc__
  code = doc[doc.index("Example::") + len("Example::"):]
  lines = [line[2:] for line in code.splitlines() if line.startswith("  ")
           or not line.strip()]
  namespace = {}
  exec("\n".join(lines), namespace)  # pylint: disable=exec-used
  assert 0 < float(namespace["lr_at_50"]) < 3e-4


def test_ema_decay_warms_up_to_its_target():
  from dlopt.optim import ema_decay_at
  assert float(ema_decay_at(0.999, 0)) == pytest.approx(0.1)
  assert float(ema_decay_at(0.999, 8)) == pytest.approx(0.5)
  assert float(ema_decay_at(0.999, 100_000)) == pytest.approx(0.999)
  assert float(ema_decay_at(0.5, 100)) == 0.5
