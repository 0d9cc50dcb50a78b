"""The Mosaic TPU attention kernel against the float64 reference, in TPU interpret mode.

Every case goes through the public `kernels.attention(..., impl="pallas_tpu")`, which on the
CPU runs the kernels with `interpret=pltpu.InterpretParams()`. Interpret mode compiles
slowly (seconds per shape), so the shapes are tiny and each case checks forward and
gradients from one `jax.vjp`.
"""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.attention import BlockSizes, allowed_mask

SMALL = BlockSizes(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)
KINDS = ("none", "causal", "lengths", "segments", "mask", "all")


def _empty_rows(q, k, options):
  """Bool `[B, Hq or 1, Tq]`: query rows with nothing to attend (or None)."""
  options = dict(options)
  segment_ids = options.pop("segment_ids", None)
  if segment_ids is not None:
    options["q_segment_ids"], options["kv_segment_ids"] = segment_ids
  allowed = allowed_mask(q.shape[0], q.shape[1], k.shape[1], **options)
  return None if allowed is None else np.asarray(~jnp.any(allowed, axis=-1))


def _check(cases, q, k, v, options, block_sizes=SMALL, grads=True):
  """Forward (and grads of sum(out * cotangent)) against the float64 reference."""
  tol = cases.TOLERANCE[q.dtype.type]

  def f(q, k, v):
    return kernels.attention(q, k, v, impl="pallas_tpu", block_sizes=block_sizes, **options)

  if grads:
    out, vjp = jax.vjp(f, q, k, v)
  else:
    out = f(q, k, v)
  assert out.shape == q.shape and out.dtype == q.dtype
  out = np.asarray(out.astype(jnp.float32))
  expected = cases.reference64(q, k, v, **dict(options))
  np.testing.assert_allclose(out, expected, atol=tol["fwd"], rtol=0)
  empty = _empty_rows(q, k, options)  # [B, Hq or 1, Tq]
  if empty is not None:
    rows = np.broadcast_to(np.swapaxes(empty, 1, 2)[..., None], out.shape)  # [B, Tq, Hq, D]
    assert np.all(out[rows] == 0.0), "fully masked rows must be exactly 0"
  if not grads:
    return
  rng = np.random.default_rng(7)
  cotangent = jnp.asarray(rng.standard_normal(q.shape, np.float32), q.dtype)
  got = vjp(cotangent)
  want = cases.reference64_grads(q, k, v, cotangent, **dict(options))
  for name, g, w in zip(("dq", "dk", "dv"), got, want):
    g = np.asarray(g.astype(jnp.float32))
    assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(g, w, atol=tol["bwd"], rtol=0, err_msg=name)
  if empty is not None:
    dq = np.asarray(got[0].astype(jnp.float32))
    assert np.all(dq[rows] == 0.0), "fully masked rows pass no gradient"


@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(attention_cases, kind):
  # Tq != Tk, neither a multiple of the blocks; GQA (4 query heads on 2 kv heads); odd D.
  shape = dict(batch=2, q_len=40, kv_len=24, q_heads=4, kv_heads=2, head_dim=80)
  q, k, v = attention_cases.make_inputs(0, **shape)
  options = attention_cases.make_options(0, 2, 40, 24, 4, kind)
  _check(attention_cases, q, k, v, options)


@pytest.mark.parametrize("dtype,kind", [(jnp.bfloat16, "all"), (jnp.float16, "causal")])
def test_low_precision_mqa(attention_cases, dtype, kind):
  # Lengths that are block multiples; one kv head for four query heads; D = 64.
  q, k, v = attention_cases.make_inputs(1, 2, 32, 32, 4, 1, 64, dtype)
  options = attention_cases.make_options(1, 2, 32, 32, 4, kind)
  if "mask" not in options:  # a key-padding mask, broadcast over heads and query rows
    keys = np.random.default_rng(1).random((2, 1, 1, 32)) < 0.8
    options["mask"] = jnp.asarray(keys)
  _check(attention_cases, q, k, v, options)


def test_fully_masked_rows(attention_cases):
  q, k, v = attention_cases.make_inputs(2, 2, 24, 16, 2, 1, 64)
  mask = np.ones((2, 2, 24, 16), bool)
  mask[0, 1, 3] = False  # one row of one head
  mask[0, :, 10:20] = False  # a band of rows across heads and blocks
  options = dict(mask=jnp.asarray(mask), kv_lengths=jnp.asarray([16, 9], jnp.int32),
                 q_lengths=jnp.asarray([24, 0], jnp.int32))  # example 1: all padding
  _check(attention_cases, q, k, v, options)


@hypothesis.settings(max_examples=5, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(q_len=st.integers(1, 40), kv_len=st.integers(1, 40),
                  kv_heads=st.sampled_from([1, 2]), head_dim=st.sampled_from([8, 64, 72]),
                  block=st.sampled_from([8, 16, 128]), kind=st.sampled_from(KINDS),
                  seed=st.integers(0, 99))
def test_random_shapes_forward(attention_cases, q_len, kv_len, kv_heads, head_dim, block,
                               kind, seed):
  q, k, v = attention_cases.make_inputs(seed, 1, q_len, kv_len, 2, kv_heads, head_dim)
  options = attention_cases.make_options(seed, 1, q_len, kv_len, 2, kind)
  blocks = BlockSizes(block_q=block, block_k=block, block_q_bwd=block, block_k_bwd=block)
  _check(attention_cases, q, k, v, options, block_sizes=blocks, grads=False)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_for_tpu(attention_cases, as_if_on_tpu, dtype):
  """Forward and backward pass Mosaic's lowering rules (block shapes, ops) with no TPU.

  The Python half of Mosaic lowering runs anywhere once the device kind reads as a TPU;
  the device-side Mosaic compiler still needs the hardware.
  """
  from kernels.attention.tpu import attention_tpu

  q, k, v = attention_cases.make_inputs(3, 2, 200, 300, 4, 2, 80, dtype)
  options = attention_cases.make_options(3, 2, 200, 300, 4, "all")
  q_seg, kv_seg = options.pop("segment_ids")

  def loss(q, k, v):
    out = attention_tpu(q, k, v, mask=options["mask"], q_lengths=options["q_lengths"],
                        kv_lengths=options["kv_lengths"], q_segment_ids=q_seg,
                        kv_segment_ids=kv_seg, causal=True, scale=0.1, block_sizes=SMALL,
                        interpret=False)
    return jnp.sum(out.astype(jnp.float32))

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, v).lower(
      lowering_platforms=("tpu",))
  assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dq, dk/dv
