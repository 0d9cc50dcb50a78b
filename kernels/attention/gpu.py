"""FlashAttention-2 for GPUs in Pallas with the Triton lowering, forward and backward.

A backend of `kernels.attention.vjp` (the contract: `kernels.attention.spec`), reached
through `kernels.attention(..., impl="pallas_gpu")`:

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> q = k = v = jax.random.normal(jax.random.key(0), (2, 100, 4, 64), jnp.bfloat16)
>>> out = kernels.attention(q, k, v, causal=True, impl="pallas_gpu")  # [2, 100, 4, 64]

Three kernels: the forward (one program per query block, an online softmax over the key
blocks), dq (the same grid; it also writes the bias gradient) and dk/dv (one program per
key block and query head, a loop over the query blocks). The wrapper pads the sequences up
to whole blocks and the head dim up to a power of two (Triton's tensors must have
power-of-two sizes), so that the kernels only ever see whole tiles. Each block size is
shrunk to the next power of two of its sequence and raised to 16 (`tl.dot`'s minimum).

- A band (causal, sliding window, either alignment) bounds the loops: key blocks with no
  allowed pair are skipped (`spec.kv_block_range`, `spec.q_block_range`), those it cuts
  are masked. Absolute positions are unchanged by the padding at the end, so the band
  applies to the padded arrays as it is.
- Zero-padded head-dim columns change no logit and give zero output columns.
- Padded keys are masked through a per-key validity vector (as are keys past `kv_lengths`:
  those blocks are masked, not skipped); padded query rows are computed and sliced off.
- The kernels ignore `q_lengths`: the caller zeroes those rows and so their cotangents.

Masks reach the kernels as tiles: segment ids and key validity as int32 vectors, an
explicit mask as an int8 `[Tq, Tk]` array per (batch, head), the bias as a `[Tq, Tk]`
array per (batch, head) read in float32 (broadcast dims stay 1 and are indexed at 0).
Every masked logit is `-inf`; the running max is replaced by 0 where it is still `-inf`,
so a row with nothing to attend keeps `l = 0`, gives output 0 and `lse = -inf`. The
backward kernels read the log-sum-exp with `-inf` (and padded rows) replaced by `+inf`,
which makes every probability of such a row `exp(logit - inf) = 0`: no gradient.

References:
  Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
  Partitioning", 2023, https://arxiv.org/abs/2307.08691 (Algorithms 1 and 2).
  Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", 2024,
  https://arxiv.org/abs/2408.00118 (logit soft-capping).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from kernels._block_sizes import float32_dot_precision
from kernels._indexing import fori_loop
from kernels._tiling import next_power_of_2, pad_axis, round_up
from kernels.attention.block_sizes import BlockSizes
from kernels.attention.spec import (Band, Masks, Spec, kv_block_range, q_block_range,
                                    soft_cap, soft_cap_grad)

__all__ = ["backward", "forward"]

# Triton's `tl.dot` needs every dimension >= 16, and every tensor a power-of-two size.
_MIN_DIM = 16
_DEFAULT_NUM_WARPS = 4
_DEFAULT_NUM_STAGES = 2


@dataclasses.dataclass(frozen=True)
class _Options:
  """What every kernel computes with (static).

  Attributes:
    scale: the logit scale.
    band: the allowed diagonals, or None.
    cap: the logit soft cap, or None.
    precision: of the float32 dots (see `_dot`).
  """

  scale: float
  band: Band | None
  cap: float | None
  precision: Any


# ---------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------


def _dot(a, b, *, precision, trans_a=False, trans_b=False):
  """`a @ b` (optionally transposed), accumulated in float32.

  `precision` applies to float32 operands only (`kernels._block_sizes.float32_dot_precision`);
  16-bit operands always take the tensor cores' native 16-bit product.
  """
  return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b,
                   precision=precision if a.dtype == jnp.float32 else None)


def _load(ref, *index):
  """`ref[index]`, or None for an absent operand."""
  return None if ref is None else ref[index]


def _allowed(band, q_start, k_start, block_q, block_k, *, q_seg, kv_seg, kv_valid,
             mask_tile):
  """The `[block_q, block_k]` bool tile of allowed pairs, or None when all are allowed.

  Args:
    band: the allowed diagonals, or None.
    q_start, k_start: the first query row and key of the tile (int32).
    block_q, block_k: the tile's shape.
    q_seg, kv_seg: int32 `[block_q]` and `[block_k]` segment ids, or None.
    kv_valid: int32 `[block_k]`, nonzero for real keys, or None.
    mask_tile: int8 `[block_q, block_k]`, nonzero to attend, or None.
  """
  allowed = None

  def both(a, b):
    return b if a is None else jnp.logical_and(a, b)

  if band is not None:
    rows = q_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
    cols = k_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
    allowed = both(allowed, band.allows(rows, cols))  # [block_q, block_k]
  if q_seg is not None:
    allowed = both(allowed, q_seg[:, None] == kv_seg[None, :])  # [block_q, block_k]
  if kv_valid is not None:
    allowed = both(allowed, jnp.broadcast_to(kv_valid[None, :] != 0, (block_q, block_k)))
  if mask_tile is not None:
    allowed = both(allowed, mask_tile != 0)  # [block_q, block_k]
  return allowed


def _scores(q, k, opts: _Options):
  """`cap(scale * q k^T)`, float32 `[block_q, block_k]`, of `q [block_q, D]`, `k [block_k, D]`.

  The kernels compute it before they load the tile's masks and bias: loaded first, those
  stay live across the dot (for sm_90a, `python -m bench gpu-compile`: the 16-bit head dim
  64 forward with segment ids or a mask took 138-145 registers instead of 128, so 1 block
  per SM instead of 2, and some float32 dk/dv programs spilled).
  """
  return soft_cap(_dot(q, k, precision=opts.precision, trans_b=True) * opts.scale, opts.cap)


def _logits(t, bias, allowed):
  """The logits `t + bias` of one tile, masked to `-inf`.

  Args:
    t: float32 `[block_q, block_k]`, the capped scores (`_scores`).
    bias: `[block_q, block_k]` (any float dtype) or None.
    allowed: bool `[block_q, block_k]` or None.
  """
  logits = t if bias is None else t + bias.astype(jnp.float32)
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  return logits


def _fwd_kernel(q_ref, k_ref, v_ref, bias_ref, q_seg_ref, kv_seg_ref, kv_valid_ref,
                mask_ref, o_ref, lse_ref, *, opts, block_q, block_k):
  """One query block of one (batch, head): online softmax over the key blocks.

  Refs (batch and head squeezed): q `[block_q, D]`, k and v `[Tk, D]`, bias
  `[block_q, Tk]`, q_seg `[block_q]`, kv_seg and kv_valid `[Tk]`, mask int8
  `[block_q, Tk]` (bias and the last four may be None); outputs o `[block_q, D]`, lse
  float32 `[block_q]`.
  """
  q_start = pl.program_id(0) * block_q
  kv_len, head_dim = k_ref.shape
  q = q_ref[...]  # [block_q, D]
  q_seg = _load(q_seg_ref, ...)  # [block_q]

  def body(k_block, carry):
    acc, m_prev, l_prev = carry  # [block_q, D], [block_q], [block_q]
    k_start = k_block * block_k
    k_slice = pl.ds(k_start, block_k)
    t = _scores(q, k_ref[k_slice, :], opts)  # [block_q, block_k]
    allowed = _allowed(opts.band, q_start, k_start, block_q, block_k, q_seg=q_seg,
                       kv_seg=_load(kv_seg_ref, k_slice),
                       kv_valid=_load(kv_valid_ref, k_slice),
                       mask_tile=_load(mask_ref, slice(None), k_slice))
    s = _logits(t, _load(bias_ref, slice(None), k_slice), allowed)
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))  # [block_q]
    # Rows that have seen no allowed key yet keep m = -inf; subtract 0 from them instead,
    # so that exp() gives 0 rather than exp(-inf - -inf) = nan.
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # [block_q]
    correction = jnp.exp(m_prev - m_safe)  # [block_q]
    p = jnp.exp(s - m_safe[:, None])  # [block_q, block_k]
    l_next = correction * l_prev + jnp.sum(p, axis=1)  # [block_q]
    v = v_ref[k_slice, :]  # [block_k, D]
    acc = correction[:, None] * acc + _dot(p.astype(v.dtype), v,
                                           precision=opts.precision)  # [block_q, D]
    return acc, m_next, l_next

  acc = jnp.zeros((block_q, head_dim), jnp.float32)
  m = jnp.full((block_q,), -jnp.inf, jnp.float32)
  l = jnp.zeros((block_q,), jnp.float32)
  first, stop = kv_block_range(opts.band, q_start, block_q, block_k, kv_len // block_k)
  acc, m, l = fori_loop(first, stop, body, (acc, m, l))
  empty = l == 0.0  # [block_q]: rows with nothing to attend
  o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))


def _tile_grads(t, v, do, lse, delta, bias, allowed, opts: _Options):
  """The backward of one tile (FlashAttention-2, Algorithm 2, lines 11-16).

  Args:
    t: float32 `[block_q, block_k]`, the capped scores (`_scores`).
    v: `[block_k, D]`; do: `[block_q, D]`.
    lse: float32 `[block_q]`, `+inf` on rows that pass no gradient.
    delta: float32 `[block_q]`.
    bias: `[block_q, block_k]` or None.
    allowed: bool `[block_q, block_k]` or None.
    opts: the static options.

  Returns:
    p: float32 `[block_q, block_k]`, the probabilities.
    dlogits: float32 `[block_q, block_k]`, d(loss)/d(logits), the bias gradient.
    ds: float32 `[block_q, block_k]`, d(loss)/d(q k^T): `dlogits` through the soft cap's
      derivative, times the scale.
  """
  logits = _logits(t, bias, allowed)  # [block_q, block_k]
  p = jnp.exp(logits - lse[:, None])  # [block_q, block_k]
  dp = _dot(do, v, precision=opts.precision, trans_b=True)  # [block_q, block_k]
  dlogits = p * (dp - delta[:, None])  # [block_q, block_k]
  ds = dlogits * (soft_cap_grad(t, opts.cap) * opts.scale)  # [block_q, block_k]
  return p, dlogits, ds


def _dq_kernel(q_ref, k_ref, v_ref, bias_ref, do_ref, lse_ref, delta_ref, q_seg_ref,
               kv_seg_ref, kv_valid_ref, mask_ref, dq_ref, dbias_ref, *, opts, block_q,
               block_k):
  """dq (and the bias gradient) of one query block: iterates over the key blocks.

  Refs (batch and head squeezed): q, do `[block_q, D]`, k, v `[Tk, D]`, bias
  `[block_q, Tk]`, lse, delta `[block_q]`, q_seg `[block_q]`, kv_seg, kv_valid `[Tk]`,
  mask `[block_q, Tk]`; outputs dq `[block_q, D]` and dbias float32 `[block_q, Tk]`
  (None unless the bias gradient is asked for).
  """
  q_start = pl.program_id(0) * block_q
  kv_len, head_dim = k_ref.shape
  num_k_blocks = kv_len // block_k
  q = q_ref[...]  # [block_q, D]
  do = do_ref[...]  # [block_q, D]
  lse = lse_ref[...]  # [block_q]
  delta = delta_ref[...]  # [block_q]
  q_seg = _load(q_seg_ref, ...)  # [block_q]

  def body(k_block, dq):
    k_start = k_block * block_k
    k_slice = pl.ds(k_start, block_k)
    k = k_ref[k_slice, :]  # [block_k, D]
    v = v_ref[k_slice, :]  # [block_k, D]
    t = _scores(q, k, opts)  # [block_q, block_k]
    allowed = _allowed(opts.band, q_start, k_start, block_q, block_k, q_seg=q_seg,
                       kv_seg=_load(kv_seg_ref, k_slice),
                       kv_valid=_load(kv_valid_ref, k_slice),
                       mask_tile=_load(mask_ref, slice(None), k_slice))
    _, dlogits, ds = _tile_grads(t, v, do, lse, delta,
                                 _load(bias_ref, slice(None), k_slice), allowed, opts)
    if dbias_ref is not None:
      dbias_ref[:, k_slice] = dlogits
    return dq + _dot(ds.astype(k.dtype), k, precision=opts.precision)  # [block_q, D]

  first, stop = kv_block_range(opts.band, q_start, block_q, block_k, num_k_blocks)
  dq = fori_loop(first, stop, body, jnp.zeros((block_q, head_dim), jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)
  if dbias_ref is not None and opts.band is not None:
    # The skipped key blocks' bias gradient is 0: blocks [0, first) and [stop, end).
    zeros = jnp.zeros((block_q, block_k), jnp.float32)

    def clear(k_block, carry):
      dbias_ref[:, pl.ds(k_block * block_k, block_k)] = zeros
      return carry

    before = jnp.minimum(first, num_k_blocks)  # a band right of every key: first > end
    fori_loop(0, before, clear, ())
    fori_loop(jnp.maximum(stop, before), num_k_blocks, clear, ())


def _dkv_kernel(q_ref, k_ref, v_ref, bias_ref, do_ref, lse_ref, delta_ref, q_seg_ref,
                kv_seg_ref, kv_valid_ref, mask_ref, dk_ref, dv_ref, *, opts, block_q,
                block_k):
  """dk and dv of one key block, for one query head: iterates over the query blocks.

  Refs (batch and head squeezed): q, do `[Tq, D]`, k, v `[block_k, D]`, bias
  `[Tq, block_k]`, lse, delta `[Tq]`, q_seg `[Tq]`, kv_seg, kv_valid `[block_k]`, mask
  `[Tq, block_k]`; outputs dk, dv `[block_k, D]`.
  """
  k_start = pl.program_id(0) * block_k
  q_len, head_dim = q_ref.shape
  k = k_ref[...]  # [block_k, D]
  v = v_ref[...]  # [block_k, D]
  kv_seg = _load(kv_seg_ref, ...)  # [block_k]
  kv_valid = _load(kv_valid_ref, ...)  # [block_k]

  def body(q_block, carry):
    dk, dv = carry  # [block_k, D], [block_k, D]
    q_start = q_block * block_q
    q_slice = pl.ds(q_start, block_q)
    q = q_ref[q_slice, :]  # [block_q, D]
    do = do_ref[q_slice, :]  # [block_q, D]
    t = _scores(q, k, opts)  # [block_q, block_k]
    allowed = _allowed(opts.band, q_start, k_start, block_q, block_k,
                       q_seg=_load(q_seg_ref, q_slice), kv_seg=kv_seg, kv_valid=kv_valid,
                       mask_tile=_load(mask_ref, q_slice, slice(None)))
    p, _, ds = _tile_grads(t, v, do, lse_ref[q_slice], delta_ref[q_slice],
                           _load(bias_ref, q_slice, slice(None)), allowed, opts)
    dv = dv + _dot(p.astype(do.dtype), do, precision=opts.precision,
                   trans_a=True)  # [block_k, D]
    dk = dk + _dot(ds.astype(q.dtype), q, precision=opts.precision,
                   trans_a=True)  # [block_k, D]
    return dk, dv

  first, stop = q_block_range(opts.band, k_start, block_k, block_q, q_len // block_q)
  zeros = jnp.zeros((block_k, head_dim), jnp.float32)
  dk, dv = fori_loop(first, stop, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ---------------------------------------------------------------------------------------
# The wrappers.
# ---------------------------------------------------------------------------------------


def _block(requested: int, length: int) -> int:
  """`requested`, shrunk to what the sequence needs and raised to Triton's minimum of 16."""
  return max(_MIN_DIM, min(requested, next_power_of_2(length)))


@dataclasses.dataclass(frozen=True)
class _Config:
  """The static layout of one call: tiles, padded sizes, Triton's options."""

  opts: _Options
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int
  q_pad: int  # Tq'
  kv_pad: int  # Tk'
  dim_pad: int  # D'
  num_warps: int
  num_stages: int
  num_warps_bwd: int
  num_stages_bwd: int
  interpret: bool


def _config(spec: Spec, q, k) -> _Config:
  """The tiles of `spec.block_sizes` (None: the GPU defaults) fitted to `q` and `k`."""
  q_len, head_dim = q.shape[1], q.shape[3]
  kv_len = k.shape[1]
  tiles = spec.block_sizes or BlockSizes.default("gpu", head_dim, q.dtype)
  # A plain BlockSizes has no Triton options: the kernel's defaults then.
  num_warps = getattr(tiles, "num_warps", None) or _DEFAULT_NUM_WARPS
  num_stages = getattr(tiles, "num_stages", None) or _DEFAULT_NUM_STAGES
  block_q, block_q_bwd = _block(tiles.block_q, q_len), _block(tiles.block_q_bwd, q_len)
  block_k, block_k_bwd = _block(tiles.block_k, kv_len), _block(tiles.block_k_bwd, kv_len)
  precision = float32_dot_precision(getattr(tiles, "float32_dot", None), spec.interpret)
  return _Config(
      opts=_Options(scale=spec.scale, band=spec.band, cap=spec.soft_cap, precision=precision),
      block_q=block_q, block_k=block_k, block_q_bwd=block_q_bwd, block_k_bwd=block_k_bwd,
      # Blocks are powers of two, so padding to the largest fits every kernel's tiling.
      q_pad=round_up(q_len, max(block_q, block_q_bwd)),
      kv_pad=round_up(kv_len, max(block_k, block_k_bwd)),
      dim_pad=max(_MIN_DIM, next_power_of_2(head_dim)),
      num_warps=num_warps, num_stages=num_stages,
      num_warps_bwd=getattr(tiles, "num_warps_bwd", None) or num_warps,
      num_stages_bwd=getattr(tiles, "num_stages_bwd", None) or num_stages,
      interpret=spec.interpret)


class _Operands(NamedTuple):
  """The kernels' inputs, padded to `[.., Tq', ..]`, `[.., Tk', ..]` and D'."""

  q: jax.Array  # [B, Tq', Hq, D']
  k: jax.Array  # [B, Tk', Hkv, D']
  v: jax.Array  # [B, Tk', Hkv, D']
  bias: jax.Array | None  # [B|1, Hq|1, Tq', Tk'], float32 or narrower
  q_seg: jax.Array | None  # int32 [B, Tq']
  kv_seg: jax.Array | None  # int32 [B, Tk']
  kv_valid: jax.Array | None  # int32 [B, Tk']: 1 for keys below kv_lengths and kv_len
  mask: jax.Array | None  # int8 [B|1, Hq|1, Tq', Tk']


def _operands(config: _Config, q, k, v, bias, masks: Masks) -> _Operands:
  batch, q_len = q.shape[:2]
  kv_len = k.shape[1]
  q_pad, kv_pad, dim_pad = config.q_pad, config.kv_pad, config.dim_pad
  q_seg = kv_seg = kv_valid = mask = None
  if masks.q_segment_ids is not None:
    q_seg = pad_axis(masks.q_segment_ids.astype(jnp.int32), 1, q_pad)
    kv_seg = pad_axis(masks.kv_segment_ids.astype(jnp.int32), 1, kv_pad)
  if masks.kv_lengths is not None or kv_pad != kv_len:
    limit = kv_len if masks.kv_lengths is None else jnp.minimum(masks.kv_lengths, kv_len)
    kv_valid = (jnp.arange(kv_pad, dtype=jnp.int32)[None, :]
                < jnp.reshape(limit, (-1, 1)).astype(jnp.int32))  # [B or 1, Tk']
    kv_valid = jnp.broadcast_to(kv_valid, (batch, kv_pad)).astype(jnp.int32)
  if masks.mask is not None:  # int8: Triton has no bool tensors in memory.
    mask = masks.mask.astype(jnp.int8)
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (q_len, kv_len))
    mask = pad_axis(pad_axis(mask, 2, q_pad), 3, kv_pad)
  if bias is not None:
    if jnp.dtype(bias.dtype).itemsize > 4:  # float64 under x64: the kernels read float32
      bias = bias.astype(jnp.float32)
    bias = jnp.broadcast_to(bias, bias.shape[:2] + (q_len, kv_len))
    bias = pad_axis(pad_axis(bias, 2, q_pad), 3, kv_pad)
  return _Operands(
      q=pad_axis(pad_axis(q, 1, q_pad), 3, dim_pad),
      k=pad_axis(pad_axis(k, 1, kv_pad), 3, dim_pad),
      v=pad_axis(pad_axis(v, 1, kv_pad), 3, dim_pad),
      bias=bias, q_seg=q_seg, kv_seg=kv_seg, kv_valid=kv_valid, mask=mask)


def _head_index(x):
  """Maps (b, h) to the block index of a `[B|1, Hq|1, ...]` array; size-1 dims read 0."""
  batch_axis_size, head_axis_size = x.shape[:2]
  return lambda b, h: (b if batch_axis_size > 1 else 0, h if head_axis_size > 1 else 0)


def _row_tiles(x, block_q, kv_len):
  """The BlockSpec of `[block_q, Tk']` tiles of a `[B|1, Hq|1, Tq', Tk']` array (grid
  `(q block, b, h)`), or None for an absent one."""
  if x is None:
    return None
  index = _head_index(x)
  return pl.BlockSpec((None, None, block_q, kv_len), lambda i, b, h: (*index(b, h), i, 0))


def _column_tiles(x, q_len, block_k):
  """The BlockSpec of `[Tq', block_k]` tiles (grid `(k block, b, h)`), or None."""
  if x is None:
    return None
  index = _head_index(x)
  return pl.BlockSpec((None, None, q_len, block_k), lambda j, b, h: (*index(b, h), 0, j))


def _vector(x, block):
  """The BlockSpec of `[block]` pieces of a `[B, T']` vector (grid `(block, b, h)`)."""
  return None if x is None else pl.BlockSpec((None, block), lambda i, b, h: (b, i))


def _whole_vector(x):
  """The BlockSpec of a whole row of a `[B, T']` vector, or None."""
  return None if x is None else pl.BlockSpec((None, x.shape[1]), lambda i, b, h: (b, 0))


def forward(q, k, v, bias, masks: Masks, spec: Spec):
  """The forward kernel: `(out [B, Tq, Hq, D], lse float32 [B, Hq, Tq])`.

  Args:
    q: `[B, Tq, Hq, D]`; k, v: `[B, Tk, Hkv, D]`; float32, bfloat16 or float16.
    bias: None or float `[B or 1, Hq or 1, Tq, Tk]`.
    masks: the `Masks` (`q_lengths` is not read).
    spec: the static `Spec`.

  Returns:
    `out` in `q.dtype`, and the log-sum-exp of each row (`-inf` on rows with nothing to
    attend, whose `out` is 0), as `kernels.attention.spec` states.
  """
  batch, q_len, q_heads, head_dim = q.shape
  group = q_heads // k.shape[2]
  config = _config(spec, q, k)
  ops = _operands(config, q, k, v, bias, masks)
  block_q, block_k, q_pad, kv_pad, dim_pad = (config.block_q, config.block_k, config.q_pad,
                                              config.kv_pad, config.dim_pad)
  q_spec = pl.BlockSpec((None, block_q, None, dim_pad), lambda i, b, h: (b, i, h, 0))
  kv_spec = pl.BlockSpec((None, kv_pad, None, dim_pad), lambda i, b, h: (b, 0, h // group, 0))
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, opts=config.opts, block_q=block_q, block_k=block_k),
      grid=(q_pad // block_q, batch, q_heads),
      in_specs=[q_spec, kv_spec, kv_spec, _row_tiles(ops.bias, block_q, kv_pad),
                _vector(ops.q_seg, block_q), _whole_vector(ops.kv_seg),
                _whole_vector(ops.kv_valid), _row_tiles(ops.mask, block_q, kv_pad)],
      out_specs=[q_spec, pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(ops.q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, q_heads, q_pad), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=config.interpret,
      name="flash_attention_fwd",
  )(*ops)
  return out[:, :q_len, :, :head_dim], lse[:, :, :q_len]


def backward(q, k, v, bias, masks: Masks, spec: Spec, out, lse, d_out, delta,
             bias_grad: bool):
  """The dq and dk/dv kernels: `(dq, dk, dv, dbias)`.

  Args:
    q, k, v, bias, masks, spec: as `forward` took them.
    out: `[B, Tq, Hq, D]`, `forward`'s output (not read: `delta` holds what it gives).
    lse: float32 `[B, Hq, Tq]`, `forward`'s log-sum-exp.
    d_out: `[B, Tq, Hq, D]` in `q.dtype`, the output's cotangent.
    delta: float32 `[B, Hq, Tq]`, `rowsum(d_out * out) - d_lse`.
    bias_grad: whether to return the bias gradient.

  Returns:
    `dq`, `dk`, `dv` in the dtypes of `q`, `k`, `v`, and `dbias` float32
    `[B, Hq, Tq, Tk]` (d loss / d logits, zero outside the allowed pairs), or None when
    `bias_grad` is False.
  """
  del out
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  group = q_heads // kv_heads
  config = _config(spec, q, k)
  ops = _operands(config, q, k, v, bias, masks)
  block_q, block_k = config.block_q_bwd, config.block_k_bwd
  q_pad, kv_pad, dim_pad = config.q_pad, config.kv_pad, config.dim_pad
  d_out = pad_axis(pad_axis(d_out, 1, q_pad), 3, dim_pad)  # [B, Tq', Hq, D']
  # +inf: every probability of a row with no key (lse = -inf) or a padded row is 0.
  lse = pad_axis(jnp.where(lse == -jnp.inf, jnp.inf, lse), 2, q_pad, jnp.inf)  # [B, Hq, Tq']
  delta = pad_axis(delta.astype(jnp.float32), 2, q_pad)  # [B, Hq, Tq']
  inputs = (ops.q, ops.k, ops.v, ops.bias, d_out, lse, delta, ops.q_seg, ops.kv_seg,
            ops.kv_valid, ops.mask)
  compiler_params = plgpu.CompilerParams(num_warps=config.num_warps_bwd,
                                         num_stages=config.num_stages_bwd)

  # dq (and dbias): a grid over (query blocks, batch, heads), each over the key blocks.
  q_spec = pl.BlockSpec((None, block_q, None, dim_pad), lambda i, b, h: (b, i, h, 0))
  kv_spec = pl.BlockSpec((None, kv_pad, None, dim_pad), lambda i, b, h: (b, 0, h // group, 0))
  row_spec = pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))
  out_specs = [q_spec]
  out_shape = [jax.ShapeDtypeStruct(ops.q.shape, q.dtype)]
  if bias_grad:
    out_specs.append(pl.BlockSpec((None, None, block_q, kv_pad),
                                  lambda i, b, h: (b, h, i, 0)))
    out_shape.append(jax.ShapeDtypeStruct((batch, q_heads, q_pad, kv_pad), jnp.float32))
  kernel = functools.partial(_dq_kernel, opts=config.opts, block_q=block_q, block_k=block_k)
  if not bias_grad:
    kernel = functools.partial(kernel, dbias_ref=None)
  dq, *dbias = pl.pallas_call(
      kernel,
      grid=(q_pad // block_q, batch, q_heads),
      in_specs=[q_spec, kv_spec, kv_spec, _row_tiles(ops.bias, block_q, kv_pad), q_spec,
                row_spec, row_spec, _vector(ops.q_seg, block_q), _whole_vector(ops.kv_seg),
                _whole_vector(ops.kv_valid), _row_tiles(ops.mask, block_q, kv_pad)],
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=compiler_params,
      interpret=config.interpret,
      name="flash_attention_dq",
  )(*inputs)

  # dk, dv: a grid over (key blocks, batch, query heads), each over the query blocks.
  # With GQA every query head writes its own dk/dv (float32), summed per group.
  q_whole = pl.BlockSpec((None, q_pad, None, dim_pad), lambda j, b, h: (b, 0, h, 0))
  kv_block = pl.BlockSpec((None, block_k, None, dim_pad),
                          lambda j, b, h: (b, j, h // group, 0))
  row_whole = pl.BlockSpec((None, None, q_pad), lambda j, b, h: (b, h, 0))
  dkv_spec = pl.BlockSpec((None, block_k, None, dim_pad), lambda j, b, h: (b, j, h, 0))
  dkv_dtype = k.dtype if group == 1 else jnp.float32
  dkv_shape = jax.ShapeDtypeStruct((batch, kv_pad, q_heads, dim_pad), dkv_dtype)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, opts=config.opts, block_q=block_q, block_k=block_k),
      grid=(kv_pad // block_k, batch, q_heads),
      in_specs=[q_whole, kv_block, kv_block, _column_tiles(ops.bias, q_pad, block_k),
                q_whole, row_whole, row_whole, _whole_vector(ops.q_seg),
                _vector(ops.kv_seg, block_k), _vector(ops.kv_valid, block_k),
                _column_tiles(ops.mask, q_pad, block_k)],
      out_specs=[dkv_spec, dkv_spec],
      out_shape=[dkv_shape, dkv_shape],
      compiler_params=compiler_params,
      interpret=config.interpret,
      name="flash_attention_dkv",
  )(*inputs)
  if group > 1:
    dk = dk.reshape(batch, kv_pad, kv_heads, group, dim_pad).sum(3)
    dv = dv.reshape(batch, kv_pad, kv_heads, group, dim_pad).sum(3)
  dq = dq[:, :q_len, :, :head_dim]
  dk = dk[:, :kv_len, :, :head_dim].astype(k.dtype)
  dv = dv[:, :kv_len, :, :head_dim].astype(v.dtype)
  dbias = dbias[0][:, :, :q_len, :kv_len] if bias_grad else None
  return dq, dk, dv, dbias
