"""The Pallas GPU (Triton) attention kernels, in interpret mode, against the float64 reference.

What every blockwise path shares (windows, soft cap, bias and its gradient, bottom-right
alignment, the log-sum-exp) is tested in test_options.py; here are the GPU kernels' own
cases: block shapes and padding, head-dim padding, fully masked rows, low precision, and
the lowering for CUDA. Interpret mode is slow to compile, so the shapes are tiny and mostly
shared between cases (the eager float64 reference then reuses its compiled ops).
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
from kernels.attention.reference import attention_reference
from kernels.attention.spec import Masks, Spec, make_band
from kernels.attention.vjp import blockwise_attention

BLOCKS = BlockSizes(16, 16, 16, 16)
# [B, Tq, Tk, Hq, Hkv, D]: lengths that are not block multiples, Tq != Tk, GQA.
SHAPE = (2, 37, 50, 4, 2, 16)


def _make_bias(seed: int, shape, dtype=jnp.float32):
  """A random normal bias of `shape` (broadcastable to `[B, Hq, Tq, Tk]`)."""
  return jnp.asarray(np.random.default_rng(seed + 2000).standard_normal(shape), dtype)


def _run(q, k, v, bias, cotangent, block_sizes=BLOCKS, **options):
  """The kernel's output and d/d(q, k, v[, bias]) of sum(out * cotangent)."""
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)

  def loss(q, k, v, bias):
    out = kernels.attention(q, k, v, bias, impl="pallas_gpu", block_sizes=block_sizes,
                            **options)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  (_, out), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(q, k, v, bias)
  return out, grads


def _check(cases, seed, shape, kind, dtype=jnp.float32, block_sizes=BLOCKS, bias=None,
           **extra):
  """Forward and grads of one case against the float64 reference; returns them.

  Args:
    cases: the `attention_cases` fixture of conftest.py.
    seed: for the inputs, the options and the cotangent.
    shape: `(B, Tq, Tk, Hq, Hkv, D)`.
    kind: the options' kind for `cases.make_options`.
    dtype: of q, k, v.
    block_sizes: the kernel's tiles.
    bias: None or a bias, differentiated too.
    **extra: options added to (or replacing) those of `kind`.
  """
  batch, q_len, kv_len, q_heads, kv_heads, head_dim = shape
  q, k, v = cases.make_inputs(seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim, dtype)
  options = cases.make_options(seed, batch, q_len, kv_len, q_heads, kind)
  options.update(extra)
  cotangent = jnp.asarray(np.random.default_rng(seed + 7).standard_normal(q.shape),
                          jnp.float32)
  out, grads = _run(q, k, v, bias, cotangent, block_sizes, **options)
  expected_out, _, expected_grads = cases.reference64_full(q, k, v, cotangent, bias=bias,
                                                          **options)
  tol = cases.TOLERANCE[dtype]
  assert out.dtype == q.dtype and out.shape == q.shape
  np.testing.assert_allclose(np.asarray(out, np.float64), expected_out, rtol=0,
                             atol=tol["fwd"])
  for name, grad, x, want in zip(("q", "k", "v", "bias"), grads, (q, k, v, bias),
                                 expected_grads):
    assert grad.dtype == x.dtype and grad.shape == x.shape, name
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=0, atol=tol["bwd"],
                               err_msg=f"d{name}")
  return out, grads, options


@pytest.mark.parametrize("kind", ["none", "causal", "lengths", "segments", "mask", "all"])
def test_mask_kinds(attention_cases, kind):
  _check(attention_cases, 0, SHAPE, kind)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision(attention_cases, dtype):
  """16-bit inputs with every mask, a window, a soft cap and a 16-bit bias."""
  batch, q_len, kv_len, q_heads = SHAPE[:4]
  _check(attention_cases, 1, SHAPE, "all", dtype,
         bias=_make_bias(1, (batch, 1, q_len, kv_len), dtype), local_window_size=(20, 4),
         logits_soft_cap=3.0)


def test_block_multiples_mqa_and_per_head_mask(attention_cases):
  """Tq == Tk == 2 blocks, one kv head for 4 query heads, a mask that differs per head."""
  shape = (1, 32, 32, 4, 1, 16)
  mask = jnp.asarray(np.random.default_rng(3).random((1, 4, 32, 32)) < 0.6)
  _check(attention_cases, 2, shape, "causal", mask=mask)


def test_head_dim_80_is_padded_and_broadcast_mask(attention_cases):
  """D = 80 runs padded to 128; a per-head key mask `[1, Hq, 1, Tk]` broadcast over rows."""
  mask = np.random.default_rng(3).random((1, 2, 1, 40)) < 0.7
  mask[0, 1, 0, :] = False  # head 1 attends nothing
  _check(attention_cases, 3, (1, 24, 40, 2, 2, 80), "all", mask=jnp.asarray(mask),
         bias=_make_bias(3, (1, 2, 24, 40)), logits_soft_cap=5.0)


@pytest.mark.parametrize("block_sizes", [BlockSizes(16, 32, 32, 16), BlockSizes(32, 16, 16, 32)])
@pytest.mark.parametrize("band", [dict(causal=True),
                                  dict(causal=True, causal_alignment="bottom_right",
                                       local_window_size=(9, 0)),
                                  dict(local_window_size=(3, 12))])
def test_unequal_blocks_and_bands(attention_cases, block_sizes, band):
  """block_q != block_k: the band's loop bounds of all three kernels, with a bias."""
  batch, q_len, kv_len, q_heads = SHAPE[:4]
  _check(attention_cases, 4, SHAPE, "all", block_sizes=block_sizes,
         bias=_make_bias(4, (1, q_heads, q_len, kv_len)), **band)


def test_bias_grad_of_padded_rows_right_of_every_key(attention_cases):
  """33 queries pad to 64 (forward tiles of 64), 17 keys to 32; with the window (0, 3) the
  dq program of the padded rows 48-63 sees a band that starts past the last key block
  (`kv_block_range` gives first 3 of 2 blocks): it writes zeros to exactly its 2 blocks.
  Every real row's bias gradient is 0 outside the band and on skipped blocks."""
  out, grads, _ = _check(attention_cases, 8, (2, 33, 17, 2, 2, 16), "none",
                         block_sizes=BlockSizes(64, 16, 16, 16),
                         bias=_make_bias(8, (2, 2, 33, 17)), local_window_size=(0, 3))
  dbias = np.asarray(grads[3])
  band = np.asarray(make_band(33, 17, local_window_size=(0, 3)).allows(
      np.arange(33)[:, None], np.arange(17)[None, :]))
  assert (dbias[:, :, ~band] == 0).all() and (dbias[:, :, band] != 0).any()


def test_fully_masked_rows_are_zero_with_zero_grads(attention_cases):
  batch, q_len, kv_len, q_heads, kv_heads, head_dim = SHAPE
  mask = np.ones((batch, 1, q_len, kv_len), bool)
  mask[1, :, 5, :] = False  # one row with no key
  out, (dq, dk, dv, dbias), _ = _check(
      attention_cases, 5, SHAPE, "none", mask=jnp.asarray(mask),
      bias=_make_bias(5, (batch, 1, q_len, kv_len)),
      kv_lengths=jnp.asarray([0, kv_len], jnp.int32),
      q_lengths=jnp.asarray([q_len, 30], jnp.int32))
  out, dq, dk, dv, dbias = (np.asarray(x) for x in (out, dq, dk, dv, dbias))
  for x in (out, dq, dk, dv, dbias):
    assert np.isfinite(x).all()
  assert (out[0] == 0).all() and (dq[0] == 0).all()  # no key at all in example 0
  assert (dk[0] == 0).all() and (dv[0] == 0).all() and (dbias[0] == 0).all()
  assert (out[1, 5] == 0).all() and (dq[1, 5] == 0).all()  # the masked row
  assert (dbias[1, :, 5] == 0).all()
  assert (out[1, 30:] == 0).all() and (dq[1, 30:] == 0).all()  # rows past q_lengths
  assert (dbias[1, :, 30:] == 0).all()


def test_contract_default_blocks_jit_and_lse(attention_cases):
  """`blockwise_attention` on this backend as the front end calls it, the default (GPU
  table) tiles (`block_sizes=None`), under an outer jit: out and the log-sum-exp."""
  q, k, v = attention_cases.make_inputs(6, 1, 16, 24, 2, 2, 16)
  spec = Spec(scale=0.5, band=make_band(16, 24, causal=True, causal_alignment="bottom_right"),
              soft_cap=4.0, block_sizes=None, interpret=True)
  call = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, None, Masks(), spec,
                                                     "pallas_gpu"))
  out, lse = call(q, k, v)
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(x, np.float64)) for x in (q, k, v)]
    want_out, want_lse = attention_reference(
        *args, causal=True, causal_alignment="bottom_right", logits_soft_cap=4.0, scale=0.5,
        return_residual=True)
  tol = attention_cases.TOLERANCE[jnp.float32]["fwd"]
  assert lse.dtype == jnp.float32 and lse.shape == (1, 2, 16)  # [B, Hq, Tq]
  np.testing.assert_allclose(np.asarray(out, np.float64), want_out, rtol=0, atol=tol)
  np.testing.assert_allclose(np.asarray(lse, np.float64), np.swapaxes(want_lse, 1, 2),
                             rtol=0, atol=tol)


@hypothesis.settings(max_examples=10, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(seed=st.integers(0, 2**16), causal=st.booleans(),
                  window=st.sampled_from([None, (4, 0), (2, 9)]),
                  alignment=st.sampled_from(["top_left", "bottom_right"]),
                  density=st.floats(0.0, 1.0))
def test_random_masks(attention_cases, seed, causal, window, alignment, density):
  """Random lengths, segments, masks and bands on one shape (so that compiles are reused).

  Densities near 0, lengths of 0 and narrow windows give many rows with nothing to attend.
  """
  batch, q_len, kv_len, q_heads, kv_heads, head_dim = 2, 40, 24, 2, 1, 16  # Tq > Tk
  rng = np.random.default_rng(seed)
  options = dict(
      causal=causal, local_window_size=window, causal_alignment=alignment,
      q_lengths=jnp.asarray(rng.integers(0, q_len + 1, batch), jnp.int32),
      kv_lengths=jnp.asarray(rng.integers(0, kv_len + 1, batch), jnp.int32),
      segment_ids=(jnp.asarray(np.sort(rng.integers(0, 3, (batch, q_len))), jnp.int32),
                   jnp.asarray(np.sort(rng.integers(0, 3, (batch, kv_len))), jnp.int32)),
      mask=jnp.asarray(rng.random((batch, 1, q_len, kv_len)) < density))
  q, k, v = attention_cases.make_inputs(seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim)
  cotangent = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
  out, grads = _run(q, k, v, None, cotangent, **options)
  expected_out, _, expected_grads = attention_cases.reference64_full(q, k, v, cotangent,
                                                                    **options)
  tol = attention_cases.TOLERANCE[jnp.float32]
  np.testing.assert_allclose(np.asarray(out, np.float64), expected_out, rtol=0,
                             atol=tol["fwd"])
  for grad, want in zip(grads, expected_grads):
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=0, atol=tol["bwd"])
  q_seg, kv_seg = options.pop("segment_ids")
  allowed = allowed_mask(batch, q_len, kv_len, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                         **options)  # [B, 1, Tq, Tk]
  empty = np.asarray(~jnp.any(allowed, axis=-1))[:, 0]  # [B, Tq]
  assert (np.asarray(out)[empty] == 0).all() and (np.asarray(grads[0])[empty] == 0).all()


@pytest.mark.parametrize("dtype,head_dim,options", [
    (jnp.bfloat16, 128, dict(causal=True)),
    (jnp.float16, 80, dict(causal=True)),
    (jnp.float32, 64, dict(causal=True)),
    (jnp.bfloat16, 64, dict(causal=True, causal_alignment="bottom_right",
                            local_window_size=(64, 0), logits_soft_cap=30.0, bias=True)),
])
def test_lowers_for_cuda(attention_cases, as_if_on_gpu, dtype, head_dim, options):
  """Forward and both backward kernels build Triton IR for a CUDA target, with no GPU.

  Lowering runs the Pallas-to-Triton rules (power-of-two shapes, supported ops, index
  maps) on the CPU for an abstract H100; only the PTX compile that follows needs the
  hardware. The bias case differentiates the bias: its gradient is a second output of the
  dq kernel, not a kernel of its own.
  """
  q, k, v = attention_cases.make_inputs(7, 2, 200, 300, 4, 2, head_dim, dtype)
  masks = attention_cases.make_options(7, 2, 200, 300, 4, "all")
  masks.pop("causal")
  options = dict(options)
  bias = _make_bias(7, (2, 1, 200, 300), dtype) if options.pop("bias", False) else None
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)

  def loss(q, k, v, bias):
    out = kernels.attention(q, k, v, bias, impl="pallas_gpu", scale=0.1, interpret=False,
                            **masks, **options)
    return jnp.sum(out.astype(jnp.float32))

  text = jax.jit(jax.grad(loss, argnums=argnums)).trace(q, k, v, bias).lower(
      lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 3  # forward, dq (and dbias), dk/dv
