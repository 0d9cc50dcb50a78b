"""Blockwise attention in plain XLA: online-softmax forward, recomputing backward.

A backend of `kernels.attention.vjp` (the contract: `kernels.attention.spec`). Memory grows
linearly with sequence length: the forward keeps only the running row maxima, row sums and
output accumulator of one query block while it walks the key blocks, and returns the
log-sum-exp of every row; the backward recomputes each block's probabilities from `q`, `k`
and that log-sum-exp. Key blocks outside a causal or windowed band are skipped (the loops'
bounds), not masked.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> from kernels.attention import BlockSizes
>>> q = k = v = jax.random.normal(jax.random.key(0), (1, 300, 4, 64))
>>> out = kernels.attention(q, k, v, causal=True, impl="xla_chunked",
...                         block_sizes=BlockSizes(block_q=128, block_k=128))

References:
  Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
  Partitioning", 2023, Algorithms 1 (forward) and 2 (backward).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels._indexing import as_int32
from kernels._tiling import pad_axis, round_up
from kernels.attention.block_sizes import BlockSizes
from kernels.attention.reference import allowed_mask
from kernels.attention.spec import Masks, Spec, kv_block_range, q_block_range, soft_cap, soft_cap_grad

__all__ = ["backward", "forward"]


class _Blocks(NamedTuple):
  """The tiles, clipped to the sequence lengths."""

  q: int
  k: int
  q_bwd: int
  k_bwd: int


def _clip(block: int, block_bwd: int, length: int) -> tuple[int, int]:
  """Clips two power-of-two tiles to `length`, keeping one a multiple of the other."""
  smaller = min(block, block_bwd)
  if smaller >= length:
    return length, length
  limit = round_up(length, smaller)
  return min(block, limit), min(block_bwd, limit)


class _Layout(NamedTuple):
  """The padded, grouped operands: `[B, Hkv, G, T, D]` queries, `[B, Hkv, T, D]` keys."""

  q: jax.Array
  k: jax.Array
  v: jax.Array
  bias: jax.Array | None  # [B or 1, Hkv or 1, G or 1, Tq', Tk']
  masks: dict
  blocks: _Blocks
  compute: jnp.dtype


def _layout(q, k, v, bias, masks: Masks, spec: Spec) -> _Layout:
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  group = q_heads // kv_heads
  tiles = spec.block_sizes or BlockSizes.default("cpu", head_dim, q.dtype)
  block_q, block_q_bwd = _clip(tiles.block_q, tiles.block_q_bwd, q_len)
  block_k, block_k_bwd = _clip(tiles.block_k, tiles.block_k_bwd, kv_len)
  blocks = _Blocks(block_q, block_k, block_q_bwd, block_k_bwd)
  q_pad = round_up(q_len, math.lcm(block_q, block_q_bwd))
  kv_pad = round_up(kv_len, math.lcm(block_k, block_k_bwd))
  kv_lengths = masks.kv_lengths
  if kv_pad != kv_len and kv_lengths is None:  # padded keys are cut by the lengths
    kv_lengths = jnp.full((batch,), kv_len, jnp.int32)
  mask = masks.mask
  if mask is not None:
    mask = pad_axis(mask, 2, q_pad if mask.shape[2] > 1 else 1)
    mask = pad_axis(mask, 3, kv_pad if mask.shape[3] > 1 else 1)
  padded = dict(mask=mask, q_lengths=masks.q_lengths, kv_lengths=kv_lengths,
                q_segment_ids=pad_axis(masks.q_segment_ids, 1, q_pad),
                kv_segment_ids=pad_axis(masks.kv_segment_ids, 1, kv_pad))
  q = pad_axis(q, 1, q_pad).reshape(batch, q_pad, kv_heads, group, head_dim)
  q = q.transpose(0, 2, 3, 1, 4)  # [B, Hkv, G, Tq', D]
  k, v = (pad_axis(x, 1, kv_pad).transpose(0, 2, 1, 3) for x in (k, v))  # [B, Hkv, Tk', D]
  if bias is not None:
    bias = pad_axis(pad_axis(bias, 2, q_pad), 3, kv_pad)  # [B or 1, Hq or 1, Tq', Tk']
    if bias.shape[1] == 1:
      bias = bias[:, :, None]
    else:
      bias = bias.reshape(bias.shape[0], kv_heads, group, q_pad, kv_pad)
  compute = jnp.float64 if q.dtype == jnp.float64 else jnp.float32
  return _Layout(q, k, v, bias, padded, blocks, compute)


def _block_allowed(masks: dict, spec: Spec, q_start, kv_start, block_q: int, block_k: int,
                   batch: int, kv_heads: int):
  """The allowed `[B, Hkv or 1, G or 1, block_q, block_k]` pairs of one tile, or None.

  The rules are those of `reference.allowed_mask`, applied to the tile's slices: lengths
  shift by the tile's start and the band becomes an explicit mask.
  """
  mask = masks["mask"]
  if mask is not None:
    zero = as_int32(0)
    starts = (zero, zero, q_start if mask.shape[2] > 1 else zero,
              kv_start if mask.shape[3] > 1 else zero)
    sizes = mask.shape[:2] + (min(block_q, mask.shape[2]), min(block_k, mask.shape[3]))
    mask = lax.dynamic_slice(mask, starts, sizes)  # [B or 1, Hq or 1, bq or 1, bk or 1]
  if spec.band is not None:
    in_band = spec.band.allows(q_start + jnp.arange(block_q, dtype=jnp.int32)[:, None],
                               kv_start + jnp.arange(block_k, dtype=jnp.int32)[None, :])
    mask = in_band[None, None] if mask is None else jnp.logical_and(mask, in_band)
  q_lengths, kv_lengths = masks["q_lengths"], masks["kv_lengths"]
  q_seg, kv_seg = masks["q_segment_ids"], masks["kv_segment_ids"]
  allowed = allowed_mask(
      batch, block_q, block_k, mask=mask,
      q_lengths=None if q_lengths is None else q_lengths - q_start,
      kv_lengths=None if kv_lengths is None else kv_lengths - kv_start,
      q_segment_ids=None if q_seg is None else lax.dynamic_slice_in_dim(q_seg, q_start,
                                                                        block_q, 1),
      kv_segment_ids=None if kv_seg is None else lax.dynamic_slice_in_dim(kv_seg, kv_start,
                                                                          block_k, 1))
  if allowed is None:
    return None
  if allowed.shape[1] == 1:
    return allowed[:, :, None]  # [B, 1, 1, bq, bk]
  return allowed.reshape(batch, kv_heads, -1, block_q, block_k)  # [B, Hkv, G, bq, bk]


def _capped_logits(layout: _Layout, spec: Spec, q_blk, k_blk, q_start, kv_start, block_q,
                   block_k):
  """`(t, logits)` of one tile: `t = cap(scale * q k^T)`, `logits = t + bias`, masked."""
  s = jnp.einsum("bhgqd,bhkd->bhgqk", q_blk, k_blk,
                 preferred_element_type=layout.compute) * spec.scale  # [B, Hkv, G, bq, bk]
  t = soft_cap(s, spec.soft_cap)
  logits = t
  if layout.bias is not None:
    bias = layout.bias
    zero = as_int32(0)
    bias = lax.dynamic_slice(bias, (zero, zero, zero, q_start, kv_start),
                             bias.shape[:3] + (block_q, block_k))
    logits = logits + bias.astype(layout.compute)
  allowed = _block_allowed(layout.masks, spec, q_start, kv_start, block_q, block_k,
                           q_blk.shape[0], q_blk.shape[1])
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  return t, logits


def forward(q, k, v, bias, masks: Masks, spec: Spec):
  """The online-softmax forward; see `kernels.attention.spec` for the contract.

  Returns:
    `(out [B, Tq, Hq, D] in q.dtype, lse [B, Hq, Tq])`, lse float32 (float64 for float64).
  """
  batch, q_len, q_heads, head_dim = q.shape
  layout = _layout(q, k, v, bias, masks, spec)
  qg, kt, vt = layout.q, layout.k, layout.v
  kv_heads, group, q_pad = qg.shape[1], qg.shape[2], qg.shape[3]
  block_q, block_k = layout.blocks.q, layout.blocks.k
  compute = layout.compute

  def q_block(i, carry):
    out, lse = carry
    q_start = as_int32(i * block_q)  # int32 in both modes, as the band's block range
    q_blk = lax.dynamic_slice_in_dim(qg, q_start, block_q, 3)  # [B, Hkv, G, bq, D]

    def kv_step(j, state):
      row_max, row_sum, acc = state  # [B, Hkv, G, bq], [B, Hkv, G, bq], [..., bq, D]
      kv_start = as_int32(j * block_k)
      k_blk = lax.dynamic_slice_in_dim(kt, kv_start, block_k, 2)  # [B, Hkv, bk, D]
      v_blk = lax.dynamic_slice_in_dim(vt, kv_start, block_k, 2)  # [B, Hkv, bk, D]
      _, s = _capped_logits(layout, spec, q_blk, k_blk, q_start, kv_start, block_q, block_k)
      new_max = jnp.maximum(row_max, s.max(-1))
      safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # rows masked so far
      p = jnp.exp(s - safe_max[..., None])  # [B, Hkv, G, bq, bk]
      correction = jnp.exp(row_max - safe_max)
      row_sum = correction * row_sum + p.sum(-1)
      pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(vt.dtype), v_blk,
                      preferred_element_type=compute)  # [B, Hkv, G, bq, D]
      return new_max, row_sum, correction[..., None] * acc + pv

    stats_shape = (batch, kv_heads, group, block_q)
    init = (jnp.full(stats_shape, -jnp.inf, compute), jnp.zeros(stats_shape, compute),
            jnp.zeros(stats_shape + (head_dim,), compute))
    first, stop = kv_block_range(spec.band, q_start, block_q, block_k, kt.shape[2] // block_k)
    row_max, row_sum, acc = lax.fori_loop(first, jnp.maximum(first, stop), kv_step, init)
    empty = row_sum == 0
    out_blk = acc / jnp.where(empty, 1.0, row_sum)[..., None]
    lse_blk = jnp.where(empty, -jnp.inf, row_max + jnp.log(jnp.where(empty, 1.0, row_sum)))
    out = lax.dynamic_update_slice_in_dim(out, out_blk.astype(out.dtype), q_start, 3)
    lse = lax.dynamic_update_slice_in_dim(lse, lse_blk, q_start, 3)
    return out, lse

  init = (jnp.zeros(qg.shape, q.dtype), jnp.zeros(qg.shape[:-1], compute))
  out, lse = lax.fori_loop(0, q_pad // block_q, q_block, init)  # [B, Hkv, G, Tq', (D)]
  out = out.transpose(0, 3, 1, 2, 4).reshape(batch, q_pad, q_heads, head_dim)[:, :q_len]
  return out, lse.reshape(batch, q_heads, q_pad)[:, :, :q_len]


def backward(q, k, v, bias, masks: Masks, spec: Spec, out, lse, d_out, delta,
             bias_grad: bool):
  """FlashAttention-2's backward: key blocks outside, query blocks inside, dq accumulated.

  See `kernels.attention.spec` for the contract; `out` is not needed (`delta` carries it).
  """
  del out
  batch, q_len, q_heads, head_dim = q.shape
  kv_len = k.shape[1]
  layout = _layout(q, k, v, bias, masks, spec)
  qg, kt, vt = layout.q, layout.k, layout.v
  kv_heads, group, q_pad = qg.shape[1], qg.shape[2], qg.shape[3]
  kv_pad = kt.shape[2]
  block_q, block_k = layout.blocks.q_bwd, layout.blocks.k_bwd
  compute = layout.compute

  def grouped(x):  # [B, Hq, Tq] -> [B, Hkv, G, Tq']
    return pad_axis(x.astype(compute), 2, q_pad).reshape(batch, kv_heads, group, q_pad)

  # Rows with nothing to attend have lse = -inf: +inf makes their p = exp(-inf) = 0.
  lse = grouped(jnp.where(jnp.isfinite(lse), lse, jnp.inf))
  delta = grouped(delta)
  do = pad_axis(d_out, 1, q_pad).reshape(batch, q_pad, kv_heads, group, head_dim)
  do = do.transpose(0, 2, 3, 1, 4)  # [B, Hkv, G, Tq', D]

  def kv_block(j, carry):
    dq, dk, dv, dbias = carry
    kv_start = as_int32(j * block_k)
    k_blk = lax.dynamic_slice_in_dim(kt, kv_start, block_k, 2)  # [B, Hkv, bk, D]
    v_blk = lax.dynamic_slice_in_dim(vt, kv_start, block_k, 2)  # [B, Hkv, bk, D]

    def q_step(i, state):
      dq, dk_blk, dv_blk, dbias = state
      q_start = as_int32(i * block_q)
      q_blk = lax.dynamic_slice_in_dim(qg, q_start, block_q, 3)  # [B, Hkv, G, bq, D]
      do_blk = lax.dynamic_slice_in_dim(do, q_start, block_q, 3)  # [B, Hkv, G, bq, D]
      lse_blk = lax.dynamic_slice_in_dim(lse, q_start, block_q, 3)  # [B, Hkv, G, bq]
      delta_blk = lax.dynamic_slice_in_dim(delta, q_start, block_q, 3)  # [B, Hkv, G, bq]
      t, logits = _capped_logits(layout, spec, q_blk, k_blk, q_start, kv_start, block_q,
                                 block_k)
      p = jnp.exp(logits - lse_blk[..., None])  # [B, Hkv, G, bq, bk]
      dv_blk += jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(do_blk.dtype), do_blk,
                           preferred_element_type=compute)  # [B, Hkv, bk, D]
      dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_blk, v_blk,
                      preferred_element_type=compute)  # [B, Hkv, G, bq, bk]
      d_logits = p * (dp - delta_blk[..., None])  # [B, Hkv, G, bq, bk]
      if dbias is not None:
        zero = as_int32(0)
        dbias = lax.dynamic_update_slice(dbias, d_logits, (zero, zero, zero, q_start, kv_start))
      ds = (d_logits * soft_cap_grad(t, spec.soft_cap) * spec.scale).astype(q.dtype)
      dk_blk += jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_blk, preferred_element_type=compute)
      dq_blk = lax.dynamic_slice_in_dim(dq, q_start, block_q, 3)
      dq_blk += jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_blk, preferred_element_type=compute)
      return lax.dynamic_update_slice_in_dim(dq, dq_blk, q_start, 3), dk_blk, dv_blk, dbias

    first, stop = q_block_range(spec.band, kv_start, block_k, block_q, q_pad // block_q)
    zeros = jnp.zeros(k_blk.shape, compute)
    dq, dk_blk, dv_blk, dbias = lax.fori_loop(first, jnp.maximum(first, stop), q_step,
                                              (dq, zeros, zeros, dbias))
    dk = lax.dynamic_update_slice_in_dim(dk, dk_blk.astype(dk.dtype), kv_start, 2)
    dv = lax.dynamic_update_slice_in_dim(dv, dv_blk.astype(dv.dtype), kv_start, 2)
    return dq, dk, dv, dbias

  dbias = None
  if bias_grad:
    dbias = jnp.zeros((batch, kv_heads, group, q_pad, kv_pad), compute)
  init = (jnp.zeros(qg.shape, compute), jnp.zeros(kt.shape, k.dtype), jnp.zeros(vt.shape, v.dtype),
          dbias)
  dq, dk, dv, dbias = lax.fori_loop(0, kv_pad // block_k, kv_block, init)
  dq = dq.transpose(0, 3, 1, 2, 4).reshape(batch, q_pad, q_heads, head_dim)[:, :q_len]
  dk, dv = (x.transpose(0, 2, 1, 3)[:, :kv_len] for x in (dk, dv))
  if dbias is not None:
    dbias = dbias.reshape(batch, q_heads, q_pad, kv_pad)[:, :, :q_len, :kv_len]
  return dq.astype(q.dtype), dk, dv, dbias
