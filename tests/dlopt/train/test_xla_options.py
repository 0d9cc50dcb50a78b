"""`step_compiler_options`: conv models get the CPU conv options, others XLA's defaults."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlopt.models import CNN, MLP
from dlopt.train import Objective, create_train_state, make_train_step, step_compiler_options
from dlopt.train.xla_options import CPU_CONV_OPTIONS, uses_primitive

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU options")


def _options(model, x):
  variables = model.init(jax.random.key(0), x)
  return step_compiler_options(model.apply, variables, x, train=False)


def test_conv_model_gets_the_cpu_conv_options():
  assert _options(CNN(features=(4,), dense_width=8), jnp.ones((2, 8, 8, 1))) == CPU_CONV_OPTIONS


def test_dense_model_gets_the_defaults():
  assert _options(MLP(widths=(8,), num_outputs=3), jnp.ones((2, 5))) is None


def test_uses_primitive_looks_inside_nested_jaxprs():
  def inner(x):
    return jax.lax.conv(x, jnp.ones((2, 1, 3, 3)), (1, 1), "SAME")
  nested = jax.make_jaxpr(lambda x: jax.jit(jax.checkpoint(inner))(x))(jnp.ones((1, 1, 5, 5)))
  assert uses_primitive(nested, "conv_general_dilated")
  assert not uses_primitive(jax.make_jaxpr(jnp.sin)(1.0), "conv_general_dilated")


def test_train_step_with_the_options_matches_the_default_step():
  model = CNN(features=(4, 8), dense_width=16, padding="VALID")
  x = jax.random.normal(jax.random.key(0), (8, 12, 12, 1))
  y = jnp.arange(8) % 10
  results = []
  for options in (None, CPU_CONV_OPTIONS):
    state = create_train_state(model, optax.adam(1e-2), x[:1], seed=0)
    step = make_train_step(Objective("cross_entropy"), compiler_options=options)
    for _ in range(3):
      state, metrics = step(state, (x, y))
    results.append((state.params, metrics))
  chex.assert_trees_all_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_docstring_synopsis_runs():
  import doctest
  from dlopt.train import xla_options
  result = doctest.testmod(xla_options, verbose=False)
  assert result.attempted > 0 and result.failed == 0


def test_a_rematerializing_model_keeps_its_barriers_and_so_saves_memory():
  import functools
  from dlopt.models import DecoderLM
  from dlopt.train import train_step
  from dlopt.train.xla_options import CPU_REMAT_OPTIONS, compiler_options_for
  if jax.default_backend() != "cpu":
    pytest.skip("the barrier option is the CPU's")
  tokens = jax.random.randint(jax.random.key(0), (4, 128), 0, 64)
  temp = {}
  for remat in (False, True):
    model = DecoderLM(vocab_size=64, num_layers=3, width=128, num_heads=4, max_len=128,
                      remat=remat)
    state = create_train_state(model, optax.sgd(0.1), tokens, seed=0)
    forward = jax.make_jaxpr(lambda v, x: state.apply_fn(v, x, train=False))(
        {"params": state.params}, tokens)
    options = compiler_options_for(forward)
    assert (options == CPU_REMAT_OPTIONS) == remat
    step = jax.jit(functools.partial(train_step, objective=Objective()),
                   compiler_options=options)
    compiled = step.lower(state, (tokens, tokens)).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temp[True] < 0.7 * temp[False], temp
