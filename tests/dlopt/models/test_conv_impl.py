"""FusedConv and the CNNs' `conv_impl`: every impl computes the same model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt.models import CNN, ResidualCNN
from dlopt.models.conv import FusedConv


def test_fused_conv_matches_flax_conv():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  ours = FusedConv(5, (3, 3), strides=2, activation="relu", impl="xla_implicit_gemm")
  theirs = nn.Conv(5, (3, 3), strides=2, padding="SAME")
  variables = theirs.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
      jnp.shape, variables)
  np.testing.assert_allclose(np.asarray(ours.apply(variables, x)),
                             np.asarray(nn.relu(theirs.apply(variables, x))), atol=1e-5)


def test_fused_conv_promotes_dtypes():
  x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  layer = FusedConv(3, (3, 3), impl="xla")
  variables = layer.init(jax.random.key(0), x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  assert layer.apply(variables, x).dtype == jnp.float32
  assert FusedConv(3, (3, 3), dtype=jnp.bfloat16).apply(variables, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("make", [
    lambda impl: CNN(features=(4, 8), dense_width=16, conv_impl=impl),
    lambda impl: ResidualCNN(stem_features=8, stage_features=(8, 16), norm="batch",
                             conv_impl=impl),
    lambda impl: ResidualCNN(stem_features=8, stage_features=(8, 16), norm="none",
                             conv_impl=impl),
])
def test_conv_impls_agree_forward_and_grads(make):
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 1))
  variables = make("xla").init(jax.random.key(1), x)
  # conv2 starts at zero with norm="none"; perturb every parameter so all paths matter.
  leaves, tree = jax.tree.flatten(variables["params"])
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  variables = {**variables, "params": params}

  def loss(params, impl):
    out = make(impl).apply({**variables, "params": params}, x, train=True,
                           mutable=["batch_stats"])[0]
    return jnp.sum(jnp.sin(out))

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  want_value, want_grads = value_and_grad(params, "xla")
  for impl in ("xla_implicit_gemm", "pallas"):
    value, grads = value_and_grad(params, impl)
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-4, atol=1e-4)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-4)


def test_residual_block_without_norm_starts_as_its_shortcut():
  model = ResidualCNN(stem_features=4, stage_features=(4,), blocks_per_stage=(1,),
                      norm="none")
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 1))
  variables = model.init(jax.random.key(1), x)
  assert "batch_stats" not in variables
  block = variables["params"]["stage0_block0"]
  assert not np.any(np.asarray(block["conv2"]["kernel"]))
  assert set(block) == {"conv1", "conv2"}


@pytest.mark.parametrize("make", [lambda: CNN(conv_impl="cudnn"),
                                  lambda: ResidualCNN(conv_impl="fast"),
                                  lambda: FusedConv(4, impl="nope"),
                                  lambda: FusedConv(4, activation="tanh")])
def test_bad_conv_options_raise(make):
  with pytest.raises(ValueError, match=r"conv_impl must be one of|activation must be one of"):
    make()


def test_auto_compiles_to_the_xla_program_on_cpu():
  """On the CPU `conv_impl="auto"` is the measured-fastest path for the MNIST CNN: the
  reference itself, so the training step cannot be slower than with `conv_impl="xla"`."""
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU choice of auto")
  x = jnp.ones((4, 28, 28, 1))

  def hlo(impl):
    model = CNN(features=(32, 64), conv_impl=impl)
    variables = model.init(jax.random.key(0), x)
    grad = jax.grad(lambda v: jnp.sum(model.apply(v, x)))
    return jax.jit(grad).lower(variables).as_text()

  assert hlo("auto") == hlo("xla")
