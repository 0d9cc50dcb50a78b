"""Tests for dlopt.metrics against NumPy references and scikit-learn."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from dlopt import metrics

BATCH, CLASSES = 64, 6
JIT = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


def _maybe_jit(fn, use_jit, **kwargs):
  fn = functools.partial(fn, **kwargs) if kwargs else fn
  return jax.jit(fn) if use_jit else fn


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(BATCH, CLASSES)).astype(np.float32)
  labels = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
  labels[: BATCH // 3] = logits[: BATCH // 3].argmax(-1)
  weights = (rng.random(BATCH) > 0.3).astype(np.float32)
  weights[0] = 1.0
  return logits, labels, weights


def test_module_docstring_example_runs():
  results = doctest.testmod(metrics, raise_on_error=False)
  assert results.attempted > 0 and results.failed == 0


# ---------------------------------------------------------------------------
# accuracy


@JIT
def test_accuracy_matches_numpy_and_sklearn(data, use_jit):
  logits, labels, weights = data
  fn = _maybe_jit(metrics.accuracy, use_jit)
  predictions = logits.argmax(-1)
  out = fn(logits, labels)
  assert out.shape == () and out.dtype == jnp.float32
  np.testing.assert_allclose(out, (predictions == labels).mean(), rtol=1e-6)
  np.testing.assert_allclose(
      fn(logits, labels, weights),
      skm.accuracy_score(labels, predictions, sample_weight=weights),
      rtol=1e-6)


@JIT
def test_accuracy_one_hot_labels_and_dropped_examples(data, use_jit):
  logits, labels, weights = data
  fn = _maybe_jit(metrics.accuracy, use_jit)
  one_hot = jax.nn.one_hot(labels, CLASSES)
  np.testing.assert_allclose(fn(logits, one_hot, weights),
                             fn(logits, labels, weights), rtol=1e-7)
  keep = weights > 0
  np.testing.assert_allclose(fn(logits, labels, weights),
                             fn(logits[keep], labels[keep]), rtol=1e-6)
  assert float(fn(logits, labels, np.zeros(BATCH))) == 0.0


@pytest.mark.parametrize(
    "labels, weights, name",
    [
        (np.zeros(BATCH + 1, np.int32), None, "labels"),
        (np.zeros((BATCH, CLASSES + 1)), None, "labels"),
        (np.zeros(BATCH, np.float32), None, "labels.dtype"),
        (np.zeros(BATCH, np.int32), np.ones(BATCH + 1), "weights"),
    ],
)
def test_accuracy_rejects_bad_inputs(data, labels, weights, name):
  logits, _, _ = data
  with pytest.raises(ValueError, match=name):
    metrics.accuracy(logits, labels, weights)


# ---------------------------------------------------------------------------
# confusion_matrix


@JIT
def test_confusion_matrix_matches_sklearn(data, use_jit):
  logits, labels, weights = data
  predictions = logits.argmax(-1).astype(np.int32)
  fn = _maybe_jit(
      lambda p, l, w=None: metrics.confusion_matrix(p, l, CLASSES, w), use_jit)
  out = fn(predictions, labels)
  assert out.shape == (CLASSES, CLASSES) and out.dtype == jnp.int32
  np.testing.assert_array_equal(
      out, skm.confusion_matrix(labels, predictions, labels=range(CLASSES)))
  keep = weights > 0
  np.testing.assert_array_equal(
      fn(predictions, labels, weights),
      skm.confusion_matrix(labels[keep], predictions[keep],
                           labels=range(CLASSES)))


@JIT
def test_confusion_matrix_ignores_out_of_range_ids(use_jit):
  fn = _maybe_jit(lambda p, l: metrics.confusion_matrix(p, l, 3), use_jit)
  predictions = np.array([0, 1, 2, 2, 5], np.int32)
  labels = np.array([0, 2, 2, -1, 1], np.int32)
  np.testing.assert_array_equal(
      fn(predictions, labels), [[1, 0, 0], [0, 0, 0], [0, 1, 1]])


_PADDED_BATCH = 48


@functools.cache
def _jitted_confusion_matrix(num_classes):
  return jax.jit(functools.partial(metrics.confusion_matrix,
                                   num_classes=num_classes))


@st.composite
def _labelled_batches(draw):
  num_classes = draw(st.integers(1, 8))
  ids = st.integers(0, num_classes - 1)
  rows = draw(st.lists(st.tuples(ids, ids, st.booleans()), min_size=1,
                       max_size=_PADDED_BATCH))
  labels, predictions, mask = (np.array(column) for column in zip(*rows))
  return num_classes, labels, predictions, mask.astype(np.int32)


@pytest.mark.filterwarnings("ignore:A single label was found")
@settings(max_examples=60, deadline=None)
@given(_labelled_batches())
def test_confusion_matrix_property(batch):
  num_classes, labels, predictions, mask = batch
  pad = _PADDED_BATCH - len(labels)
  fn = _jitted_confusion_matrix(num_classes)
  out = np.asarray(fn(np.pad(predictions, (0, pad)), np.pad(labels, (0, pad)),
                      weights=np.pad(np.ones_like(mask), (0, pad))))
  assert out.sum() == len(labels)
  np.testing.assert_array_equal(
      out, skm.confusion_matrix(labels, predictions,
                                labels=range(num_classes)))
  masked = np.asarray(fn(np.pad(predictions, (0, pad)),
                         np.pad(labels, (0, pad)),
                         weights=np.pad(mask, (0, pad))))
  assert masked.sum() == mask.sum()
  expected = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(expected, (labels, predictions), mask)
  np.testing.assert_array_equal(masked, expected)


@pytest.mark.parametrize(
    "predictions, labels, num_classes, weights, name",
    [
        (np.zeros(4, np.int32), np.zeros(4, np.int32), 0, None, "num_classes"),
        (np.zeros(4, np.int32), np.zeros(4, np.int32), 2.0, None,
         "num_classes"),
        (np.zeros(4, np.int32), np.zeros(5, np.int32), 2, None, "labels.shape"),
        (np.zeros((4, 2), np.int32), np.zeros((4, 2), np.int32), 2, None,
         "predictions.shape"),
        (np.zeros(4, np.float32), np.zeros(4, np.int32), 2, None,
         "predictions.dtype"),
        (np.zeros(4, np.int32), np.zeros(4, np.int32), 2, np.ones(3),
         "weights"),
    ],
)
def test_confusion_matrix_rejects_bad_inputs(predictions, labels, num_classes,
                                             weights, name):
  with pytest.raises(ValueError, match=name):
    metrics.confusion_matrix(predictions, labels, num_classes, weights)


# ---------------------------------------------------------------------------
# precision_recall_f1, classification_metrics


def _sklearn_scores(labels, predictions, num_classes):
  kwargs = dict(labels=range(num_classes), zero_division=0)
  precision, recall, f1, _ = skm.precision_recall_fscore_support(
      labels, predictions, **kwargs)
  return {
      "precision": precision, "recall": recall, "f1": f1,
      "macro_precision": skm.precision_score(
          labels, predictions, average="macro", **kwargs),
      "macro_recall": skm.recall_score(
          labels, predictions, average="macro", **kwargs),
      "macro_f1": skm.f1_score(labels, predictions, average="macro", **kwargs),
  }


@JIT
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precision_recall_f1_matches_sklearn(use_jit, seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, CLASSES, size=BATCH)
  predictions = np.where(rng.random(BATCH) < 0.5, labels,
                         rng.integers(0, CLASSES, size=BATCH))
  confusion = metrics.confusion_matrix(predictions, labels, CLASSES)
  out = _maybe_jit(metrics.precision_recall_f1, use_jit)(confusion)
  expected = _sklearn_scores(labels, predictions, CLASSES)
  assert set(out) == set(expected)
  for name, value in expected.items():
    assert out[name].dtype == jnp.float32
    assert out[name].shape == np.shape(value), name
    np.testing.assert_allclose(out[name], value, rtol=1e-5, err_msg=name)


@JIT
def test_precision_recall_f1_zero_division_gives_zero(use_jit):
  # Class 2 is never predicted, class 3 never occurs, class 4 neither.
  labels = np.array([0, 0, 1, 1, 2, 2])
  predictions = np.array([0, 1, 1, 3, 0, 1])
  confusion = metrics.confusion_matrix(predictions, labels, 5)
  out = _maybe_jit(metrics.precision_recall_f1, use_jit)(confusion)
  for value in out.values():
    assert np.all(np.isfinite(value))
  for name, value in _sklearn_scores(labels, predictions, 5).items():
    np.testing.assert_allclose(out[name], value, rtol=1e-6, err_msg=name)
  empty = metrics.precision_recall_f1(jnp.zeros((3, 3), jnp.int32))
  for value in empty.values():
    np.testing.assert_array_equal(value, 0.0)


def test_classification_metrics_returns_python_floats(data):
  logits, labels, _ = data
  predictions = logits.argmax(-1)
  out = metrics.classification_metrics(
      metrics.confusion_matrix(predictions, labels, CLASSES))
  assert set(out) == {"accuracy", "macro_precision", "macro_recall",
                      "macro_f1"}
  assert all(type(value) is float for value in out.values())
  expected = _sklearn_scores(labels, predictions, CLASSES)
  assert out["accuracy"] == pytest.approx(
      skm.accuracy_score(labels, predictions))
  for name in ("macro_precision", "macro_recall", "macro_f1"):
    assert out[name] == pytest.approx(expected[name], rel=1e-5)
  assert metrics.classification_metrics(np.zeros((2, 2)))["accuracy"] == 0.0


@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 2, 2)])
def test_confusion_consumers_reject_non_square(shape):
  with pytest.raises(ValueError, match="confusion"):
    metrics.precision_recall_f1(np.zeros(shape))
  with pytest.raises(ValueError, match="confusion"):
    metrics.classification_metrics(np.zeros(shape))


# ---------------------------------------------------------------------------
# Mean


def test_mean_merge_of_chunks_equals_whole():
  values = np.random.default_rng(0).normal(size=100).astype(np.float32)
  weights = (np.random.default_rng(1).random(100) > 0.4).astype(np.float32)
  running = metrics.Mean.empty()
  weighted = metrics.Mean.empty()
  for chunk in np.array_split(np.arange(100), 7):
    running = running.merge(metrics.Mean.from_values(values[chunk]))
    weighted = weighted.merge(
        metrics.Mean.from_values(values[chunk], weights[chunk]))
  np.testing.assert_allclose(running.compute(), values.mean(), rtol=1e-5)
  np.testing.assert_allclose(running.count, 100)
  np.testing.assert_allclose(
      weighted.compute(), np.average(values, weights=weights), rtol=1e-5)
  np.testing.assert_allclose(weighted.count, weights.sum())


def test_mean_empty_computes_zero():
  empty = metrics.Mean.empty()
  assert float(empty.compute()) == 0.0
  assert float(metrics.Mean.from_values(np.ones(3), np.zeros(3)).compute()) == 0
  merged = empty.merge(metrics.Mean.from_values(np.array(4.0)))
  assert float(merged.compute()) == 4.0 and float(merged.count) == 1.0


def test_mean_under_jit_and_scan():
  values = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)

  @jax.jit
  def summarize(batch):
    return metrics.Mean.from_values(batch)

  @jax.jit
  def merge_all(stacked):
    def step(state, batch):
      return state.merge(metrics.Mean.from_values(batch)), None
    state, _ = jax.lax.scan(step, metrics.Mean.empty(), stacked)
    return state

  first = summarize(values[0])
  assert isinstance(first, metrics.Mean)
  merged = jax.jit(lambda a, b: a.merge(b))(first, summarize(values[1]))
  np.testing.assert_allclose(merged.compute(), values[:2].mean(), rtol=1e-5)
  state = merge_all(values)
  assert isinstance(state, metrics.Mean)
  assert state.total.dtype == jnp.float32 and state.count.dtype == jnp.float32
  np.testing.assert_allclose(state.compute(), values.mean(), rtol=1e-5)
  np.testing.assert_allclose(
      jax.jit(metrics.Mean.compute)(state), state.compute(), rtol=1e-7)


def test_mean_rejects_mismatched_weights():
  with pytest.raises(ValueError, match="weights"):
    metrics.Mean.from_values(np.ones(4), np.ones(3))
