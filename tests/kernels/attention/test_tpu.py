"""The Mosaic TPU attention kernels against the float64 reference, in TPU interpret mode.

Every case goes through the public `kernels.attention(..., impl="pallas_tpu")`, which on the
CPU runs the kernels with `interpret=pltpu.InterpretParams()`. Interpret mode compiles
slowly (seconds per shape), so the shapes are tiny and each case checks forward, lse and
gradients from one `jax.vjp`. The options every path shares (windows, soft cap, bias,
bottom-right causal, lse) are tested in test_options.py; here are the TPU kernels' own
concerns: masks and padding at odd shapes, the block ranges that skip work, that skipped
blocks are never read, and that the kernels pass Mosaic's lowering.
"""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels._tiling import round_up
from kernels.attention import BlockSizes, allowed_mask, tpu
from kernels.attention.spec import make_band

SMALL = BlockSizes(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)
KINDS = ("none", "causal", "lengths", "segments", "mask", "all")
# Options of the reference that are not masks (`allowed_mask` does not take them).
_NOT_MASKS = ("scale", "logits_soft_cap")


def _reference_options(options: dict) -> dict:
  """Public-API options as the reference takes them (segment pair split)."""
  options = dict(options)
  segment_ids = options.pop("segment_ids", None)
  if segment_ids is not None:
    options["q_segment_ids"], options["kv_segment_ids"] = segment_ids
  return options


def _empty_rows(q, k, options):
  """Bool `[B, Hq or 1, Tq]`: query rows with nothing to attend (or None)."""
  options = {key: val for key, val in _reference_options(options).items()
             if key not in _NOT_MASKS}
  allowed = allowed_mask(q.shape[0], q.shape[1], k.shape[1], **options)
  return None if allowed is None else np.asarray(~jnp.any(allowed, axis=-1))


def _check(cases, q, k, v, options, bias=None, block_sizes=SMALL):
  """Forward, lse and the gradients of sum(out * cotangent) against the float64 reference.

  Returns the output and the gradients (dq, dk, dv and dbias when `bias` is given), numpy
  float32.
  """
  tol = cases.TOLERANCE[q.dtype.type]

  def f(q, k, v, bias):
    return kernels.attention(q, k, v, bias, impl="pallas_tpu", block_sizes=block_sizes,
                             return_residual=True, **options)

  if bias is None:
    (out, lse), vjp = jax.vjp(lambda q, k, v: f(q, k, v, None), q, k, v)
  else:
    (out, lse), vjp = jax.vjp(f, q, k, v, bias)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert lse.shape == q.shape[:3] and lse.dtype == jnp.float32
  cotangent = jnp.asarray(np.random.default_rng(7).standard_normal(q.shape, np.float32),
                          q.dtype)
  want_out, want_lse, want_grads = cases.reference64_full(q, k, v, cotangent, bias=bias,
                                                         **options)
  out = np.asarray(out.astype(jnp.float32))
  np.testing.assert_allclose(out, want_out, atol=tol["fwd"], rtol=0)
  lse = np.asarray(lse)
  np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(want_lse))
  finite = np.isfinite(want_lse)
  np.testing.assert_allclose(lse[finite], want_lse[finite], atol=10 * tol["fwd"], rtol=0)
  empty = _empty_rows(q, k, options)  # [B, Hq or 1, Tq]
  rows = None
  if empty is not None:
    rows = np.broadcast_to(np.swapaxes(empty, 1, 2)[..., None], out.shape)  # [B, Tq, Hq, D]
    assert np.all(out[rows] == 0.0), "fully masked rows must be exactly 0"
    assert np.all(np.isneginf(lse[rows[..., 0]])), "fully masked rows have lse -inf"
  got = vjp((cotangent, jnp.zeros(lse.shape, jnp.float32)))
  got = [np.asarray(g.astype(jnp.float32)) for g in got]
  for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want_grads):
    assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(g, w, atol=tol["bwd"], rtol=1e-2 if name == "dbias" else 0,
                               err_msg=name)
  if rows is not None:
    assert np.all(got[0][rows] == 0.0), "fully masked rows pass no gradient"
  return out, got


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


@hypothesis.settings(max_examples=6, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(q_len=st.integers(1, 40), kv_len=st.integers(1, 40),
                  kv_heads=st.sampled_from([1, 2]), head_dim=st.sampled_from([8, 72]),
                  block=st.sampled_from([8, 16, 128]), kind=st.sampled_from(KINDS),
                  window=st.none() | st.tuples(st.integers(0, 24), st.integers(0, 24)),
                  alignment=st.sampled_from(["top_left", "bottom_right"]),
                  soft_cap=st.sampled_from([None, 2.0]), seed=st.integers(0, 99))
def test_random_shapes_and_bands(attention_cases, q_len, kv_len, kv_heads, head_dim, block,
                                 kind, window, alignment, soft_cap, seed):
  q, k, v = attention_cases.make_inputs(seed, 1, q_len, kv_len, 2, kv_heads, head_dim)
  options = attention_cases.make_options(seed, 1, q_len, kv_len, 2, kind)
  options.update(local_window_size=window, causal_alignment=alignment,
                 logits_soft_cap=soft_cap)
  blocks = BlockSizes(block_q=block, block_k=block, block_q_bwd=block, block_k_bwd=block)
  _check(attention_cases, q, k, v, options, block_sizes=blocks)


def _config(band, block_q, block_k, q_pad, kv_pad):
  return tpu._Config(scale=1.0, band=band, soft_cap=None, block_q=block_q, block_k=block_k,
                     num_q_blocks=q_pad // block_q, num_k_blocks=kv_pad // block_k, group=1,
                     has_bias=False, has_mask=False, has_segments=False)


def test_block_ranges_are_the_blocks_with_an_allowed_pair():
  """Each query block visits exactly the kv blocks that hold a pair its band and lengths
  allow (keys counted to the end of the block that holds the last valid one); the dk/dv
  kernel's query range covers every query block that visits its kv block; skipped steps
  point at a block inside the grid, and visited ones at themselves."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    q_len, kv_len = (int(x) for x in rng.integers(1, 70, 2))
    block_q, block_k = (int(x) for x in rng.choice([8, 16, 32], 2))
    window = None if rng.random() < 0.3 else tuple(int(x) for x in rng.integers(0, 40, 2))
    band = make_band(q_len, kv_len, causal=bool(rng.random() < 0.5), local_window_size=window,
                     causal_alignment=str(rng.choice(["top_left", "bottom_right"])))
    q_valid, kv_valid = int(rng.integers(0, q_len + 1)), int(rng.integers(0, kv_len + 1))
    q_pad, kv_pad = round_up(q_len, block_q), round_up(kv_len, block_k)
    cfg = _config(band, block_q, block_k, q_pad, kv_pad)
    lengths = jnp.asarray([q_valid], jnp.int32), jnp.asarray([kv_valid], jnp.int32)
    # Every block at once: the range functions are elementwise in the block index.
    # Every block at once (the range functions are elementwise in the block index), 16
    # of them whatever the case: one shape, so that the eager ops compile once.
    blocks = jnp.arange(16, dtype=jnp.int32)
    firsts, stops = (jnp.broadcast_to(x, (16,)) for x in tpu._kv_range(0, blocks, *lengths,
                                                                       cfg))
    q_firsts, q_stops = (jnp.broadcast_to(x, (16,)) for x in tpu._q_range(0, blocks, *lengths,
                                                                         cfg))

    rows, cols = np.arange(q_pad)[:, None], np.arange(kv_pad)[None, :]
    allowed = (rows < q_valid) & (cols < round_up(kv_valid, block_k))
    if band is not None and band.lower is not None:
      allowed &= cols - rows >= band.lower
    if band is not None and band.upper is not None:
      allowed &= cols - rows <= band.upper
    tiles = allowed.reshape(cfg.num_q_blocks, block_q, cfg.num_k_blocks, block_k)
    visits = tiles.any(axis=(1, 3))  # [q blocks, kv blocks]
    where = (q_len, kv_len, block_q, block_k, band, q_valid, kv_valid)
    for i in range(cfg.num_q_blocks):
      got = set(range(int(firsts[i]), int(stops[i])))
      assert got == set(np.flatnonzero(visits[i])), (where, i)
    for j in range(cfg.num_k_blocks):
      assert set(np.flatnonzero(visits[:, j])) <= set(range(int(q_firsts[j]), int(q_stops[j])))
    for first, stop, num in ((firsts, stops, cfg.num_k_blocks),
                             (q_firsts, q_stops, cfg.num_q_blocks)):
      x = blocks[:, None]  # every step, against every block's range
      nearest = np.asarray(tpu._nearest(x, first[None], stop[None], num))[:num, :num]
      assert np.all((0 <= nearest) & (nearest < num)), where
      visited = np.asarray((first[None] <= x) & (x < stop[None]))[:num, :num]
      assert np.all(np.where(visited, nearest == np.arange(num)[:, None], True)), where


@pytest.mark.parametrize("options,unseen", [
    (dict(causal=True), slice(16, None)),  # top-left: keys past the last query
    (dict(causal=True, causal_alignment="bottom_right", local_window_size=(8, 0)),
     slice(0, 32)),  # keys before the first query's window
])
def test_skipped_blocks_are_never_read(attention_cases, options, unseen):
  """NaN in the kv blocks no query block visits (keys, values and bias) leaves every
  result finite and equal to the reference's without them; their dk, dv and dbias are 0."""
  q, k, v = attention_cases.make_inputs(4, 1, 16, 64, 2, 1, 16)
  bias = jnp.asarray(np.random.default_rng(4).standard_normal((1, 2, 16, 64)), jnp.float32)
  poisoned = dict(k=k.at[:, unseen].set(jnp.nan), v=v.at[:, unseen].set(jnp.nan),
                  bias=bias.at[..., unseen].set(jnp.nan))
  cotangent = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape), jnp.float32)

  def loss(q, k, v, bias):
    out = kernels.attention(q, k, v, bias, impl="pallas_tpu", block_sizes=SMALL, **options)
    return jnp.sum(out * cotangent), out

  grads, out = jax.grad(loss, (0, 1, 2, 3), has_aux=True)(q, *poisoned.values())
  want_out, _, want_grads = attention_cases.reference64_full(q, k, v, cotangent, bias=bias,
                                                            **options)
  tol = attention_cases.TOLERANCE[jnp.float32]
  np.testing.assert_allclose(np.asarray(out), want_out, atol=tol["fwd"], rtol=0)
  for name, grad, want in zip(("dq", "dk", "dv", "dbias"), grads, want_grads):
    np.testing.assert_allclose(np.asarray(grad), want, atol=tol["bwd"], rtol=0, err_msg=name)
  assert np.all(np.asarray(grads[1])[:, unseen] == 0.0)
  assert np.all(np.asarray(grads[2])[:, unseen] == 0.0)
  assert np.all(np.asarray(grads[3])[..., unseen] == 0.0)


def _pallas_calls(jaxpr):
  """The `pallas_call` equations of `jaxpr` and of the jaxprs nested in it, in order."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      found.append(eqn)
      continue
    for param in eqn.params.values():
      for item in param if isinstance(param, (list, tuple)) else (param,):
        if isinstance(item, jex_core.ClosedJaxpr):
          found += _pallas_calls(item.jaxpr)
        elif isinstance(item, jex_core.Jaxpr):
          found += _pallas_calls(item)
  return found


@pytest.mark.parametrize("bias_grad", [False, True])
def test_bias_gradient_is_a_dq_output_only_when_asked(attention_cases, bias_grad):
  """Traced only: dq's kernel writes the bias gradient exactly when the bias is
  differentiated."""
  q, k, v = attention_cases.make_inputs(5, 1, 24, 40, 2, 1, 16)
  bias = jnp.zeros((1, 2, 24, 40), jnp.float32)

  def loss(q, k, v, bias):
    return jnp.sum(kernels.attention(q, k, v, bias, impl="pallas_tpu", block_sizes=SMALL,
                                     local_window_size=(4, 4)))

  argnums = (0, 1, 2, 3) if bias_grad else (0, 1, 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums))(q, k, v, bias).jaxpr
  outputs = {eqn.params["name"]: len(eqn.outvars) for eqn in _pallas_calls(jaxpr)}
  assert outputs == {"tpu_attention_fwd": 2, "tpu_attention_dq": 2 if bias_grad else 1,
                     "tpu_attention_dkdv": 2}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_for_tpu(attention_cases, as_if_on_tpu, dtype):
  """Forward and backward pass Mosaic's lowering rules (block shapes, ops) with no TPU,
  with every mask, a window, a soft cap, and a bias with its gradient.

  The Python half of Mosaic lowering runs anywhere once the device kind reads as a TPU;
  the device-side Mosaic compiler still needs the hardware.
  """
  q, k, v = attention_cases.make_inputs(3, 2, 200, 300, 4, 2, 80, dtype)
  options = attention_cases.make_options(3, 2, 200, 300, 4, "all")
  bias = jnp.asarray(np.random.default_rng(3).standard_normal((1, 4, 200, 300)), dtype)

  def loss(q, k, v, bias):
    out, lse = kernels.attention(
        q, k, v, bias, impl="pallas_tpu", interpret=False, block_sizes=SMALL, scale=0.1,
        causal_alignment="bottom_right", local_window_size=(64, 8), logits_soft_cap=30.0,
        return_residual=True, **options)
    return jnp.sum(out.astype(jnp.float32)) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, k, v, bias).lower(
      lowering_platforms=("tpu",))
  assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dq (+ dbias), dk/dv
