"""Blockwise attention in plain XLA: online softmax forward, recomputing backward.

Memory grows linearly with sequence length: the forward keeps only running row maxima,
row sums and the output accumulator of one query block while it walks the key blocks,
and saves the log-sum-exp of every row; the backward recomputes each block's
probabilities from `q`, `k` and that log-sum-exp. Causal attention skips the key blocks
that lie wholly above the diagonal.

>>> import jax, jax.numpy as jnp
>>> from kernels.attention import BlockSizes
>>> from kernels.attention.chunked import attention_chunked
>>> q = k = v = jax.random.normal(jax.random.key(0), (1, 300, 4, 64))
>>> out = attention_chunked(q, k, v, causal=True, mask=None, q_lengths=None,
...                         kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
...                         scale=0.125, block_sizes=BlockSizes(block_q=128, block_k=128))

References:
  Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
  Partitioning", 2023, Algorithms 1 (forward) and 2 (backward).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels.attention.block_sizes import BlockSizes
from kernels.attention.reference import allowed_mask

__all__ = ["attention_chunked"]


def attention_chunked(q, k, v, *, causal: bool, mask, q_lengths, kv_lengths, q_segment_ids,
                      kv_segment_ids, scale: float, block_sizes: BlockSizes) -> jax.Array:
  """Attention with the semantics of `attention_reference`, in memory linear in length.

  Args:
    q: `[B, Tq, Hq, D]`, float16, bfloat16, float32 or float64.
    k: `[B, Tk, Hkv, D]`, the dtype of `q`, `Hq % Hkv == 0`.
    v: `[B, Tk, Hkv, D]`, the dtype of `q`.
    causal: allow only keys `j <= i`.
    mask: None or bool `[B or 1, Hq or 1, Tq, Tk]`.
    q_lengths, kv_lengths: None or int32 `[B]`.
    q_segment_ids, kv_segment_ids: None or int32 `[B, Tq]` and `[B, Tk]`.
    scale: the logit scale.
    block_sizes: `block_q`/`block_k` tile the forward, `block_q_bwd`/`block_k_bwd` the
      backward; tiles longer than the sequence shrink to it, and the sequences are padded
      to a multiple of the tiles (the padding masked).

  Returns:
    `[B, Tq, Hq, D]` in `q.dtype`; rows with nothing to attend are 0.
  """
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  block_q, block_q_bwd = _clip(block_sizes.block_q, block_sizes.block_q_bwd, q_len)
  block_k, block_k_bwd = _clip(block_sizes.block_k, block_sizes.block_k_bwd, kv_len)
  blocks = _Blocks(block_q, block_k, block_q_bwd, block_k_bwd)
  q_pad = _round_up(q_len, blocks.q_multiple) - q_len
  kv_pad = _round_up(kv_len, blocks.kv_multiple) - kv_len
  if kv_pad and kv_lengths is None:
    kv_lengths = jnp.full((batch,), kv_len, jnp.int32)
  masks = dict(mask=mask, q_lengths=q_lengths, kv_lengths=kv_lengths,
               q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
  if q_pad or kv_pad:
    masks = _pad_masks(masks, q_pad, kv_pad)
  group = q_heads // kv_heads
  q = jnp.pad(q, ((0, 0), (0, q_pad), (0, 0), (0, 0)))
  q = q.reshape(batch, q_len + q_pad, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
  k, v = (jnp.pad(x, ((0, 0), (0, kv_pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
          for x in (k, v))
  out = _attention(q, k, v, masks, causal, float(scale), blocks)  # [B, Hkv, G, Tq', D]
  out = out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len + q_pad, q_heads, head_dim)
  return out[:, :q_len]


class _Blocks(NamedTuple):
  """The tiles, clipped to the sequence lengths (hashable, for `nondiff_argnums`)."""

  q: int
  k: int
  q_bwd: int
  k_bwd: int

  @property
  def q_multiple(self) -> int:
    return math.lcm(self.q, self.q_bwd)

  @property
  def kv_multiple(self) -> int:
    return math.lcm(self.k, self.k_bwd)


def _clip(block: int, block_bwd: int, length: int) -> tuple[int, int]:
  """Clips two power-of-two tiles to `length`, keeping one a multiple of the other."""
  smaller = min(block, block_bwd)
  if smaller >= length:
    return length, length
  limit = _round_up(length, smaller)
  return min(block, limit), min(block_bwd, limit)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pad_masks(masks: dict, q_pad: int, kv_pad: int) -> dict:
  """Pads the mask arrays to the padded lengths; padded keys are cut by `kv_lengths`."""
  padded = dict(masks)
  if masks["mask"] is not None:
    mask = masks["mask"]
    pads = [(0, 0), (0, 0), (0, q_pad if mask.shape[2] > 1 else 0),
            (0, kv_pad if mask.shape[3] > 1 else 0)]
    padded["mask"] = jnp.pad(mask, pads)
  if masks["q_segment_ids"] is not None:
    padded["q_segment_ids"] = jnp.pad(masks["q_segment_ids"], ((0, 0), (0, q_pad)))
    padded["kv_segment_ids"] = jnp.pad(masks["kv_segment_ids"], ((0, 0), (0, kv_pad)))
  return padded


def _block_allowed(masks: dict, causal: bool, q_start, kv_start, block_q: int, block_k: int,
                   batch: int, kv_heads: int):
  """The allowed `[B, Hkv or 1, G or 1, block_q, block_k]` pairs of one tile, or None.

  The rules are those of `reference.allowed_mask`, applied to the tile's slices: lengths
  shift by the tile's start and causality becomes an explicit mask.
  """
  mask = masks["mask"]
  if mask is not None:
    starts = (0, 0, q_start if mask.shape[2] > 1 else 0, kv_start if mask.shape[3] > 1 else 0)
    sizes = mask.shape[:2] + (min(block_q, mask.shape[2]), min(block_k, mask.shape[3]))
    mask = lax.dynamic_slice(mask, starts, sizes)  # [B or 1, Hq or 1, bq or 1, bk or 1]
  if causal:
    below = (kv_start + jnp.arange(block_k)[None, :]
             <= q_start + jnp.arange(block_q)[:, None])[None, None]  # [1, 1, bq, bk]
    mask = below if mask is None else jnp.logical_and(mask, below)
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


def _logits(q_block, k_block, scale, allowed, compute):
  s = jnp.einsum("bhgqd,bhkd->bhgqk", q_block, k_block,
                 preferred_element_type=compute) * scale  # [B, Hkv, G, bq, bk]
  if allowed is not None:
    s = jnp.where(allowed, s, -jnp.inf)
  return s


def _compute_dtype(dtype):
  return jnp.float64 if dtype == jnp.float64 else jnp.float32


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, masks, causal, scale, blocks):
  return _forward(q, k, v, masks, causal, scale, blocks)[0]


def _forward(q, k, v, masks, causal, scale, blocks):
  """Online-softmax forward over `[B, Hkv, G, T, D]` queries; returns (out, lse)."""
  batch, kv_heads, group, q_len, head_dim = q.shape
  kv_len = k.shape[2]
  block_q, block_k = blocks.q, blocks.k
  num_kv_blocks = kv_len // block_k
  compute = _compute_dtype(q.dtype)

  def q_block(i, carry):
    out, lse = carry
    q_start = i * block_q
    q_blk = lax.dynamic_slice_in_dim(q, q_start, block_q, 3)  # [B, Hkv, G, bq, D]

    def kv_step(j, state):
      row_max, row_sum, acc = state  # [B, Hkv, G, bq], [B, Hkv, G, bq], [..., bq, D]
      kv_start = j * block_k
      k_blk = lax.dynamic_slice_in_dim(k, kv_start, block_k, 2)  # [B, Hkv, bk, D]
      v_blk = lax.dynamic_slice_in_dim(v, kv_start, block_k, 2)  # [B, Hkv, bk, D]
      allowed = _block_allowed(masks, causal, q_start, kv_start, block_q, block_k, batch,
                               kv_heads)
      s = _logits(q_blk, k_blk, scale, allowed, compute)  # [B, Hkv, G, bq, bk]
      new_max = jnp.maximum(row_max, s.max(-1))
      safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # rows masked so far
      p = jnp.exp(s - safe_max[..., None])  # [B, Hkv, G, bq, bk]
      correction = jnp.exp(row_max - safe_max)
      row_sum = correction * row_sum + p.sum(-1)
      pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), v_blk,
                      preferred_element_type=compute)  # [B, Hkv, G, bq, D]
      return new_max, row_sum, correction[..., None] * acc + pv

    stats_shape = (batch, kv_heads, group, block_q)
    init = (jnp.full(stats_shape, -jnp.inf, compute), jnp.zeros(stats_shape, compute),
            jnp.zeros(stats_shape + (head_dim,), compute))
    stop = num_kv_blocks
    if causal:
      stop = jnp.minimum(num_kv_blocks, (q_start + block_q - 1) // block_k + 1)
    row_max, row_sum, acc = lax.fori_loop(0, stop, kv_step, init)
    empty = row_sum == 0
    out_blk = acc / jnp.where(empty, 1.0, row_sum)[..., None]
    lse_blk = jnp.where(empty, jnp.inf, row_max + jnp.log(jnp.where(empty, 1.0, row_sum)))
    out = lax.dynamic_update_slice_in_dim(out, out_blk.astype(out.dtype), q_start, 3)
    lse = lax.dynamic_update_slice_in_dim(lse, lse_blk, q_start, 3)
    return out, lse

  init = (jnp.zeros(q.shape, q.dtype), jnp.zeros(q.shape[:-1], compute))
  return lax.fori_loop(0, q_len // block_q, q_block, init)


def _attention_fwd(q, k, v, masks, causal, scale, blocks):
  out, lse = _forward(q, k, v, masks, causal, scale, blocks)
  return out, (q, k, v, masks, out, lse)


def _attention_bwd(causal, scale, blocks, residuals, d_out):
  """FlashAttention-2 backward: key blocks outside, query blocks inside, dQ accumulated."""
  q, k, v, masks, out, lse = residuals
  batch, kv_heads, group, q_len, head_dim = q.shape
  kv_len = k.shape[2]
  block_q, block_k = blocks.q_bwd, blocks.k_bwd
  compute = _compute_dtype(q.dtype)
  delta = jnp.sum(d_out.astype(compute) * out.astype(compute), -1)  # [B, Hkv, G, Tq]

  def kv_block(j, carry):
    dq, dk, dv = carry
    kv_start = j * block_k
    k_blk = lax.dynamic_slice_in_dim(k, kv_start, block_k, 2)  # [B, Hkv, bk, D]
    v_blk = lax.dynamic_slice_in_dim(v, kv_start, block_k, 2)  # [B, Hkv, bk, D]

    def q_step(i, state):
      dq, dk_blk, dv_blk = state
      q_start = i * block_q
      q_blk = lax.dynamic_slice_in_dim(q, q_start, block_q, 3)  # [B, Hkv, G, bq, D]
      do_blk = lax.dynamic_slice_in_dim(d_out, q_start, block_q, 3)  # [B, Hkv, G, bq, D]
      lse_blk = lax.dynamic_slice_in_dim(lse, q_start, block_q, 3)  # [B, Hkv, G, bq]
      delta_blk = lax.dynamic_slice_in_dim(delta, q_start, block_q, 3)  # [B, Hkv, G, bq]
      allowed = _block_allowed(masks, causal, q_start, kv_start, block_q, block_k, batch,
                               kv_heads)
      s = _logits(q_blk, k_blk, scale, allowed, compute)  # [B, Hkv, G, bq, bk]
      p = jnp.exp(s - lse_blk[..., None])  # empty rows: lse = inf, p = 0
      dv_blk += jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(do_blk.dtype), do_blk,
                           preferred_element_type=compute)  # [B, Hkv, bk, D]
      dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_blk, v_blk,
                      preferred_element_type=compute)  # [B, Hkv, G, bq, bk]
      ds = (p * (dp - delta_blk[..., None]) * scale).astype(q.dtype)  # [B, Hkv, G, bq, bk]
      dk_blk += jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_blk, preferred_element_type=compute)
      dq_blk = lax.dynamic_slice_in_dim(dq, q_start, block_q, 3)
      dq_blk += jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_blk, preferred_element_type=compute)
      return lax.dynamic_update_slice_in_dim(dq, dq_blk, q_start, 3), dk_blk, dv_blk

    start = kv_start // block_q if causal else 0
    zeros = jnp.zeros(k_blk.shape, compute)
    dq, dk_blk, dv_blk = lax.fori_loop(start, q_len // block_q, q_step, (dq, zeros, zeros))
    dk = lax.dynamic_update_slice_in_dim(dk, dk_blk.astype(dk.dtype), kv_start, 2)
    dv = lax.dynamic_update_slice_in_dim(dv, dv_blk.astype(dv.dtype), kv_start, 2)
    return dq, dk, dv

  init = (jnp.zeros(q.shape, compute), jnp.zeros(k.shape, k.dtype), jnp.zeros(v.shape, v.dtype))
  dq, dk, dv = lax.fori_loop(0, kv_len // block_k, kv_block, init)
  return dq.astype(q.dtype), dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)
