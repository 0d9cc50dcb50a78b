"""Tests for dlopt.losses against NumPy references and scikit-learn."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from dlopt import losses

BATCH, CLASSES = 16, 5
JIT = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


def _maybe_jit(fn, use_jit, **kwargs):
  fn = functools.partial(fn, **kwargs) if kwargs else fn
  return jax.jit(fn) if use_jit else fn


def _np_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _np_cross_entropy(logits, targets):
  return -(np.asarray(targets, np.float64) * _np_log_softmax(logits)).sum(-1)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def data(rng):
  logits = rng.normal(size=(BATCH, CLASSES)).astype(np.float32) * 3
  labels = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
  weights = (rng.random(BATCH) > 0.3).astype(np.float32)
  weights[0] = 1.0
  return logits, labels, weights


def test_module_docstring_example_runs():
  results = doctest.testmod(losses, raise_on_error=False)
  assert results.attempted > 0 and results.failed == 0


# ---------------------------------------------------------------------------
# mse


@JIT
@pytest.mark.parametrize("shape", [(BATCH,), (BATCH, 1), (BATCH, 3, 4)])
def test_mse_matches_numpy(rng, use_jit, shape):
  predictions = rng.normal(size=shape).astype(np.float32)
  targets = rng.normal(size=shape).astype(np.float32)
  per_example = ((predictions - targets) ** 2).reshape(shape[0], -1).mean(1)
  np.testing.assert_allclose(
      _maybe_jit(losses.per_example_mse, use_jit)(predictions, targets),
      per_example, rtol=1e-6)
  out = _maybe_jit(losses.mse, use_jit)(predictions, targets)
  assert out.shape == () and out.dtype == jnp.float32
  np.testing.assert_allclose(out, per_example.mean(), rtol=1e-6)
  np.testing.assert_allclose(
      out, skm.mean_squared_error(targets.reshape(shape[0], -1),
                                  predictions.reshape(shape[0], -1)),
      rtol=1e-5)


@JIT
def test_mse_accepts_flat_targets_for_column_predictions(rng, use_jit):
  predictions = rng.normal(size=(BATCH, 1)).astype(np.float32)
  targets = rng.normal(size=(BATCH,)).astype(np.float32)
  fn = _maybe_jit(losses.mse, use_jit)
  np.testing.assert_allclose(
      fn(predictions, targets), fn(predictions, targets[:, None]), rtol=1e-7)
  np.testing.assert_allclose(
      fn(predictions, targets), ((predictions[:, 0] - targets) ** 2).mean(),
      rtol=1e-6)


@JIT
def test_mse_weights_zero_equals_dropping(rng, data, use_jit):
  _, _, weights = data
  predictions = rng.normal(size=(BATCH, 3)).astype(np.float32)
  targets = rng.normal(size=(BATCH, 3)).astype(np.float32)
  keep = weights > 0
  fn = _maybe_jit(losses.mse, use_jit)
  np.testing.assert_allclose(
      fn(predictions, targets, weights),
      fn(predictions[keep], targets[keep]), rtol=1e-6)
  real_weights = rng.random(BATCH).astype(np.float32)
  per_example = ((predictions - targets) ** 2).mean(1)
  np.testing.assert_allclose(
      fn(predictions, targets, real_weights),
      np.average(per_example, weights=real_weights), rtol=1e-5)
  assert float(fn(predictions, targets, np.zeros(BATCH, np.float32))) == 0.0


@pytest.mark.parametrize(
    "predictions_shape, targets_shape, weights_shape, name",
    [
        ((BATCH, 2), (BATCH,), None, "targets.shape"),
        ((BATCH, 1), (BATCH + 1,), None, "targets.shape"),
        ((BATCH, 4), (4, BATCH), None, "targets.shape"),
        ((), (), None, "predictions.shape"),
        ((BATCH, 1), (BATCH, 1), (BATCH, 1), "weights"),
    ],
)
def test_mse_rejects_bad_shapes(predictions_shape, targets_shape,
                                weights_shape, name):
  weights = None if weights_shape is None else np.ones(weights_shape)
  with pytest.raises(ValueError, match=name) as info:
    losses.mse(np.ones(predictions_shape, np.float32),
               np.ones(targets_shape, np.float32), weights)
  assert str(predictions_shape if name != "weights" else weights_shape) in str(
      info.value)


# ---------------------------------------------------------------------------
# cross_entropy


@JIT
def test_cross_entropy_matches_numpy_and_sklearn(data, use_jit):
  logits, labels, weights = data
  one_hot = np.eye(CLASSES)[labels]
  expected = _np_cross_entropy(logits, one_hot)
  np.testing.assert_allclose(
      _maybe_jit(losses.per_example_cross_entropy, use_jit)(logits, labels),
      expected, rtol=1e-5)
  fn = _maybe_jit(losses.cross_entropy, use_jit)
  out = fn(logits, labels)
  assert out.shape == () and out.dtype == jnp.float32
  probabilities = np.exp(_np_log_softmax(logits))
  np.testing.assert_allclose(
      out, skm.log_loss(labels, probabilities, labels=range(CLASSES)),
      rtol=1e-5)
  np.testing.assert_allclose(
      fn(logits, labels, weights=weights),
      skm.log_loss(labels, probabilities, labels=range(CLASSES),
                   sample_weight=weights),
      rtol=1e-5)


@JIT
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.4])
def test_cross_entropy_integer_and_one_hot_labels_agree(
    data, use_jit, label_smoothing):
  logits, labels, weights = data
  fn = _maybe_jit(losses.cross_entropy, use_jit,
                  label_smoothing=label_smoothing)
  one_hot = jax.nn.one_hot(labels, CLASSES)
  np.testing.assert_allclose(
      fn(logits, labels, weights=weights),
      fn(logits, one_hot, weights=weights), rtol=1e-6)


@JIT
@pytest.mark.parametrize("label_smoothing", [0.1, 0.25])
def test_cross_entropy_label_smoothing_formula(data, use_jit, label_smoothing):
  logits, labels, _ = data
  log_p = _np_log_softmax(logits)
  # (1 - a) * CE(one_hot) + a * mean over classes of -log p.
  expected = ((1 - label_smoothing) * -log_p[np.arange(BATCH), labels]
              + label_smoothing * -log_p.mean(-1))
  fn = _maybe_jit(losses.per_example_cross_entropy, use_jit,
                  label_smoothing=label_smoothing)
  np.testing.assert_allclose(fn(logits, labels), expected, rtol=1e-5)
  soft = np.random.default_rng(1).dirichlet(np.ones(CLASSES), size=BATCH)
  smoothed = (1 - label_smoothing) * soft + label_smoothing / CLASSES
  np.testing.assert_allclose(
      fn(logits, soft.astype(np.float32)),
      _np_cross_entropy(logits, smoothed), rtol=1e-5)


@JIT
def test_cross_entropy_probability_labels(data, use_jit):
  logits, _, _ = data
  soft = np.random.default_rng(2).dirichlet(np.ones(CLASSES), size=BATCH)
  np.testing.assert_allclose(
      _maybe_jit(losses.cross_entropy, use_jit)(logits,
                                                soft.astype(np.float32)),
      _np_cross_entropy(logits, soft).mean(), rtol=1e-5)


@JIT
def test_cross_entropy_weights_zero_equals_dropping(data, use_jit):
  logits, labels, weights = data
  keep = weights > 0
  fn = _maybe_jit(losses.cross_entropy, use_jit, label_smoothing=0.1)
  np.testing.assert_allclose(
      fn(logits, labels, weights=weights),
      fn(logits[keep], labels[keep]), rtol=1e-6)
  assert float(fn(logits, labels, weights=np.zeros(BATCH))) == 0.0


@JIT
def test_cross_entropy_sequence_labels(rng, use_jit):
  logits = rng.normal(size=(4, 6, CLASSES)).astype(np.float32)
  labels = rng.integers(0, CLASSES, size=(4, 6))
  fn = _maybe_jit(losses.cross_entropy, use_jit)
  np.testing.assert_allclose(
      fn(logits, labels),
      fn(logits.reshape(-1, CLASSES), labels.reshape(-1)), rtol=1e-6)


@JIT
def test_cross_entropy_bf16_logits_computed_in_float32(data, use_jit):
  logits, labels, _ = data
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  out = _maybe_jit(losses.cross_entropy, use_jit, label_smoothing=0.1)(
      logits_bf16, labels)
  assert out.dtype == jnp.float32
  rounded = np.asarray(logits_bf16.astype(jnp.float32))
  smoothed = 0.9 * np.eye(CLASSES)[labels] + 0.1 / CLASSES
  # Exact in float32 on the bf16-rounded inputs ...
  np.testing.assert_allclose(
      out, _np_cross_entropy(rounded, smoothed).mean(), rtol=1e-5)
  # ... and within bf16 rounding of the float32 logits.
  np.testing.assert_allclose(
      out, _np_cross_entropy(logits, smoothed).mean(), rtol=2e-2)


def test_cross_entropy_gradient_is_softmax_minus_targets(data):
  logits, labels, _ = data
  grad = jax.grad(losses.cross_entropy)(jnp.asarray(logits), labels)
  expected = (np.exp(_np_log_softmax(logits)) - np.eye(CLASSES)[labels]) / BATCH
  np.testing.assert_allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize(
    "logits_shape, labels, kwargs, name",
    [
        ((BATCH,), np.zeros(BATCH, np.int32), {}, "logits"),
        ((BATCH, CLASSES), np.zeros(BATCH + 1, np.int32), {}, "labels"),
        ((BATCH, CLASSES), np.zeros((BATCH, CLASSES + 1)), {}, "labels"),
        ((BATCH, CLASSES), np.zeros((BATCH, CLASSES, 1)), {}, "labels"),
        ((BATCH, CLASSES), np.zeros(BATCH, np.float32), {}, "labels.dtype"),
        ((BATCH, CLASSES), np.zeros(BATCH, np.int32),
         {"label_smoothing": -0.1}, "label_smoothing"),
        ((BATCH, CLASSES), np.zeros(BATCH, np.int32),
         {"label_smoothing": 1.0}, "label_smoothing"),
        ((BATCH, CLASSES), np.zeros(BATCH, np.int32),
         {"weights": np.ones((BATCH, 1))}, "weights"),
    ],
)
def test_cross_entropy_rejects_bad_inputs(logits_shape, labels, kwargs, name):
  with pytest.raises(ValueError, match=name):
    losses.cross_entropy(np.ones(logits_shape, np.float32), labels, **kwargs)


def test_cross_entropy_error_names_shapes():
  with pytest.raises(ValueError) as info:
    losses.cross_entropy(np.ones((4, 3), np.float32), np.ones((4, 2)))
  assert "(4, 3)" in str(info.value) and "(4, 2)" in str(info.value)


def test_cross_entropy_rejects_traced_label_smoothing(data):
  logits, labels, _ = data
  with pytest.raises(ValueError, match="label_smoothing"):
    jax.jit(lambda a: losses.cross_entropy(logits, labels, label_smoothing=a))(
        0.1)


# ---------------------------------------------------------------------------
# distillation_loss


@JIT
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_matches_numpy(rng, data, use_jit, temperature):
  student, _, weights = data
  teacher = rng.normal(size=student.shape).astype(np.float32) * 2
  log_s = _np_log_softmax(student / temperature)
  log_t = _np_log_softmax(teacher / temperature)
  expected = temperature**2 * (np.exp(log_t) * (log_t - log_s)).sum(-1)
  fn = _maybe_jit(losses.distillation_loss, use_jit, temperature=temperature)
  np.testing.assert_allclose(
      fn(student, teacher), expected.mean(), rtol=1e-4)
  np.testing.assert_allclose(
      fn(student, teacher, weights=weights),
      np.average(expected, weights=weights), rtol=1e-4)
  np.testing.assert_allclose(fn(student, student), 0.0, atol=1e-6)


def test_distillation_loss_rejects_bad_inputs(data):
  logits, _, _ = data
  with pytest.raises(ValueError, match="teacher_logits.shape"):
    losses.distillation_loss(logits, logits[:, :-1])
  with pytest.raises(ValueError, match="temperature"):
    losses.distillation_loss(logits, logits, temperature=0.0)


# ---------------------------------------------------------------------------
# l1_penalty, l2_penalty


@pytest.fixture
def params(rng):
  return {
      "dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
                "bias": rng.normal(size=(4,)).astype(np.float32)},
      "norm": {"scale": rng.normal(size=(4,)).astype(np.float32)},
  }


def _np_leaves(params, mask=None):
  leaves = jax.tree.leaves(params)
  if mask is None:
    return leaves
  return [x for x, m in zip(leaves, jax.tree.leaves(mask)) if m]


@JIT
def test_penalties_match_numpy(params, use_jit):
  leaves = _np_leaves(params)
  l1 = _maybe_jit(losses.l1_penalty, use_jit)(params)
  l2 = _maybe_jit(losses.l2_penalty, use_jit)(params)
  assert l1.dtype == jnp.float32 and l2.dtype == jnp.float32
  np.testing.assert_allclose(l1, sum(np.abs(x).sum() for x in leaves),
                             rtol=1e-6)
  np.testing.assert_allclose(l2, 0.5 * sum((x**2).sum() for x in leaves),
                             rtol=1e-6)


@JIT
def test_penalties_skip_masked_leaves(params, use_jit):
  mask = {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}
  kept = params["dense"]["kernel"]
  l1 = _maybe_jit(losses.l1_penalty, use_jit, mask=mask)(params)
  l2 = _maybe_jit(losses.l2_penalty, use_jit, mask=mask)(params)
  np.testing.assert_allclose(l1, np.abs(kept).sum(), rtol=1e-6)
  np.testing.assert_allclose(l2, 0.5 * (kept**2).sum(), rtol=1e-6)
  prefix = {"dense": True, "norm": False}
  dense = _np_leaves(params["dense"])
  np.testing.assert_allclose(
      losses.l1_penalty(params, prefix), sum(np.abs(x).sum() for x in dense),
      rtol=1e-6)
  by_rank = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  np.testing.assert_allclose(losses.l2_penalty(params, by_rank), l2, rtol=1e-6)
  nothing = jax.tree.map(lambda _: False, params)
  assert float(losses.l1_penalty(params, nothing)) == 0.0


def test_penalties_accept_traced_mask(params):
  mask = {"dense": {"kernel": True, "bias": False}, "norm": {"scale": True}}
  traced = jax.jit(losses.l2_penalty)(params, jax.tree.map(jnp.asarray, mask))
  np.testing.assert_allclose(traced, losses.l2_penalty(params, mask), rtol=1e-6)


def test_l2_penalty_gradient_is_params(params):
  grads = jax.grad(losses.l2_penalty)(params)
  jax.tree.map(lambda g, p: np.testing.assert_allclose(g, p, rtol=1e-6),
               grads, params)


def test_penalties_bf16_params_accumulate_in_float32(params):
  params_bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  rounded = jax.tree.map(lambda x: np.asarray(x, np.float32), params_bf16)
  out = losses.l2_penalty(params_bf16)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, losses.l2_penalty(rounded), rtol=1e-6)
