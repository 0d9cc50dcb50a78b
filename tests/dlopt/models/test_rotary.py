"""Tests for rotary position embeddings: a complex-number reference, the
relative-offset property, the identity at position 0, dtypes and validation."""

import jax.numpy as jnp
import numpy as np
import pytest

from dlopt.models.rotary import check_rope_base
from dlopt.models.rotary import rotary_embedding


def _normal(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _reference(x, positions, base):
  """Pairs (i, i + D/2) as complex numbers, multiplied by exp(1j * p * base**(-2i/D))."""
  half = x.shape[-1] // 2
  z = x[..., :half].astype(np.complex128) + 1j * x[..., half:]
  theta = positions[..., None].astype(np.float64) * base ** (-np.arange(half) / half)
  z = z * np.exp(1j * theta)[:, :, None]
  return np.concatenate([z.real, z.imag], axis=-1)


@pytest.mark.parametrize("base", [10_000.0, 100.0])
def test_matches_complex_rotation(base):
  x = _normal((2, 7, 3, 8))
  positions = np.random.default_rng(1).integers(0, 50, (2, 7))
  out = rotary_embedding(jnp.asarray(x), jnp.asarray(positions), base=base)
  np.testing.assert_allclose(out, _reference(x, positions, base), rtol=1e-5, atol=1e-5)


def test_scores_depend_only_on_the_offset():
  q, k = _normal((1, 6, 2, 16), seed=2), _normal((1, 6, 2, 16), seed=3)
  positions = jnp.arange(6)[None]

  def scores(shift):
    rq = rotary_embedding(jnp.asarray(q), positions + shift)
    rk = rotary_embedding(jnp.asarray(k), positions + shift)
    return np.asarray(jnp.einsum("bqhd,bkhd->bhqk", rq, rk))

  np.testing.assert_allclose(scores(0), scores(37), rtol=1e-4, atol=1e-4)
  unrotated = np.einsum("bqhd,bkhd->bhqk", q, k)
  assert np.abs(scores(0) - unrotated).max() > 1e-2          # but positions do matter


def test_position_zero_is_the_identity_and_norms_are_kept():
  x = _normal((2, 5, 2, 6), seed=4)
  np.testing.assert_allclose(rotary_embedding(jnp.asarray(x), jnp.zeros((1, 5), jnp.int32)), x,
                             rtol=1e-6, atol=1e-6)
  out = rotary_embedding(jnp.asarray(x), jnp.arange(5)[None] * 3)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1),
                             rtol=1e-5)


def test_keeps_the_input_dtype():
  x = jnp.asarray(_normal((1, 4, 2, 8)), jnp.bfloat16)
  out = rotary_embedding(x, jnp.arange(4)[None])
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             _reference(np.asarray(x, np.float32), np.arange(4)[None], 1e4),
                             rtol=2e-2, atol=2e-2)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="even head_dim"):
    rotary_embedding(jnp.ones((1, 4, 2, 5)), jnp.arange(4)[None])
  with pytest.raises(ValueError, match="positions must be"):
    rotary_embedding(jnp.ones((2, 4, 2, 6)), jnp.arange(5)[None])
  for bad in (1.0, 0, -3.0, float("inf"), True, "1e4"):
    with pytest.raises(ValueError, match="rope_base"):
      check_rope_base(bad)
  check_rope_base(None)
  check_rope_base(500)
