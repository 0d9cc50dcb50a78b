"""The reference against `jax.nn`, and the chunked path against the float64 reference."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.attention import BlockSizes, attention_reference

SMALL_BLOCKS = BlockSizes(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)
# Backward tiles unlike the forward ones: the padding must fit both.
MIXED_BLOCKS = BlockSizes(block_q=16, block_k=32, block_q_bwd=32, block_k_bwd=8)
KINDS = ("none", "causal", "lengths", "segments", "mask", "all")


def chunked_and_grads(q, k, v, cotangent, block_sizes, causal=False, **arrays):
  """`kernels.attention(impl="xla_chunked")` and d/d(q, k, v) of sum(out * cotangent), jitted."""
  def run(q, k, v, cotangent, arrays):
    out, vjp = jax.vjp(lambda a, b, c: kernels.attention(
        a, b, c, causal=causal, impl="xla_chunked", block_sizes=block_sizes, **arrays), q, k, v)
    return out, vjp(cotangent.astype(out.dtype))
  return jax.jit(run)(q, k, v, cotangent, arrays)


def check_against_reference(cases, seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim,
                            kind, dtype=jnp.float32, block_sizes=SMALL_BLOCKS):
  """Asserts forward and grads of the chunked path are within TOLERANCE of float64.

  Args:
    cases: the `attention_cases` fixture of conftest.py.
    seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim, dtype: the random inputs.
    kind: the mask options, as `cases.make_options` names them.
    block_sizes: the tiles of the chunked path.
  """
  q, k, v = cases.make_inputs(seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim, dtype)
  options = cases.make_options(seed, batch, q_len, kv_len, q_heads, kind)
  cotangent = np.random.default_rng(seed + 7).standard_normal(q.shape).astype(np.float32)
  out, grads = chunked_and_grads(q, k, v, jnp.asarray(cotangent), block_sizes, **options)
  assert out.shape == q.shape and out.dtype == dtype
  tolerance = cases.TOLERANCE[dtype]
  expected_cotangent = np.asarray(jnp.asarray(cotangent, dtype), np.float64)
  expected_out = cases.reference64(q, k, v, **dict(options))
  np.testing.assert_allclose(np.asarray(out, np.float64), expected_out, atol=tolerance["fwd"],
                             rtol=0)
  expected = cases.reference64_grads(q, k, v, expected_cotangent, **dict(options))
  for name, grad, want in zip("qkv", grads, expected):
    assert grad.dtype == dtype, name
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, atol=tolerance["bwd"],
                               rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_jax_nn(attention_cases, causal):
  q, k, v = attention_cases.make_inputs(0, 2, 33, 33, 4, 2, 16)
  out = attention_reference(q, k, v, causal=causal)
  expected = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind, kv_heads", [(kind, 2) for kind in KINDS] + [("all", 1)])
def test_chunked_masks_and_gqa(attention_cases, kind, kv_heads):
  check_against_reference(attention_cases, 1, 2, 37, 50, 4, kv_heads, 16, kind)


@pytest.mark.parametrize("q_len, kv_len", [(50, 37), (1, 40), (64, 8)])
def test_chunked_shapes(attention_cases, q_len, kv_len):
  check_against_reference(attention_cases, 2, 2, q_len, kv_len, 4, 4, 16, "all",
                          block_sizes=MIXED_BLOCKS)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("head_dim", [16, 80])
def test_chunked_dtypes(attention_cases, dtype, head_dim):
  check_against_reference(attention_cases, 3, 1, 37, 50, 4, 2, head_dim, "all", dtype=dtype)


def test_chunked_float64(attention_cases):
  with jax.enable_x64(True):
    q, k, v = (jnp.asarray(np.asarray(x), jnp.float64)
               for x in attention_cases.make_inputs(4, 1, 37, 50, 2, 1, 8))
    options = dict(causal=True, kv_lengths=jnp.asarray([45], jnp.int32))
    out = kernels.attention(q, k, v, impl="xla_chunked", block_sizes=SMALL_BLOCKS, **options)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, attention_cases.reference64(q, k, v, **options),
                               atol=1e-12, rtol=0)


def test_fully_masked_rows_are_zero_with_zero_grads(attention_cases):
  q, k, v = attention_cases.make_inputs(5, 2, 37, 50, 4, 2, 16)
  mask = np.ones((2, 1, 37, 50), bool)
  mask[:, :, 5:20] = False  # rows 5..19 see nothing
  options = dict(mask=jnp.asarray(mask), kv_lengths=jnp.asarray([0, 50], jnp.int32),
                 q_lengths=jnp.asarray([37, 30], jnp.int32))
  cotangent = jnp.asarray(np.random.default_rng(0).standard_normal(q.shape), jnp.float32)
  out, (dq, dk, dv) = chunked_and_grads(q, k, v, cotangent, SMALL_BLOCKS, **options)
  for x in (out, dq, dk, dv):
    assert np.isfinite(np.asarray(x)).all()
  np.testing.assert_array_equal(out[0], 0)  # kv_lengths 0
  np.testing.assert_array_equal(out[:, 5:20], 0)
  np.testing.assert_array_equal(out[1, 30:], 0)  # past q_lengths
  np.testing.assert_array_equal(dq[0], 0)
  np.testing.assert_array_equal(dq[:, 5:20], 0)
  np.testing.assert_array_equal(dk[0], 0)
  np.testing.assert_array_equal(dv[0], 0)


# The fixture only hands out pure helpers, so sharing it across examples is safe.
@hypothesis.settings(max_examples=3, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(
    q_len=st.integers(1, 40), kv_len=st.integers(1, 40), kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2]), head_dim=st.sampled_from([8, 24]),
    kind=st.sampled_from(KINDS), block_q=st.sampled_from([8, 16]),
    block_k=st.sampled_from([8, 32]))
def test_chunked_property(attention_cases, q_len, kv_len, kv_heads, group, head_dim, kind,
                          block_q, block_k):
  block_sizes = BlockSizes(block_q=block_q, block_k=block_k, block_q_bwd=block_k,
                           block_k_bwd=block_q)
  check_against_reference(attention_cases, q_len * 41 + kv_len, 2, q_len, kv_len,
                          kv_heads * group, kv_heads,
                          head_dim, kind, block_sizes=block_sizes)
