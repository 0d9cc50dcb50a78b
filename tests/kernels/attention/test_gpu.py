"""The Pallas GPU (Triton) attention kernel, in interpret mode, against the float64 reference.

Interpret mode is slow to compile, so the shapes are tiny and mostly shared between cases
(the eager float64 reference then reuses its compiled ops).
"""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.attention import BlockSizes, allowed_mask
from kernels.attention.gpu import attention_gpu


BLOCKS = BlockSizes(16, 16, 16, 16)
# [B, Tq, Tk, Hq, Hkv, D]: lengths that are not block multiples, Tq != Tk, GQA.
SHAPE = (2, 37, 50, 4, 2, 16)


def _run(q, k, v, cotangent, block_sizes=BLOCKS, **options):
  """The kernel's output and d/d(q, k, v) of sum(out * cotangent)."""

  def loss(q, k, v):
    out = kernels.attention(q, k, v, impl="pallas_gpu", block_sizes=block_sizes, **options)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


def _check(cases, seed, shape, kind, dtype=jnp.float32, block_sizes=BLOCKS, **extra):
  """Forward and grads of one case against the float64 reference; returns them.

  Args:
    cases: the `attention_cases` fixture of conftest.py.
    seed: for the inputs, the options and the cotangent.
    shape: `(B, Tq, Tk, Hq, Hkv, D)`.
    kind: the options' kind for `cases.make_options`.
    dtype: of q, k, v.
    block_sizes: the kernel's tiles.
    **extra: options added to (or replacing) those of `kind`.
  """
  batch, q_len, kv_len, q_heads, kv_heads, head_dim = shape
  q, k, v = cases.make_inputs(seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim, dtype)
  options = cases.make_options(seed, batch, q_len, kv_len, q_heads, kind)
  options.update(extra)
  cotangent = jnp.asarray(np.random.default_rng(seed + 7).standard_normal(q.shape),
                          jnp.float32)
  out, grads = _run(q, k, v, cotangent, block_sizes, **options)
  tol = cases.TOLERANCE[dtype]
  assert out.dtype == q.dtype and out.shape == q.shape
  np.testing.assert_allclose(np.asarray(out, np.float64), cases.reference64(q, k, v, **options),
                             rtol=0, atol=tol["fwd"])
  expected = cases.reference64_grads(q, k, v, cotangent, **options)
  for name, grad, x, want in zip("qkv", grads, (q, k, v), expected):
    assert grad.dtype == x.dtype and grad.shape == x.shape, name
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=0, atol=tol["bwd"],
                               err_msg=f"d{name}")
  return out, grads, options


@pytest.mark.parametrize("kind", ["none", "causal", "lengths", "segments", "mask", "all"])
def test_mask_kinds(attention_cases, kind):
  _check(attention_cases, 0, SHAPE, kind)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision(attention_cases, dtype):
  _check(attention_cases, 1, SHAPE, "all", dtype)


def test_block_multiples_mqa_and_per_head_mask(attention_cases):
  """Tq == Tk == 2 blocks, one kv head for 4 query heads, a mask that differs per head."""
  shape = (1, 32, 32, 4, 1, 16)
  mask = jnp.asarray(np.random.default_rng(3).random((1, 4, 32, 32)) < 0.6)
  _check(attention_cases, 2, shape, "causal", mask=mask)


def test_head_dim_80_is_padded_and_broadcast_mask(attention_cases):
  """D = 80 runs padded to 128; a per-head key mask `[1, Hq, 1, Tk]` broadcast over rows."""
  mask = np.random.default_rng(3).random((1, 2, 1, 40)) < 0.7
  mask[0, 1, 0, :] = False  # head 1 attends nothing
  _check(attention_cases, 3, (1, 24, 40, 2, 2, 80), "all", mask=jnp.asarray(mask))


@pytest.mark.parametrize("block_sizes", [BlockSizes(16, 32, 32, 16), BlockSizes(32, 16, 16, 32)])
def test_unequal_blocks_causal(attention_cases, block_sizes):
  """block_q != block_k: the causal loop bounds of all three kernels."""
  _check(attention_cases, 4, SHAPE, "all", block_sizes=block_sizes)


def test_fully_masked_rows_are_zero_with_zero_grads(attention_cases):
  batch, q_len, kv_len, q_heads, kv_heads, head_dim = SHAPE
  mask = np.ones((batch, 1, q_len, kv_len), bool)
  mask[1, :, 5, :] = False  # one row with no key
  out, (dq, dk, dv), _ = _check(attention_cases, 5, SHAPE, "none", mask=jnp.asarray(mask),
                                kv_lengths=jnp.asarray([0, kv_len], jnp.int32),
                                q_lengths=jnp.asarray([q_len, 30], jnp.int32))
  out, dq, dk, dv = (np.asarray(x) for x in (out, dq, dk, dv))
  for x in (out, dq, dk, dv):
    assert np.isfinite(x).all()
  assert (out[0] == 0).all() and (dq[0] == 0).all()  # no key at all in example 0
  assert (dk[0] == 0).all() and (dv[0] == 0).all()
  assert (out[1, 5] == 0).all() and (dq[1, 5] == 0).all()  # the masked row
  assert (out[1, 30:] == 0).all() and (dq[1, 30:] == 0).all()  # rows past q_lengths


def test_direct_call_default_blocks_and_jit(attention_cases):
  """`attention_gpu` called as `kernels.attention` calls it, default blocks, outer jit."""
  q, k, v = attention_cases.make_inputs(6, 1, 16, 16, 2, 2, 16)
  call = jax.jit(lambda q, k, v: attention_gpu(
      q, k, v, causal=True, mask=None, q_lengths=None, kv_lengths=None, q_segment_ids=None,
      kv_segment_ids=None, scale=0.5, block_sizes=None, interpret=True))
  np.testing.assert_allclose(np.asarray(call(q, k, v), np.float64),
                             attention_cases.reference64(q, k, v, causal=True, scale=0.5), rtol=0,
                             atol=attention_cases.TOLERANCE[jnp.float32]["fwd"])


@hypothesis.settings(max_examples=10, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(seed=st.integers(0, 2**16), causal=st.booleans(),
                  density=st.floats(0.0, 1.0))
def test_random_masks(attention_cases, seed, causal, density):
  """Random lengths, segments and masks on one shape (so that compiles are reused).

  Densities near 0 and lengths of 0 give many rows with nothing to attend.
  """
  batch, q_len, kv_len, q_heads, kv_heads, head_dim = 2, 40, 24, 2, 1, 16  # Tq > Tk
  rng = np.random.default_rng(seed)
  options = dict(
      causal=causal,
      q_lengths=jnp.asarray(rng.integers(0, q_len + 1, batch), jnp.int32),
      kv_lengths=jnp.asarray(rng.integers(0, kv_len + 1, batch), jnp.int32),
      segment_ids=(jnp.asarray(np.sort(rng.integers(0, 3, (batch, q_len))), jnp.int32),
                   jnp.asarray(np.sort(rng.integers(0, 3, (batch, kv_len))), jnp.int32)),
      mask=jnp.asarray(rng.random((batch, 1, q_len, kv_len)) < density))
  q, k, v = attention_cases.make_inputs(seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim)
  cotangent = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
  out, grads = _run(q, k, v, cotangent, **options)
  tol = attention_cases.TOLERANCE[jnp.float32]
  np.testing.assert_allclose(np.asarray(out, np.float64),
                             attention_cases.reference64(q, k, v, **options),
                             rtol=0, atol=tol["fwd"])
  for grad, want in zip(grads, attention_cases.reference64_grads(q, k, v, cotangent, **options)):
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=0, atol=tol["bwd"])
  q_seg, kv_seg = options.pop("segment_ids")
  allowed = allowed_mask(batch, q_len, kv_len, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                         **options)  # [B, 1, Tq, Tk]
  empty = np.asarray(~jnp.any(allowed, axis=-1))[:, 0]  # [B, Tq]
  assert (np.asarray(out)[empty] == 0).all() and (np.asarray(grads[0])[empty] == 0).all()


@pytest.mark.parametrize("dtype,head_dim", [(jnp.bfloat16, 128), (jnp.float16, 80),
                                            (jnp.float32, 64)])
def test_lowers_for_cuda(attention_cases, as_if_on_gpu, dtype, head_dim):
  """Forward and both backward kernels build Triton IR for a CUDA target, with no GPU.

  Lowering runs the Pallas-to-Triton rules (power-of-two shapes, supported ops, index
  maps) on the CPU for an abstract H100; only the PTX compile that follows needs the
  hardware.
  """
  q, k, v = attention_cases.make_inputs(7, 2, 200, 300, 4, 2, head_dim, dtype)
  options = attention_cases.make_options(7, 2, 200, 300, 4, "all")
  q_seg, kv_seg = options.pop("segment_ids")

  def loss(q, k, v):
    out = attention_gpu(q, k, v, causal=True, mask=options["mask"],
                        q_lengths=options["q_lengths"], kv_lengths=options["kv_lengths"],
                        q_segment_ids=q_seg, kv_segment_ids=kv_seg, scale=0.1,
                        block_sizes=None, interpret=False)
    return jnp.sum(out.astype(jnp.float32))

  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, v).lower(
      lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 3  # forward, dq, dk/dv
