"""`remat=True` (`nn.remat` per block) changes memory, not results: on ResidualCNN and the
transformer models the variables are the same tree with the same initial values, and the
outputs, updated batch statistics and gradients match `remat=False` on random inputs (with
dropout on, the same keys drop the same units); the gradient's jaxpr holds the remat.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt import models


def _normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 20, shape), jnp.int32)


# name -> (model factory, input, apply keywords besides train)
CASES = {
    "resnet_batch": (functools.partial(models.ResidualCNN, num_classes=3, stem_features=4,
                                       stage_features=(4, 8), blocks_per_stage=(2, 1),
                                       norm="batch", dropout_rate=0.3),
                     _normal((2, 8, 8, 3)), {}),
    "resnet_none_bf16": (functools.partial(models.ResidualCNN, num_classes=3, stem_features=4,
                                           stage_features=(4,), blocks_per_stage=(2,),
                                           norm="none", dtype=jnp.bfloat16),
                         _normal((2, 8, 8, 3)), {}),
    "encoder": (functools.partial(models.TransformerEncoderClassifier, num_classes=3,
                                  num_layers=2, width=16, num_heads=2, max_len=8,
                                  dropout_rate=0.2),
                _normal((2, 6, 5)), {"lengths": jnp.array([6, 3])}),
    "decoder": (functools.partial(models.DecoderLM, vocab_size=20, num_layers=2, width=16,
                                  num_heads=2, max_len=8, dropout_rate=0.2, rope_base=100.0),
                _tokens((2, 6)), {"segment_ids": jnp.array([[1, 1, 1, 2, 2, 2]] * 2)}),
}


@functools.cache
def _setup(name):
  factory, x, kwargs = CASES[name]
  plain, remat = factory(), factory(remat=True)
  return plain, remat, jax.jit(plain.init)(jax.random.key(0), x), x, kwargs


def _loss_and_grads(model, variables, x, kwargs):
  """Jitted training-mode loss, its gradients wrt the params, and the updated state."""
  mutable = [name for name in variables if name != "params"]

  def loss(params):
    out = model.apply({**variables, "params": params}, x, train=True, mutable=mutable,
                      rngs={"dropout": jax.random.key(7)}, **kwargs)
    out, updates = out  # a list `mutable`, even empty, returns the pair
    return jnp.mean(jnp.square(out.astype(jnp.float32))), (out, updates)

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])


@pytest.mark.parametrize("name", list(CASES))
def test_remat_keeps_the_variables_outputs_and_gradients(name):
  plain, remat, variables, x, kwargs = _setup(name)
  remat_variables = jax.jit(remat.init)(jax.random.key(0), x)
  assert jax.tree.structure(remat_variables) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, remat_variables, variables)

  (loss, (out, updates)), grads = _loss_and_grads(plain, variables, x, kwargs)
  (r_loss, (r_out, r_updates)), r_grads = _loss_and_grads(remat, variables, x, kwargs)
  assert r_out.dtype == out.dtype and float(loss) > 0
  tight = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
  tight(np.asarray(r_out, np.float32), np.asarray(out, np.float32))
  jax.tree.map(tight, r_updates, updates)
  jax.tree.map(lambda a, b: tight(np.asarray(a), np.asarray(b)), r_grads, grads)
  assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))

  # Inference (train=False, the static argument of the remat) agrees too.
  infer = jax.jit(lambda m, v: m.apply(v, x, **kwargs), static_argnums=0)
  tight(np.asarray(infer(remat, variables), np.float32),
        np.asarray(infer(plain, variables), np.float32))


@pytest.mark.parametrize("name", ["resnet_batch", "decoder"])
def test_the_gradient_recomputes_each_block(name):
  plain, remat, variables, x, kwargs = _setup(name)

  def primitives(model):
    mutable = [n for n in variables if n != "params"]
    grad = jax.grad(lambda p: jnp.sum(jax.tree.leaves(model.apply(
        {**variables, "params": p}, x, train=True, mutable=mutable,
        rngs={"dropout": jax.random.key(7)}, **kwargs))[0].astype(jnp.float32)))
    jaxpr = jax.make_jaxpr(grad)(variables["params"]).jaxpr
    return [eqn.primitive.name for eqn in jaxpr.eqns]

  blocks = sum(1 for key in variables["params"] if "block" in key)
  assert primitives(remat).count("remat2") == blocks and "remat2" not in primitives(plain)


def test_remat_must_be_a_bool():
  with pytest.raises(ValueError, match="remat must be a bool"):
    models.ResidualCNN(remat="yes")
  with pytest.raises(ValueError, match="remat must be a bool"):
    models.DecoderLM(vocab_size=5, remat=1)
