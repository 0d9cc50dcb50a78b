"""Tests for dlopt.compress.quantize: per-channel int8 weights and the quantized model."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt import compress
from dlopt.compress import quantize
from dlopt.models import CNN, ResidualCNN

JIT = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


def _check_round_trip(w, q, axis):
  w = np.asarray(w, np.float32)
  moved = np.moveaxis(w, axis, -1)
  amax = np.abs(moved.reshape(-1, moved.shape[-1])).max(axis=0)
  np.testing.assert_allclose(q.scale, amax / 127, rtol=1e-6)
  assert q.values.dtype == jnp.int8 and q.values.shape == w.shape
  assert q.scale.dtype == jnp.float32 and q.scale.shape == (w.shape[axis],)
  assert np.abs(np.asarray(q.values, np.int32)).max() <= 127
  shape = [1] * w.ndim
  shape[axis] = -1
  bound = np.asarray(q.scale).reshape(shape) / 2
  error = np.abs(np.asarray(q.dequantize()) - w)
  assert np.all(error <= bound * (1 + 1e-5) + 1e-30)


def test_docstring_example_runs():
  results = doctest.testmod(quantize, raise_on_error=False)
  assert results.attempted > 0 and results.failed == 0


@JIT
@pytest.mark.parametrize("shape,axis", [((3, 3, 4, 8), -1), ((16, 5), -1),
                                        ((16, 5), 0), ((2, 3, 4), 1)])
def test_round_trip_error_and_scales(shape, axis, use_jit):
  w = 3.0 * jax.random.normal(jax.random.key(0), shape)
  fn = lambda w: compress.quantize_array(w, channel_axis=axis)
  q = jax.jit(fn)(w) if use_jit else fn(w)
  assert q.channel_axis == axis % len(shape)
  _check_round_trip(w, q, axis)
  # The largest |w| of each channel maps to +-127 exactly.
  moved = np.moveaxis(np.asarray(q.values), axis, -1).reshape(-1, shape[axis])
  np.testing.assert_array_equal(np.abs(moved).max(axis=0), 127)


def test_zero_channel_is_safe():
  w = jax.random.normal(jax.random.key(1), (6, 4)).at[:, 2].set(0.0)
  q = compress.quantize_array(w)
  assert float(q.scale[2]) == 0.0
  np.testing.assert_array_equal(q.values[:, 2], 0)
  out = np.asarray(q.dequantize())
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[:, 2], 0.0)
  _check_round_trip(w, q, -1)
  zeros = compress.quantize_array(jnp.zeros((3, 3)))
  np.testing.assert_array_equal(zeros.dequantize(), 0.0)


def _cnn(seed=0):
  model = CNN(num_classes=10, features=(8, 16), dense_width=32)
  x = jax.random.normal(jax.random.key(seed), (8, 16, 16, 1))
  return model, model.init(jax.random.key(seed + 1), x), x


def test_quantize_params_structure_and_dequantize():
  _, variables, _ = _cnn()
  params = variables["params"]
  qparams = compress.quantize_params(params)
  for group in ("Conv_0", "Conv_1", "Dense_0", "Dense_1"):
    q = qparams[group]["kernel"]
    assert isinstance(q, compress.QuantizedArray)
    _check_round_trip(params[group]["kernel"], q, -1)
    np.testing.assert_array_equal(qparams[group]["bias"], params[group]["bias"])
  deq = compress.dequantize_params(qparams)
  assert jax.tree.structure(deq) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(deq), jax.tree.leaves(params)):
    assert a.dtype == jnp.float32 and a.shape == b.shape
  # dequantize_params also works on traced values.
  deq_jit = jax.jit(compress.dequantize_params)(qparams)
  jax.tree.map(np.testing.assert_array_equal, deq_jit, deq)


def test_bytes_about_four_times_smaller():
  _, variables, _ = _cnn()
  params = variables["params"]
  qparams = compress.quantize_params(params)
  for group in ("Conv_0", "Conv_1", "Dense_0", "Dense_1"):
    kernel = params[group]["kernel"]
    q = qparams[group]["kernel"]
    assert compress.param_bytes(kernel) == 4 * kernel.size
    assert q.nbytes == compress.param_bytes(q) == kernel.size + 4 * kernel.shape[-1]
  dense = compress.param_bytes(params["Dense_0"]["kernel"])
  assert dense / compress.param_bytes(qparams["Dense_0"]["kernel"]) > 3.9
  ratio = compress.param_bytes(params) / compress.param_bytes(qparams)
  assert 3.5 < ratio < 4.0
  # ShapeDtypeStructs count too.
  shapes = jax.eval_shape(lambda: params)
  assert compress.param_bytes(shapes) == compress.param_bytes(params)


def test_quantized_apply_close_to_float_model():
  model, variables, x = _cnn()
  qvariables = {**variables, "params": compress.quantize_params(variables["params"])}
  logits = model.apply(variables, x)
  qlogits = compress.quantized_apply(model.apply, qvariables, x, train=False)
  assert qlogits.shape == logits.shape and qlogits.dtype == jnp.float32
  spread = float(jnp.max(jnp.abs(logits)))
  assert float(jnp.max(jnp.abs(qlogits - logits))) < 0.02 * spread + 1e-3
  np.testing.assert_array_equal(jnp.argmax(qlogits, -1), jnp.argmax(logits, -1))
  # Exactly the float model on the dequantized weights.
  deq = {**variables, "params": compress.dequantize_params(qvariables["params"])}
  np.testing.assert_allclose(qlogits, model.apply(deq, x), rtol=1e-5, atol=1e-5)


def test_quantized_apply_batch_norm_model_and_array_kwargs():
  model = ResidualCNN(num_classes=4, stem_features=8, stage_features=(8,),
                      blocks_per_stage=(1,), norm="batch", dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  variables = model.init(jax.random.key(1), x)
  qvariables = {**variables, "params": compress.quantize_params(variables["params"])}
  assert isinstance(qvariables["params"]["stem_conv"]["kernel"], compress.QuantizedArray)
  assert not isinstance(qvariables["params"]["stem_norm"]["scale"], compress.QuantizedArray)
  out = compress.quantized_apply(model.apply, qvariables, x, train=False)
  np.testing.assert_allclose(out, model.apply(variables, x), atol=0.05)
  # A traced RNG key and a static list go through kwargs.
  out, updates = compress.quantized_apply(
      model.apply, qvariables, x, train=True, mutable=["batch_stats"],
      rngs={"dropout": jax.random.key(2)})
  assert out.shape == (4, 4) and "batch_stats" in updates


def test_quantized_apply_compiles_once_per_shape():
  model, variables, x = _cnn(seed=5)
  qvariables = {"params": compress.quantize_params(variables["params"])}
  compress.quantized_apply(model.apply, qvariables, x, train=False)
  before = quantize._apply_dequantized._cache_size()
  for _ in range(3):
    compress.quantized_apply(model.apply, qvariables, x + 1.0, train=False)
  assert quantize._apply_dequantized._cache_size() == before


def test_custom_channel_axis_and_prunable():
  _, variables, _ = _cnn()
  params = variables["params"]
  only_dense = jax.tree.map(lambda _: False, params)
  only_dense["Dense_0"]["kernel"] = True
  qparams = compress.quantize_params(params, channel_axis=0, prunable=only_dense)
  q = qparams["Dense_0"]["kernel"]
  assert q.channel_axis == 0 and q.scale.shape == (params["Dense_0"]["kernel"].shape[0],)
  _check_round_trip(params["Dense_0"]["kernel"], q, 0)
  assert not isinstance(qparams["Conv_0"]["kernel"], compress.QuantizedArray)


def test_bad_arguments_raise():
  _, variables, x = _cnn()
  params = variables["params"]
  with pytest.raises(ValueError, match="channel_axis"):
    compress.quantize_params(params, channel_axis=4)
  with pytest.raises(ValueError, match="channel_axis"):
    compress.quantize_params(params, channel_axis=1.0)
  with pytest.raises(ValueError, match="prunable"):
    compress.quantize_params(params, prunable={"Conv_0": True})
  with pytest.raises(ValueError, match="floating"):
    compress.quantize_array(jnp.ones((2, 2), jnp.int32))
  with pytest.raises(ValueError, match="ndim"):
    compress.quantize_array(jnp.float32(1.0))
  with pytest.raises(ValueError, match="qvariables"):
    compress.quantized_apply(CNN().apply, variables, x, train=False)
