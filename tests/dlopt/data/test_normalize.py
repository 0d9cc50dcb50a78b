"""Tests for dlopt.data.normalize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt.data import Normalization, denormalize, fit_normalization, normalize


def _images(seed=0):
  rng = np.random.default_rng(seed)
  scale = np.array([1.0, 5.0, 0.1], np.float32)
  shift = np.array([0.0, -3.0, 10.0], np.float32)
  return (rng.normal(size=(64, 6, 6, 3)) * scale + shift).astype(np.float32)


def test_per_channel_mean_zero_std_one():
  x = _images()
  stats = fit_normalization(x)
  assert isinstance(stats, Normalization)
  assert stats.mean.shape == stats.std.shape == (3,)
  assert stats.mean.dtype == stats.std.dtype == np.float32
  z = normalize(x, stats)
  assert z.dtype == np.float32
  np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_explicit_axis_keeps_trailing_axes():
  x = _images()
  stats = fit_normalization(x, axis=0)
  assert stats.mean.shape == (6, 6, 3)
  np.testing.assert_allclose(normalize(x, stats).mean(axis=0), 0.0, atol=1e-4)


def test_one_dimensional_targets_give_scalar_stats():
  y = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
  stats = fit_normalization(y)
  assert stats.mean.shape == ()
  np.testing.assert_allclose(normalize(y, stats).std(), 1.0, atol=1e-6)


def test_constant_feature_gives_no_nan():
  x = np.ones((10, 4), np.float32)
  x[:, 1] = np.arange(10)
  z = normalize(x, fit_normalization(x))
  assert np.all(np.isfinite(z))
  np.testing.assert_array_equal(z[:, [0, 2, 3]], 0.0)


def test_numpy_and_jax_agree():
  x = _images()
  stats = fit_normalization(jnp.asarray(x))
  np.testing.assert_allclose(stats.mean, fit_normalization(x).mean, rtol=1e-6)
  z_np = normalize(x, stats)
  z_jnp = normalize(jnp.asarray(x), stats)
  z_jit = jax.jit(normalize)(jnp.asarray(x), stats)
  assert isinstance(z_jnp, jax.Array) and z_jnp.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(z_jnp), z_np, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(z_jit), z_np, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("as_jax", [False, True])
def test_denormalize_inverts_normalize(as_jax):
  x = _images()
  stats = fit_normalization(x)
  xs = jnp.asarray(x) if as_jax else x
  restored = denormalize(normalize(xs, stats), stats)
  np.testing.assert_allclose(np.asarray(restored), x, rtol=1e-5, atol=1e-5)


def test_uint8_input_normalizes_to_float32():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(8, 4, 4, 1)).astype(np.uint8)
  z = normalize(x, fit_normalization(x))
  assert z.dtype == np.float32
  np.testing.assert_allclose(z.mean(), 0.0, atol=1e-5)
