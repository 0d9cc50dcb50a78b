"""Tests for dlopt.data.tabular."""

import dataclasses
import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from dlopt.data import Normalization, normalize

tabular = importlib.import_module("dlopt.data.tabular")
drop_duplicates = tabular.drop_duplicates
drop_missing = tabular.drop_missing
fit_imputer = tabular.fit_imputer
fit_scaler = tabular.fit_scaler

NAN = np.nan


def _table(n=50, d=4, seed=0, missing=0.0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * np.array([1.0, 10.0, 0.1, 3.0])[:d] + np.arange(d)
  if missing:
    x[rng.random(size=x.shape) < missing] = NAN
  return x


# drop_missing.


def test_drop_missing_by_hand():
  x = np.array([[1.0, 2.0], [NAN, 3.0], [4.0, 5.0], [6.0, NAN]], np.float32)
  y = np.array([0.5, 1.5, NAN, 3.5])
  kept_x, kept_y = drop_missing(x, y)
  np.testing.assert_array_equal(kept_x, [[1.0, 2.0]])
  np.testing.assert_array_equal(kept_y, [0.5])
  assert kept_x.dtype == np.float32
  only_x, none = drop_missing(x)
  np.testing.assert_array_equal(only_x, [[1.0, 2.0], [4.0, 5.0]])
  assert none is None


def test_drop_missing_keeps_integer_data_and_multi_output_targets():
  x = np.arange(6).reshape(3, 2)
  y = np.array([[1.0, 2.0], [NAN, 0.0], [3.0, 4.0]])
  kept_x, kept_y = drop_missing(x, y)
  np.testing.assert_array_equal(kept_x, x[[0, 2]])
  np.testing.assert_array_equal(kept_y, y[[0, 2]])
  np.testing.assert_array_equal(drop_missing(x)[0], x)


def test_drop_missing_can_drop_everything():
  x, y = drop_missing(np.full((3, 2), NAN), np.arange(3))
  assert x.shape == (0, 2) and y.shape == (0,)


# drop_duplicates.


def test_drop_duplicates_keeps_first_occurrences_in_order():
  x = np.array([[3, 1], [1, 2], [3, 1], [0, 0], [1, 2], [3, 1]], np.int64)
  kept, none = drop_duplicates(x)
  np.testing.assert_array_equal(kept, [[3, 1], [1, 2], [0, 0]])
  assert none is None and kept.dtype == np.int64


def test_drop_duplicates_with_targets_keeps_rows_that_differ_in_y():
  x = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, 6.0], [1.0, 2.0], [5.0, 6.0]])
  y = np.array([0, 1, 0, 1, 0])
  kept_x, kept_y = drop_duplicates(x, y)
  np.testing.assert_array_equal(kept_x, x[[0, 1, 2]])
  np.testing.assert_array_equal(kept_y, [0, 1, 0])


def test_drop_duplicates_nan_equals_nan_and_signed_zeros_agree():
  x = np.array([[NAN, 1.0], [0.0, 2.0], [NAN, 1.0], [-0.0, 2.0], [NAN, 3.0]])
  kept, _ = drop_duplicates(x)
  np.testing.assert_array_equal(kept, x[[0, 1, 4]])


def test_drop_duplicates_matches_a_python_reference():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, size=(200, 3)).astype(np.float32)
  y = rng.integers(0, 2, size=200)
  seen, expected = set(), []
  for i, row in enumerate(zip(map(tuple, x.tolist()), y.tolist())):
    if row not in seen:
      seen.add(row)
      expected.append(i)
  kept_x, kept_y = drop_duplicates(x, y)
  np.testing.assert_array_equal(kept_x, x[expected])
  np.testing.assert_array_equal(kept_y, y[expected])


def test_drop_duplicates_of_nothing():
  x, y = drop_duplicates(np.zeros((0, 3)), np.zeros(0))
  assert x.shape == (0, 3) and y.shape == (0,)


# fit_imputer.


@pytest.mark.parametrize("strategy", ["mean", "median", "constant"])
def test_imputer_matches_sklearn(strategy):
  train, test = _table(seed=0, missing=0.2), _table(seed=1, missing=0.2)
  imputer = fit_imputer(train, strategy=strategy, fill_value=-1.5)
  reference = SimpleImputer(strategy=strategy, fill_value=-1.5).fit(train)
  assert imputer.strategy == strategy and imputer.values.dtype == np.float64
  np.testing.assert_allclose(imputer.values, reference.statistics_.astype(float), rtol=1e-12)
  for split in (train, test):
    out = imputer.apply(split)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, reference.transform(split), rtol=1e-12)


def test_imputer_by_hand_fits_train_and_applies_to_other_splits():
  train = np.array([[1.0, NAN], [3.0, 10.0], [NAN, 20.0], [8.0, 60.0]])
  mean = fit_imputer(train, "mean")
  median = fit_imputer(train, "median")
  np.testing.assert_allclose(mean.values, [4.0, 30.0])
  np.testing.assert_allclose(median.values, [3.0, 20.0])
  test = np.array([[NAN, NAN], [2.0, 5.0]])
  np.testing.assert_allclose(mean.apply(test), [[4.0, 30.0], [2.0, 5.0]])
  assert np.isnan(test[0]).all()  # the input is not modified


def test_imputer_dtypes():
  x = np.array([[1.0, NAN], [2.0, 4.0]], np.float32)
  assert fit_imputer(x).apply(x).dtype == np.float32
  ints = np.array([[1, 2], [3, 5]])
  imputer = fit_imputer(ints, "median")
  np.testing.assert_allclose(imputer.values, [2.0, 3.5])
  out = imputer.apply(ints)
  assert out.dtype == np.float64
  np.testing.assert_array_equal(out, ints)


def test_imputer_is_frozen_with_read_only_values():
  imputer = fit_imputer(_table(missing=0.1))
  with pytest.raises(dataclasses.FrozenInstanceError):
    imputer.strategy = "median"
  with pytest.raises(ValueError):
    imputer.values[0] = 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": np.zeros(5)}, "x must be a real-valued array"),
        ({"x": np.zeros((0, 3))}, "at least 1 row"),
        ({"x": np.array([["a", "b"]])}, "x must be a real-valued array"),
        ({"x": np.ones((3, 2)), "strategy": "mode"}, "strategy must be one of"),
        ({"x": np.ones((3, 2)), "strategy": "constant", "fill_value": NAN}, "fill_value"),
        ({"x": np.ones((3, 2)), "strategy": "constant", "fill_value": "0"}, "fill_value"),
        ({"x": np.array([[1.0, NAN], [2.0, NAN]])}, r"columns \[1\] \(all NaN\)"),
        ({"x": np.array([[NAN, 1.0]]), "strategy": "median"}, r"columns \[0\]"),
    ],
)
def test_fit_imputer_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fit_imputer(**kwargs)


def test_constant_imputer_accepts_all_nan_columns():
  out = fit_imputer(np.full((2, 2), NAN), "constant", fill_value=7).apply(np.full((1, 2), NAN))
  np.testing.assert_array_equal(out, [[7.0, 7.0]])


def test_imputer_apply_checks_columns():
  with pytest.raises(ValueError, match="the 4 columns"):
    fit_imputer(_table()).apply(np.ones((2, 3)))


# fit_scaler.


@pytest.mark.parametrize(
    "kind, reference", [("standard", StandardScaler), ("minmax", MinMaxScaler)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scaler_matches_sklearn(kind, reference, dtype):
  train, test = _table(seed=0).astype(dtype), _table(seed=1).astype(dtype)
  scaler = fit_scaler(train, kind)
  fitted = reference().fit(train.astype(np.float64))
  assert scaler.kind == kind and isinstance(scaler.stats, Normalization)
  assert scaler.stats.mean.dtype == scaler.stats.std.dtype == np.float32
  for split in (train, test):
    out = scaler.apply(split)
    assert out.dtype == dtype and out.shape == split.shape
    np.testing.assert_allclose(out, fitted.transform(split.astype(np.float64)), atol=2e-5)
    np.testing.assert_allclose(scaler.invert(out), split, rtol=1e-5, atol=1e-5)


def test_minmax_maps_the_training_range_to_unit_interval():
  x = np.array([[0.0, -2.0], [5.0, 2.0], [10.0, 0.0]])
  out = fit_scaler(x, "minmax").apply(x)
  np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 1.0], [1.0, 0.5]])


def test_standard_by_hand():
  x = np.array([[1.0], [3.0]])
  scaler = fit_scaler(x)
  np.testing.assert_allclose(scaler.stats.mean, [2.0])
  np.testing.assert_allclose(scaler.stats.std, [1.0])
  np.testing.assert_allclose(scaler.apply(x), [[-1.0], [1.0]])


@pytest.mark.parametrize(
    "kind, reference", [("standard", StandardScaler), ("minmax", MinMaxScaler)])
def test_constant_columns_do_not_divide_by_zero(kind, reference):
  x = np.array([[5.0, 1.0, 0.0], [5.0, 2.0, 0.0], [5.0, 4.0, 0.0]])
  out = fit_scaler(x, kind).apply(x)
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out[:, [0, 2]], 0.0)
  np.testing.assert_allclose(out, reference().fit_transform(x), atol=1e-6)
  np.testing.assert_allclose(fit_scaler(x, kind).invert(out), x, atol=1e-6)


def test_scaler_passes_nan_through_like_sklearn():
  train = _table()
  test = _table(seed=1, missing=0.2)
  out = fit_scaler(train).apply(test)
  expected = StandardScaler().fit(train).transform(test)
  np.testing.assert_array_equal(np.isnan(out), np.isnan(test))
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_scaler_stats_work_in_jax():
  x = _table().astype(np.float32)
  scaler = fit_scaler(x)
  z = jax.jit(normalize)(jnp.asarray(x), scaler.stats)
  np.testing.assert_allclose(np.asarray(z), scaler.apply(x), atol=1e-6)


def test_integer_input_scales():
  x = np.array([[0, 10], [5, 20], [10, 30]], np.int64)
  np.testing.assert_allclose(fit_scaler(x, "minmax").apply(x), [[0, 0], [0.5, 0.5], [1, 1]])


@pytest.mark.parametrize(
    "x, kind, match",
    [
        (np.array([[1.0, NAN], [2.0, 3.0]]), "standard", r"NaN or inf in columns \[1\]"),
        (np.array([[np.inf, 1.0], [2.0, 3.0]]), "minmax", r"columns \[0\]"),
        (np.ones((3, 2)), "robust", "kind must be one of"),
        (np.ones(3), "standard", "x must be a real-valued array"),
        (np.ones((0, 2)), "minmax", "at least 1 row"),
    ],
)
def test_fit_scaler_bad_arguments(x, kind, match):
  with pytest.raises(ValueError, match=match):
    fit_scaler(x, kind)


def test_scaler_apply_and_invert_check_columns():
  scaler = fit_scaler(_table())
  with pytest.raises(ValueError, match="the 4 columns"):
    scaler.apply(np.ones((2, 5)))
  with pytest.raises(ValueError, match="the 4 columns"):
    scaler.invert(np.ones((2, 3)))


# Shared argument checks.


@pytest.mark.parametrize("function", [drop_missing, drop_duplicates])
def test_targets_must_match_rows(function):
  with pytest.raises(ValueError, match=r"y must have one entry per row of x, shape \[3, \.\.\.\]"):
    function(np.ones((3, 2)), np.ones(4))
  with pytest.raises(ValueError, match="y must have one entry"):
    function(np.ones((3, 2)), 1.0)
  with pytest.raises(ValueError, match="x must be a real-valued array"):
    function(np.ones((3, 2, 1)))


def test_docstring_example_runs():
  result = doctest.testmod(tabular, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
