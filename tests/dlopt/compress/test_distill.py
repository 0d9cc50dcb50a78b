"""Tests for dlopt.compress.distill: precomputed teacher logits and the mixed loss."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt import compress
from dlopt.compress import distill
from dlopt.models import CNN, ResidualCNN
from dlopt.train.objective import Objective

BATCH, CLASSES = 12, 5
JIT = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  student = (2 * rng.normal(size=(BATCH, CLASSES))).astype(np.float32)
  teacher = (3 * rng.normal(size=(BATCH, CLASSES))).astype(np.float32)
  labels = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
  return student, labels, teacher


def test_docstring_example_runs():
  results = doctest.testmod(distill, raise_on_error=False)
  assert results.attempted > 0 and results.failed == 0


@pytest.mark.parametrize("batch_size", [1, 4, 7, 12, 512])
def test_teacher_logits_batching_equals_one_shot(batch_size):
  model = ResidualCNN(num_classes=CLASSES, stem_features=4, stage_features=(4,),
                      blocks_per_stage=(1,), norm="batch", dropout_rate=0.5)
  x = np.asarray(jax.random.normal(jax.random.key(0), (BATCH, 8, 8, 1)))
  variables = model.init(jax.random.key(1), x)
  # Non-trivial running statistics, so that eval mode matters.
  variables = {**variables, "batch_stats": jax.tree.map(
      lambda s: s + 0.3, variables["batch_stats"])}
  got = compress.teacher_logits(model.apply, variables, x, batch_size=batch_size)
  want = model.apply(variables, x, train=False)
  assert isinstance(got, np.ndarray) and got.dtype == np.float32
  assert got.shape == (BATCH, CLASSES)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  jax_input = compress.teacher_logits(model.apply, variables, jnp.asarray(x),
                                      batch_size=batch_size)
  np.testing.assert_allclose(jax_input, got, rtol=1e-6, atol=1e-6)


@JIT
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_matches_hand_computation(data, temperature, alpha, use_jit):
  student, labels, teacher = data
  fn = lambda s, y, t: compress.distillation_objective_loss(
      s, y, t, temperature=temperature, alpha=alpha)
  got = (jax.jit(fn) if use_jit else fn)(student, labels, teacher)
  assert got.shape == () and got.dtype == jnp.float32
  ce = -_np_log_softmax(student)[np.arange(BATCH), labels]
  log_p = _np_log_softmax(teacher / temperature)
  log_q = _np_log_softmax(student / temperature)
  kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
  want = np.mean(alpha * temperature**2 * kl + (1 - alpha) * ce)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  if alpha == 0.0:
    np.testing.assert_allclose(got, np.mean(ce), rtol=1e-5)
  if alpha == 1.0:
    np.testing.assert_allclose(got, temperature**2 * np.mean(kl), rtol=1e-5)


def test_matches_fit_objective_and_weights(data):
  student, labels, teacher = data
  weights = np.array([1.0, 0.0] * (BATCH // 2), np.float32)
  objective = Objective(loss="distillation", temperature=2.0, alpha=0.7)
  for w in (None, weights):
    got = compress.distillation_objective_loss(
        student, labels, teacher, temperature=2.0, alpha=0.7, weights=w)
    want = objective.data_loss(jnp.asarray(student), (labels, teacher), w)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  one_hot = jax.nn.one_hot(labels, CLASSES)
  np.testing.assert_allclose(
      compress.distillation_objective_loss(student, one_hot, teacher,
                                           temperature=2.0, alpha=0.7),
      compress.distillation_objective_loss(student, labels, teacher,
                                           temperature=2.0, alpha=0.7), rtol=1e-6)


def test_gradient_finite_and_not_into_teacher(data):
  student, labels, teacher = data
  loss = lambda s, t: compress.distillation_objective_loss(
      s, labels, t, temperature=3.0, alpha=0.5)
  g_student, g_teacher = jax.grad(loss, argnums=(0, 1))(
      jnp.asarray(student), jnp.asarray(teacher))
  assert np.all(np.isfinite(g_student)) and np.any(g_student != 0)
  np.testing.assert_array_equal(g_teacher, 0.0)
  # Extreme logits stay finite too.
  big = jax.grad(loss)(jnp.asarray(student) * 1e4, jnp.asarray(teacher) * 1e4)
  assert np.all(np.isfinite(big))
  # At the teacher, with alpha = 1, the distillation gradient vanishes.
  g = jax.grad(lambda s: compress.distillation_objective_loss(
      s, labels, teacher, temperature=2.0, alpha=1.0))(jnp.asarray(teacher))
  np.testing.assert_allclose(g, 0.0, atol=1e-6)


def test_bad_arguments_raise(data):
  student, labels, teacher = data
  for alpha in (-0.1, 1.5, None, "0.5"):
    with pytest.raises(ValueError, match="alpha"):
      compress.distillation_objective_loss(student, labels, teacher,
                                           temperature=2.0, alpha=alpha)
  for temperature in (0.0, -1.0):
    with pytest.raises(ValueError, match="temperature"):
      compress.distillation_objective_loss(student, labels, teacher,
                                           temperature=temperature, alpha=0.5)
  with pytest.raises(ValueError, match="teacher_logits"):
    compress.distillation_objective_loss(student, labels, teacher[:, :3],
                                         temperature=2.0, alpha=0.5)
  with pytest.raises(ValueError, match="labels"):
    compress.distillation_objective_loss(student, labels[:3], teacher,
                                         temperature=2.0, alpha=0.5)
  model = CNN(num_classes=3, features=(4,), dense_width=8)
  x = np.zeros((4, 8, 8, 1), np.float32)
  variables = model.init(jax.random.key(0), x)
  for batch_size in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match="batch_size"):
      compress.teacher_logits(model.apply, variables, x, batch_size=batch_size)
  with pytest.raises(ValueError, match="x must"):
    compress.teacher_logits(model.apply, variables, x[:0])
