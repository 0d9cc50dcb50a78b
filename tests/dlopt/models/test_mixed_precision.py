"""Mixed precision: every model family computing in bfloat16 on float32 parameters.

For each family: the parameters (and batch-norm statistics) are float32; the matmuls and
convolutions of the forward pass run on bfloat16 operands (read from the jaxpr) and the
layers' outputs are bfloat16 (`capture_intermediates`); the output has the dtype its
docstring names; it is close to the float32 model's on the same parameters and random
inputs; gradients wrt the float32 parameters are float32, finite and nonzero. Then a tiny
bfloat16 MLP trains one epoch with `dlopt.train.fit` and its loss goes down.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from dlopt import models
from dlopt.models.conv import FusedConv

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
# bfloat16 keeps 8 significant bits (relative step 2**-8 = 0.4%); a few layers of it
# stay within a few percent of the largest float32 output (measured: at most 1.7%).
TOLERANCE = 0.05
MATMULS = ("dot_general", "conv_general_dilated")
# The layers whose outputs must be in the computation dtype.
LAYERS = (nn.Dense, nn.DenseGeneral, FusedConv, nn.LayerNorm, nn.BatchNorm, nn.GroupNorm,
          nn.Embed)


def _normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F32)


def _tokens(shape, vocab=20, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


LENGTHS = jnp.array([6, 3])

# name -> (model factory, positional inputs, apply keywords, output dtype, float32
# matmuls): the attention reference (kernels/attention/reference.py) computes its logits,
# softmax and weighted sum in float32 by design, two float32 matmuls per attention layer
# whatever the projections' dtype; every other matmul must read bfloat16.
CASES = {
    "mlp": (functools.partial(models.MLP, widths=(16, 8), num_outputs=5),
            (_normal((4, 3, 4)),), {}, F32, 0),
    "linear": (functools.partial(models.LinearRegression, features=2),
               (_normal((4, 6)),), {}, F32, 0),
    "cnn": (functools.partial(models.CNN, num_classes=3, features=(4, 8), dense_width=8),
            (_normal((2, 8, 8, 3)),), {}, F32, 0),
    "resnet_batch": (functools.partial(models.ResidualCNN, num_classes=3, stem_features=4,
                                       stage_features=(4, 8), blocks_per_stage=(1, 1),
                                       norm="batch"),
                     (_normal((2, 8, 8, 3)),), {"train": True}, F32, 0),
    "resnet_group": (functools.partial(models.ResidualCNN, num_classes=3, stem_features=4,
                                       stage_features=(4, 8), blocks_per_stage=(1, 1),
                                       norm="group", norm_groups=2),
                     (_normal((2, 8, 8, 3)),), {}, F32, 0),
    "resnet_none": (functools.partial(models.ResidualCNN, num_classes=3, stem_features=4,
                                      stage_features=(4, 8), blocks_per_stage=(1, 1),
                                      norm="none"),
                    (_normal((2, 8, 8, 3)),), {}, F32, 0),
    "lstm_classifier": (functools.partial(models.RecurrentClassifier, num_classes=3,
                                          hidden_size=8, num_layers=2, cell="lstm",
                                          bidirectional=True),
                        (_normal((2, 6, 3)), LENGTHS), {}, F32, 0),
    "gru_classifier": (functools.partial(models.RecurrentClassifier, num_classes=3,
                                         hidden_size=8, cell="gru", pooling="mean"),
                       (_normal((2, 6, 3)), LENGTHS), {}, F32, 0),
    # The cells keep their state in param_dtype (Flax's carry init): float32 outputs.
    "gru_stack": (functools.partial(models.RecurrentStack, hidden_size=8, cell="gru"),
                  (_normal((2, 6, 3)),), {}, F32, 0),
    "attention": (functools.partial(models.MultiHeadSelfAttention, num_heads=2,
                                    num_kv_heads=1, causal=True, rope_base=100.0),
                  (_normal((2, 6, 16)),), {"lengths": LENGTHS}, BF16, 2),
    "block": (functools.partial(models.TransformerBlock, num_heads=2, mlp_ratio=2.0),
              (_normal((2, 6, 16)),), {}, BF16, 2),
    "encoder_features": (functools.partial(models.TransformerEncoderClassifier, num_classes=3,
                                           num_layers=2, width=16, num_heads=2, max_len=8),
                         (_normal((2, 6, 5)),), {"lengths": LENGTHS}, F32, 4),
    "encoder_tokens_cls": (functools.partial(models.TransformerEncoderClassifier,
                                             num_classes=3, num_layers=1, width=16,
                                             num_heads=2, max_len=8, pooling="cls",
                                             vocab_size=20),
                           (_tokens((2, 6)),), {}, F32, 2),
    "decoder_tied": (functools.partial(models.DecoderLM, vocab_size=20, num_layers=2,
                                       width=16, num_heads=2, max_len=8),
                     (_tokens((2, 6)),), {}, F32, 4),
    "decoder_rope_untied": (functools.partial(models.DecoderLM, vocab_size=20, num_layers=1,
                                              width=16, num_heads=2, num_kv_heads=1,
                                              max_len=8, rope_base=100.0,
                                              tie_embeddings=False),
                            (_tokens((2, 6)),), {}, F32, 2),
}


def _random_variables(model, *args):
  """Variables shaped like `model.init`'s, every entry random and nonzero (numpy: fast)."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), *args)
  rng = np.random.default_rng(1)
  filled = {}
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    noise = rng.standard_normal(leaf.shape)
    if path[-1] == "kernel":
      value = noise / np.sqrt(max(1, np.prod(leaf.shape[:-1])))  # fan-in scaled
    elif path[-1] in ("scale", "var"):
      value = 1.0 + 0.2 * np.abs(noise)
    elif path[-1] in ("embedding", "pos_embed", "cls"):
      value = 0.5 * noise
    else:
      value = 0.1 * noise
    filled[path] = jnp.asarray(value, leaf.dtype)
  return traverse_util.unflatten_dict(filled)


def _mutable(variables):
  return ("batch_stats",) if "batch_stats" in variables else False


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _apply(model, mutable, train, variables, args, kwargs):
  """`model.apply` under one jit; returns (output, updated collections or {})."""
  out = model.apply(variables, *args, train=train, mutable=mutable, **kwargs)
  return out if mutable else (out, {})


def _matmul_dtypes(jaxpr):
  """(primitive, operand dtypes) of every matmul and convolution, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in MATMULS:
      found.append((eqn.primitive.name, tuple(v.aval.dtype for v in eqn.invars)))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found += _matmul_dtypes(inner)
  return found


def _dtypes(tree):
  return {leaf.dtype for leaf in jax.tree.leaves(tree)}


@functools.cache
def _setup(name):
  factory, args, kwargs, _, _ = CASES[name]
  f32_model, bf16_model = factory(), factory(dtype=BF16)
  variables = _random_variables(f32_model, *args)
  kwargs = dict(kwargs)
  return f32_model, bf16_model, variables, args, kwargs.pop("train", False), kwargs


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_compute_on_float32_params(name):
  f32_model, bf16_model, variables, args, train, kwargs = _setup(name)
  out_dtype, f32_matmuls = CASES[name][3:]
  # The computation dtype changes no parameter: same tree, shapes and float32 dtype.
  assert (jax.tree.map(jnp.shape, jax.eval_shape(bf16_model.init, jax.random.key(0), *args))
          == jax.tree.map(jnp.shape, variables))
  assert _dtypes(jax.eval_shape(bf16_model.init, jax.random.key(0), *args)) == {F32}

  mutable = _mutable(variables)
  out, updates = _apply(bf16_model, mutable, train, variables, args, kwargs)
  reference, _ = _apply(f32_model, mutable, train, variables, args, kwargs)
  assert out.dtype == out_dtype and reference.dtype == F32
  assert _dtypes(updates) <= {F32}  # batch-norm statistics stay float32
  scale = float(jnp.max(jnp.abs(reference)))
  assert scale > 0
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(reference),
                             atol=TOLERANCE * scale, rtol=TOLERANCE)

  forward = jax.make_jaxpr(
      lambda v: bf16_model.apply(v, *args, train=train, mutable=mutable, **kwargs))(variables)
  matmuls = _matmul_dtypes(forward.jaxpr)
  bf16 = [m for m in matmuls if set(m[1]) == {BF16}]
  f32 = [m for m in matmuls if set(m[1]) == {F32}]
  assert bf16 and len(bf16) + len(f32) == len(matmuls), matmuls
  assert len(f32) == f32_matmuls, matmuls


@pytest.mark.parametrize("name", [n for n in CASES if "lstm" not in n and "gru" not in n])
def test_every_layer_outputs_the_computation_dtype(name):
  # Flax's RNN scan does not carry the intermediates collection out; the jaxpr test above
  # covers the cells' matmuls.
  _, bf16_model, variables, args, train, kwargs = _setup(name)
  mutable = ["intermediates", *(_mutable(variables) or ())]
  _, state = bf16_model.apply(variables, *args, train=train, mutable=mutable,
                              capture_intermediates=lambda m, _: isinstance(m, LAYERS),
                              **kwargs)
  captured = {path: outputs for path, outputs in
              traverse_util.flatten_dict(state["intermediates"]).items()
              if path[-1] == "__call__"}  # not `setup`
  assert captured
  for path, outputs in captured.items():
    assert {o.dtype for o in jax.tree.leaves(outputs)} == {BF16}, path


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_wrt_float32_params_are_float32_and_finite(name):
  _, bf16_model, variables, args, train, kwargs = _setup(name)
  mutable = _mutable(variables)

  def loss(params):
    out, _ = _apply(bf16_model, mutable, train, {**variables, "params": params}, args,
                    kwargs)
    return jnp.mean(jnp.square(out.astype(F32)))

  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert _dtypes(grads) == {F32}
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("field, value", [("dtype", jnp.int32), ("dtype", "bogus"),
                                          ("param_dtype", None), ("param_dtype", "int8")])
def test_a_non_floating_dtype_is_rejected_naming_the_field(field, value):
  with pytest.raises(ValueError, match=f"{field} must be"):
    models.MLP(**{field: value})
  with pytest.raises(ValueError, match=f"{field} must be"):
    models.DecoderLM(vocab_size=5, **{field: value})


def test_dtype_fields_are_stored_as_numpy_dtypes():
  # One value, hash and repr (config.json) whether given as a name, a type or a dtype.
  by_name, by_type = models.CNN(dtype="bfloat16"), models.CNN(dtype=jnp.bfloat16)
  assert by_name == by_type and hash(by_name) == hash(by_type)
  assert by_name.dtype == BF16 and type(by_name.dtype) is type(BF16)
  assert repr(models.DecoderLM(vocab_size=5).param_dtype) == "dtype('float32')"
  assert models.MLP().dtype is None


@pytest.mark.slow
def test_a_bfloat16_mlp_trains_one_epoch_with_fit():
  from dlopt.data import load_digits
  from dlopt.optim import OptimizerConfig
  from dlopt.train import FitConfig, create_train_state, fit

  x, y = load_digits()
  model = models.MLP(widths=(32,), num_outputs=10, dtype=BF16)
  config = FitConfig(epochs=1, progress=False, plot=False)
  start = create_train_state(model, optax.adam(3e-3), x, seed=config.seed)

  def loss(params):
    logits = model.apply({"params": params}, x)
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())

  result = fit(model, (x, y), optimizer=OptimizerConfig("adam", 3e-3), config=config)
  assert _dtypes(result.state.params) == {F32}  # float32 master weights
  assert np.isfinite(result.history[-1]["train_loss"])
  assert loss(result.state.params) < 0.85 * loss(start.params)
