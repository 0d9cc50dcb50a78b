"""`max_pool` and `FusedConv(pool=...)`: the same values and gradients as the plain layers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt.models import CNN
from dlopt.models.conv import FusedConv
from dlopt.models.pooling import max_pool


@pytest.mark.parametrize("shape, window", [((2, 8, 8, 3), 2), ((3, 7, 9, 2), 2),
                                           ((1, 9, 9, 4), 3), ((2, 5, 4, 1), 1)])
def test_max_pool_matches_flax_values_and_grads(shape, window):
  x = jax.random.normal(jax.random.key(0), shape)  # continuous: no ties
  want = nn.max_pool(x, (window, window), strides=(window, window))
  np.testing.assert_array_equal(np.asarray(max_pool(x, window)), np.asarray(want))
  weights = jax.random.normal(jax.random.key(1), want.shape)
  grad = jax.grad(lambda x: jnp.sum(max_pool(x, window) * weights))(x)
  want_grad = jax.grad(
      lambda x: jnp.sum(nn.max_pool(x, (window, window), strides=(window, window)) * weights))(x)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=0, atol=0)


def test_max_pool_splits_the_gradient_among_ties():
  x = jnp.zeros((1, 2, 2, 1))
  grad = jax.grad(lambda x: max_pool(x, 2).sum())(x)
  np.testing.assert_allclose(np.asarray(grad), np.full((1, 2, 2, 1), 0.25))


@pytest.mark.parametrize("x, window, match", [
    (jnp.ones((2, 4, 4)), 2, "x.shape=\\(2, 4, 4\\)"),
    (jnp.ones((1, 4, 4, 1)), 0, "window=0"),
    (jnp.ones((1, 4, 4, 1)), 2.0, "window=2.0"),
    (jnp.ones((1, 3, 8, 1)), 4, "does not fit"),
])
def test_max_pool_rejects_bad_input(x, window, match):
  with pytest.raises(ValueError, match=match):
    max_pool(x, window)


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "silu"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_conv_pool_matches_pooling_the_activated_output(activation, with_residual):
  x = jax.random.normal(jax.random.key(0), (2, 11, 11, 3))
  pooled = FusedConv(4, (3, 3), padding="VALID", activation=activation, pool=2)
  plain = FusedConv(4, (3, 3), padding="VALID", activation=activation)
  variables = plain.init(jax.random.key(1), x)
  # A non-zero bias, so that moving it past the pool is exercised.
  variables = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape),
                           variables)
  residual = (jax.random.normal(jax.random.key(3), (2, 9, 9, 4)) if with_residual else None)

  def loss(variables, x, layer, pool):
    y = layer.apply(variables, x, residual)
    y = max_pool(y, 2) if pool else y
    return jnp.sum(jnp.sin(y)), y

  (got, y), got_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables, x, pooled, False)
  (want, y_want), want_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables, x, plain, True)
  assert y.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_want), rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_fused_conv_rejects_bad_pool():
  with pytest.raises(ValueError, match="pool must be None or an int >= 1; got pool=-2"):
    FusedConv(4, pool=-2)


def test_cnn_valid_padding_is_the_keras_network():
  model = CNN(num_classes=10, features=(32, 64), dense_width=64, padding="VALID")
  variables = model.init(jax.random.key(0), jnp.ones((1, 28, 28, 1)))
  shapes = jax.tree.map(jnp.shape, variables["params"])
  # 28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5: the head reads 5 * 5 * 64 features.
  assert shapes["Dense_0"]["kernel"] == (1600, 64)
  assert shapes["Conv_1"]["kernel"] == (3, 3, 32, 64)
  assert model.apply(variables, jnp.ones((3, 28, 28, 1))).shape == (3, 10)


def test_cnn_rejects_unknown_padding():
  with pytest.raises(ValueError, match="padding must be one of \\('SAME', 'VALID'\\); got "
                                       "padding='same'"):
    CNN(padding="same")


def test_docstring_synopsis_runs():
  import doctest
  from dlopt.models import pooling
  result = doctest.testmod(pooling, verbose=False)
  assert result.attempted > 0 and result.failed == 0
