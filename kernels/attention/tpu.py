"""Flash attention for the TPU: Mosaic TPU Pallas kernels, forward and backward.

The `forward` and `backward` of `kernels.attention.spec`'s contract, which
`kernels.attention.vjp` ties together under one `jax.custom_vjp`:

>>> import jax, jax.numpy as jnp
>>> from kernels.attention import spec, tpu
>>> q = k = v = jax.random.normal(jax.random.key(0), (1, 64, 2, 64), jnp.float32)
>>> causal = spec.Spec(scale=0.125, band=spec.Band(None, 0), interpret=True)
>>> out, lse = tpu.forward(q, k, v, None, spec.Masks(), causal)  # [1, 64, 2, 64], [1, 2, 64]

The forward pass is FlashAttention-2's online softmax (Dao, 2023, "FlashAttention-2",
Algorithm 1) over a grid `(batch, q_heads, q_blocks, kv_blocks)` whose kv axis is innermost
and sequential ("arbitrary"): the running max `m`, sum `l` and output `acc` live in VMEM
scratch across it, in float32. It writes the output and the log-sum-exp `lse` at the last kv
block. The backward pass (Algorithm 2) is two kernels: `dq` (and the bias gradient) over the
same grid, and `dk, dv` over `(batch, kv_heads, kv_blocks, group * q_blocks)`, which sums
the query heads of a GQA group in its accumulators. `delta` comes from the caller.

The logits are `soft_cap(scale * q k^T) + bias`, then masked. How the options reach the
kernels:

- band (causal, windows) and lengths: the lengths are scalar prefetch (SMEM), read as
  `q_len_ref[b]`, `kv_len_ref[b]`. Each query block visits only the kv blocks
  `[first, stop)` that hold a key its band allows, within `kv_lengths`
  (`spec.kv_block_range`); the other grid steps compute nothing (`pl.when`), and the
  forward and dq kernels' index maps re-point them at the nearest visited block so that no
  DMA is spent on them. The dk/dv kernel does the same along its query axis
  (`spec.q_block_range`). Inside a visited tile the band is a mask (`Band.allows`).
- bias: blocked `[B or 1, Hq or 1, Tq, Tk]` tiles (broadcast dims read block 0), float32 or
  bfloat16 in memory, float32 in the kernel. Its gradient (`dlogits`, before the soft cap's
  derivative) is an extra float32 output of the dq kernel, one tile per grid step; skipped
  steps write zeros.
- segment ids: blocked inputs, queries lane-broadcast `[B, Tq, 128]`, keys sublane-broadcast
  `[B, 8, Tk]`.
- explicit mask: blocked int8 tiles `[B or 1, Hq or 1, Tq, Tk]`.
- GQA: query head `h` reads kv head `h // group` through the k/v index maps.

The wrappers pad `Tq`, `Tk` to block multiples (padded keys are masked through the
effective kv length, padded queries are sliced off) and `head_dim` to a multiple of 128
with zeros (zero q/k columns leave the logits unchanged, zero v columns give zero output
columns that are sliced off). float16 is not a TPU compute type: float16 inputs run in
float32 and the results are cast back. On a real TPU, kv blocks smaller than 128 and query
blocks smaller than 32 are raised to those sizes (Mosaic's lane tile and int8 sublane
tile) unless they cover the whole sequence; interpret mode runs the block sizes as given.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from kernels._indexing import div, rem
from kernels._tiling import pad_axis, round_up
from kernels.attention.block_sizes import BlockSizes
from kernels.attention.spec import (Band, Masks, Spec, kv_block_range, q_block_range,
                                    soft_cap, soft_cap_grad)

__all__ = ["backward", "forward"]

NUM_LANES = 128  # the last (lane) dimension of a TPU vreg
NUM_SUBLANES = 8  # the second-to-last (sublane) dimension of a TPU vreg
_NT_DIMS = (((1,), (1,)), ((), ()))  # a @ b.T
_TN_DIMS = (((0,), (0,)), ((), ()))  # a.T @ b
_SQ = pl.Squeezed()


@dataclasses.dataclass(frozen=True)
class _Config:
  """The static options of one kernel launch.

  Attributes:
    scale, band, soft_cap: as in `Spec`.
    block_q, block_k: the tile, after `_tiles`.
    num_q_blocks, num_k_blocks: blocks in the padded sequences.
    group: query heads per kv head.
    has_bias, has_mask, has_segments: which optional operands the kernel takes.
    bias_grad: the dq kernel also writes the bias gradient.
  """

  scale: float
  band: Band | None
  soft_cap: float | None
  block_q: int
  block_k: int
  num_q_blocks: int
  num_k_blocks: int
  group: int
  has_bias: bool
  has_mask: bool
  has_segments: bool
  bias_grad: bool = False


# ----------------------------------------------------------------------------------------
# Kernels.
# ----------------------------------------------------------------------------------------


def _kv_range(b, i, q_len_ref, kv_len_ref, cfg: _Config):
  """`(first, stop)`: the kv blocks that query block `i` of example `b` visits.

  Every allowed (query, key) pair of the block lies in kv blocks `[first, stop)`; none
  when `stop <= first` (a block of padding rows, or a band that misses every key).
  """
  q_len, kv_len = q_len_ref[b], kv_len_ref[b]
  q_start = i * cfg.block_q
  # Only the block's rows before q_len count: a causal band then ends at the last real row.
  rows = jnp.clip(q_len - q_start, 1, cfg.block_q)
  first, stop = kv_block_range(cfg.band, q_start, rows, cfg.block_k, cfg.num_k_blocks)
  stop = jnp.minimum(stop, div(kv_len + (cfg.block_k - 1), cfg.block_k))
  return first, jnp.where(q_start < q_len, stop, 0)


def _q_range(b, j, q_len_ref, kv_len_ref, cfg: _Config):
  """`(first, stop)`: the query blocks whose `_kv_range` may hold kv block `j`.

  A superset of the blocks that visit `j` (it ignores the row refinement of `_kv_range`),
  for the dk/dv kernel's index maps.
  """
  q_len, kv_len = q_len_ref[b], kv_len_ref[b]
  k_start = j * cfg.block_k
  first, stop = q_block_range(cfg.band, k_start, cfg.block_k, cfg.block_q, cfg.num_q_blocks)
  stop = jnp.minimum(stop, div(q_len + (cfg.block_q - 1), cfg.block_q))
  return first, jnp.where(k_start < kv_len, stop, 0)


def _visited(x, first, stop):
  return jnp.logical_and(first <= x, x < stop)


def _nearest(x, first, stop, num: int):
  """Block `x` moved into `[first, stop)` (and `[0, num)`): where a skipped step points."""
  return jnp.minimum(jnp.maximum(jnp.minimum(x, stop - 1), first), num - 1)


def _allowed(b, i, j, q_len_ref, kv_len_ref, mask_ref, q_seg_ref, kv_seg_ref, cfg: _Config):
  """The bool `[block_q, block_k]` tile of allowed pairs of query block i, kv block j."""
  shape = (cfg.block_q, cfg.block_k)
  q_pos = i * cfg.block_q + lax.broadcasted_iota(jnp.int32, shape, 0)  # [block_q, block_k]
  kv_pos = j * cfg.block_k + lax.broadcasted_iota(jnp.int32, shape, 1)  # [block_q, block_k]
  allowed = jnp.logical_and(q_pos < q_len_ref[b], kv_pos < kv_len_ref[b])
  if cfg.band is not None:
    allowed = jnp.logical_and(allowed, cfg.band.allows(q_pos, kv_pos))
  if mask_ref is not None:
    allowed = jnp.logical_and(allowed, mask_ref[...] != 0)
  if q_seg_ref is not None:
    same = q_seg_ref[:, :1] == kv_seg_ref[:1, :]  # [block_q, 1] == [1, block_k]
    allowed = jnp.logical_and(allowed, same)
  return allowed


def _logits(q, k, bias_ref, cfg: _Config):
  """`(t, logits)`: the capped scores `soft_cap(scale * q k^T)` and `t + bias`, f32."""
  s = lax.dot_general(q, k, _NT_DIMS, preferred_element_type=jnp.float32)
  t = soft_cap(s * cfg.scale, cfg.soft_cap)  # [block_q, block_k]
  if bias_ref is None:
    return t, t
  return t, t + bias_ref[...].astype(jnp.float32)


def _split_refs(refs, cfg: _Config):
  """(bias_ref, mask_ref, q_seg_ref, kv_seg_ref, rest) from the kernel's optional inputs on."""
  refs = list(refs)
  bias_ref = refs.pop(0) if cfg.has_bias else None
  mask_ref = refs.pop(0) if cfg.has_mask else None
  q_seg_ref = refs.pop(0) if cfg.has_segments else None
  kv_seg_ref = refs.pop(0) if cfg.has_segments else None
  return bias_ref, mask_ref, q_seg_ref, kv_seg_ref, refs


def _fwd_kernel(q_len_ref, kv_len_ref, q_ref, k_ref, v_ref, *refs, cfg: _Config):
  """One (batch, head, q block, kv block) step of the online-softmax forward pass."""
  bias_ref, mask_ref, q_seg_ref, kv_seg_ref, refs = _split_refs(refs, cfg)
  o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  first, stop = _kv_range(b, i, q_len_ref, kv_len_ref, cfg)

  @pl.when(_visited(j, first, stop))
  def _step():
    v = v_ref[...]  # [block_k, head_dim]
    _, logits = _logits(q_ref[...], k_ref[...], bias_ref, cfg)  # [block_q, block_k]
    allowed = _allowed(b, i, j, q_len_ref, kv_len_ref, mask_ref, q_seg_ref, kv_seg_ref, cfg)
    s = jnp.where(allowed, logits, -jnp.inf)
    m_prev = m_ref[:, :1]  # [block_q, 1]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [block_q, 1]
    # A row with nothing allowed so far keeps m = -inf; subtract 0 instead so that
    # exp(-inf - m) stays 0 and never becomes exp(nan).
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # [block_q, 1]
    p = jnp.exp(s - m_safe)  # [block_q, block_k]
    alpha = jnp.exp(m_prev - m_safe)  # [block_q, 1]
    l_new = alpha * l_ref[:, :1] + jnp.sum(p, axis=1, keepdims=True)  # [block_q, 1]
    pv = lax.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    acc_ref[...] = alpha * acc_ref[...] + pv  # [block_q, head_dim]
    m_ref[...] = jnp.broadcast_to(m_new, m_ref.shape)
    l_ref[...] = jnp.broadcast_to(l_new, l_ref.shape)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l = l_ref[:, :1]  # [block_q, 1]
    empty = l == 0.0  # rows with nothing to attend (and padding)
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = jnp.where(empty, 0.0, acc_ref[...] / l_safe).astype(o_ref.dtype)
    lse = jnp.where(empty, -jnp.inf, m_ref[:, :1] + jnp.log(l_safe))  # [block_q, 1]
    lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _grads(b, i, j, q, k, v, do, lse, delta, q_len_ref, kv_len_ref, bias_ref, mask_ref,
           q_seg_ref, kv_seg_ref, cfg: _Config):
  """`(p, dlogits, ds)` of one tile, float32 `[block_q, block_k]`.

  `p` is recomputed from `lse` (finite: 0 on empty rows, whose `p` is all masked),
  `dlogits = p * (dp - delta)` is the gradient of the logits (the bias'), and
  `ds = scale * dlogits * soft_cap'(t)` that of `q k^T`.
  """
  t, logits = _logits(q, k, bias_ref, cfg)
  allowed = _allowed(b, i, j, q_len_ref, kv_len_ref, mask_ref, q_seg_ref, kv_seg_ref, cfg)
  p = jnp.where(allowed, jnp.exp(logits - lse), 0.0)  # [block_q, block_k]
  dp = lax.dot_general(do, v, _NT_DIMS, preferred_element_type=jnp.float32)
  dlogits = p * (dp - delta)  # [block_q, block_k]
  ds = dlogits if cfg.soft_cap is None else dlogits * soft_cap_grad(t, cfg.soft_cap)
  return p, dlogits, ds * cfg.scale


def _dq_kernel(q_len_ref, kv_len_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
               cfg: _Config):
  """One (batch, head, q block, kv block) step of dq += ds @ k (and of the bias gradient)."""
  bias_ref, mask_ref, q_seg_ref, kv_seg_ref, refs = _split_refs(refs, cfg)
  if cfg.bias_grad:
    dq_ref, dbias_ref, dq_acc_ref = refs
  else:
    (dq_ref, dq_acc_ref), dbias_ref = refs, None
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)

  first, stop = _kv_range(b, i, q_len_ref, kv_len_ref, cfg)
  visited = _visited(j, first, stop)

  @pl.when(visited)
  def _step():
    k = k_ref[...]  # [block_k, head_dim]
    _, dlogits, ds = _grads(b, i, j, q_ref[...], k, v_ref[...], do_ref[...], lse_ref[:, :1],
                            delta_ref[:, :1], q_len_ref, kv_len_ref, bias_ref, mask_ref,
                            q_seg_ref, kv_seg_ref, cfg)
    dq_acc_ref[...] += lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
    if dbias_ref is not None:
      dbias_ref[...] = dlogits

  if dbias_ref is not None:  # every step owns its own dbias tile: skipped ones are zero

    @pl.when(jnp.logical_not(visited))
    def _skip():
      dbias_ref[...] = jnp.zeros(dbias_ref.shape, dbias_ref.dtype)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = dq_acc_ref[...].astype(dq_ref.dtype)


def _dkdv_kernel(q_len_ref, kv_len_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                 *refs, cfg: _Config):
  """One (batch, kv head, kv block, (group member, q block)) step of dk, dv."""
  bias_ref, mask_ref, q_seg_ref, kv_seg_ref, refs = _split_refs(refs, cfg)
  dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
  b, j, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  i = rem(t, cfg.num_q_blocks)

  @pl.when(t == 0)
  def _init():
    dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

  first, stop = _kv_range(b, i, q_len_ref, kv_len_ref, cfg)

  @pl.when(_visited(j, first, stop))
  def _step():
    q = q_ref[...]  # [block_q, head_dim]
    do = do_ref[...]  # [block_q, head_dim]
    p, _, ds = _grads(b, i, j, q, k_ref[...], v_ref[...], do, lse_ref[:, :1],
                      delta_ref[:, :1], q_len_ref, kv_len_ref, bias_ref, mask_ref, q_seg_ref,
                      kv_seg_ref, cfg)
    dv_acc_ref[...] += lax.dot_general(p.astype(do.dtype), do, _TN_DIMS,
                                       preferred_element_type=jnp.float32)  # [block_k, D]
    dk_acc_ref[...] += lax.dot_general(ds.astype(q.dtype), q, _TN_DIMS,
                                       preferred_element_type=jnp.float32)  # [block_k, D]

  @pl.when(t == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = dk_acc_ref[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


# ----------------------------------------------------------------------------------------
# Layout: padding, lane broadcasts and BlockSpecs.
# ----------------------------------------------------------------------------------------


def _tiles(q_len: int, kv_len: int, block_q: int, block_k: int, interpret: bool):
  """Blocks no longer than the (8-aligned) sequences, and the padded lengths.

  On the TPU (not `interpret`) the blocks grow to Mosaic's minimum tiles: a kv block spans
  whole lanes (128) and a query block whole int8 sublane tiles (32), unless it covers the
  whole sequence.
  """
  if not interpret:
    block_q, block_k = max(block_q, 4 * NUM_SUBLANES), max(block_k, NUM_LANES)
  block_q = min(block_q, round_up(q_len, NUM_SUBLANES))
  block_k = min(block_k, round_up(kv_len, NUM_SUBLANES))
  return block_q, block_k, round_up(q_len, block_q), round_up(kv_len, block_k)


def _heads_major(x, seq: int, head_dim: int):
  """`[B, T, H, D]` -> `[B, H, seq, head_dim]`, zero-padded."""
  x = jnp.swapaxes(x, 1, 2)
  return pad_axis(pad_axis(x, 2, seq), 3, head_dim)


def _lanes(x, seq: int):
  """`[B, H, T]` f32 -> `[B, H, seq, 128]`: padded, broadcast along the lanes."""
  x = pad_axis(x.astype(jnp.float32), 2, seq)
  return jnp.broadcast_to(x[..., None], x.shape + (NUM_LANES,))


@dataclasses.dataclass(frozen=True)
class _Layout:
  """The padded shapes of one pass and its padded operands.

  Attributes:
    cfg: the kernels' static options.
    q_pad, kv_pad, dim_pad: the padded Tq, Tk and head dim.
    lengths: the int32 `[B]` q and kv lengths, clipped to the true lengths (scalar
      prefetch: padded rows and keys are never allowed).
    side: the optional blocked operands, in `_split_refs`' order: bias `[B or 1, Hq or 1,
      q_pad, kv_pad]`, int8 mask (the same), query segment ids `[B, q_pad, 128]`, key
      segment ids `[B, 8, kv_pad]`.
  """

  cfg: _Config
  q_pad: int
  kv_pad: int
  dim_pad: int
  lengths: tuple
  side: tuple


def _layout(q, k, bias, masks: Masks, spec: Spec, block_q: int, block_k: int,
            bias_grad: bool = False) -> _Layout:
  """Tiles, padded lengths and padded side operands of one pass (see `_Layout`)."""
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  block_q, block_k, q_pad, kv_pad = _tiles(q_len, kv_len, block_q, block_k, spec.interpret)
  lengths = []
  for given, full in ((masks.q_lengths, q_len), (masks.kv_lengths, kv_len)):
    given = jnp.full((batch,), full, jnp.int32) if given is None else given
    lengths.append(jnp.clip(given.astype(jnp.int32), 0, full))
  side = []
  if bias is not None:  # [B or 1, Hq or 1, Tq, Tk]; bfloat16 stays bfloat16 in HBM
    if bias.dtype != jnp.bfloat16:
      bias = bias.astype(jnp.float32)
    bias = jnp.broadcast_to(bias, bias.shape[:2] + (q_len, kv_len))
    side.append(pad_axis(pad_axis(bias, 2, q_pad), 3, kv_pad))
  if masks.mask is not None:  # [B or 1, Hq or 1, Tq or 1, Tk or 1]
    mask = masks.mask.reshape((1,) * (4 - masks.mask.ndim) + masks.mask.shape)
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (q_len, kv_len)).astype(jnp.int8)
    side.append(pad_axis(pad_axis(mask, 2, q_pad), 3, kv_pad))
  has_segments = masks.q_segment_ids is not None
  if has_segments:
    q_seg = pad_axis(jnp.asarray(masks.q_segment_ids, jnp.int32), 1, q_pad)
    kv_seg = pad_axis(jnp.asarray(masks.kv_segment_ids, jnp.int32), 1, kv_pad)
    side.append(jnp.broadcast_to(q_seg[:, :, None], q_seg.shape + (NUM_LANES,)))
    side.append(jnp.broadcast_to(kv_seg[:, None, :], (batch, NUM_SUBLANES, kv_pad)))
  cfg = _Config(scale=float(spec.scale), band=spec.band, soft_cap=spec.soft_cap,
                block_q=block_q, block_k=block_k, num_q_blocks=q_pad // block_q,
                num_k_blocks=kv_pad // block_k, group=q_heads // kv_heads,
                has_bias=bias is not None, has_mask=masks.mask is not None,
                has_segments=has_segments, bias_grad=bias_grad)
  return _Layout(cfg, q_pad, kv_pad, round_up(head_dim, NUM_LANES), tuple(lengths),
                 tuple(side))


def _side_specs(layout: _Layout, head, q_block, kv_block):
  """BlockSpecs of `layout.side`; `head`, `q_block`, `kv_block` map a grid index (and the
  scalar prefetch refs) to the query head and the blocks of the step."""
  cfg, side, specs = layout.cfg, list(layout.side), []
  tiles = side[:int(cfg.has_bias) + int(cfg.has_mask)]  # bias, mask
  for x in tiles:
    batched, headed = x.shape[0] > 1, x.shape[1] > 1

    def tile_map(*index, batched=batched, headed=headed):
      return (index[0] if batched else 0, head(*index) if headed else 0, q_block(*index),
              kv_block(*index))

    specs.append(pl.BlockSpec((_SQ, _SQ, cfg.block_q, cfg.block_k), tile_map))
  if cfg.has_segments:
    specs.append(pl.BlockSpec((_SQ, cfg.block_q, NUM_LANES),
                              lambda *index: (index[0], q_block(*index), 0)))
    specs.append(pl.BlockSpec((_SQ, NUM_SUBLANES, cfg.block_k),
                              lambda *index: (index[0], 0, kv_block(*index))))
  return specs


def _by_query_block(layout: _Layout):
  """Index functions of the `(batch, q_heads, q_blocks, kv_blocks)` grid.

  Returns:
    The BlockSpecs `(q_spec, row_spec, kv_spec, side_specs)` of the q-shaped, the
    lane-broadcast row (lse, delta), the k/v-shaped and the side operands. k, v and the
    side operands of a skipped step re-point at the nearest visited kv block.
  """
  cfg = layout.cfg

  def kv_block(b, h, i, j, q_len_ref, kv_len_ref):
    first, stop = _kv_range(b, i, q_len_ref, kv_len_ref, cfg)
    return _nearest(j, first, stop, cfg.num_k_blocks)

  q_spec = pl.BlockSpec((_SQ, _SQ, cfg.block_q, layout.dim_pad),
                        lambda b, h, i, j, *_: (b, h, i, 0))
  row_spec = pl.BlockSpec((_SQ, _SQ, cfg.block_q, NUM_LANES),
                          lambda b, h, i, j, *_: (b, h, i, 0))
  kv_spec = pl.BlockSpec((_SQ, _SQ, cfg.block_k, layout.dim_pad),
                         lambda b, h, i, j, *refs: (b, div(h, cfg.group),
                                                    kv_block(b, h, i, j, *refs), 0))
  side = _side_specs(layout, head=lambda b, h, *_: h, q_block=lambda b, h, i, *_: i,
                     kv_block=kv_block)
  return q_spec, row_spec, kv_spec, side


def _compiler_params():
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _interpret(interpret: bool):
  return pltpu.InterpretParams() if interpret else False


def _block_sizes(spec: Spec, head_dim: int, dtype) -> BlockSizes:
  return spec.block_sizes or BlockSizes.default("tpu", head_dim, dtype)


def _compute_dtype(*xs):
  """float16 is not a TPU compute type: float16 arrays as float32, others as they are."""
  return tuple(x.astype(jnp.float32) if x.dtype == jnp.float16 else x for x in xs)


# ----------------------------------------------------------------------------------------
# The backend contract of `kernels.attention.spec`.
# ----------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("spec",))
def forward(q, k, v, bias, masks: Masks, spec: Spec):
  """The attention output and log-sum-exp, by the forward kernel.

  Args:
    q: `[B, Tq, Hq, D]` float32, bfloat16 or float16.
    k, v: `[B, Tk, Hkv, D]`, the dtype of `q`, `Hq % Hkv == 0`.
    bias: None or float `[B or 1, Hq or 1, Tq, Tk]`.
    masks: the `Masks`.
    spec: the static `Spec`; `spec.block_sizes` None for the TPU defaults.

  Returns:
    `(out [B, Tq, Hq, D] in q.dtype, lse float32 [B, Hq, Tq])`; rows with nothing to
    attend (padding rows too) have `out = 0` and `lse = -inf`.
  """
  dtype = q.dtype
  q, k, v = _compute_dtype(q, k, v)
  batch, q_len, q_heads, head_dim = q.shape
  blocks = _block_sizes(spec, head_dim, dtype)
  layout = _layout(q, k, bias, masks, spec, blocks.block_q, blocks.block_k)
  cfg = layout.cfg
  qt = _heads_major(q, layout.q_pad, layout.dim_pad)  # [B, Hq, q_pad, dim_pad]
  kt = _heads_major(k, layout.kv_pad, layout.dim_pad)  # [B, Hkv, kv_pad, dim_pad]
  vt = _heads_major(v, layout.kv_pad, layout.dim_pad)  # [B, Hkv, kv_pad, dim_pad]
  q_spec, row_spec, kv_spec, side_specs = _by_query_block(layout)
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg),
      name="tpu_attention_fwd",
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, q_heads, cfg.num_q_blocks, cfg.num_k_blocks),
          in_specs=[q_spec, kv_spec, kv_spec] + side_specs,
          out_specs=[q_spec, row_spec],
          scratch_shapes=[
              pltpu.VMEM((cfg.block_q, NUM_LANES), jnp.float32),  # m
              pltpu.VMEM((cfg.block_q, NUM_LANES), jnp.float32),  # l
              pltpu.VMEM((cfg.block_q, layout.dim_pad), jnp.float32),  # acc
          ]),
      out_shape=[jax.ShapeDtypeStruct(qt.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, q_heads, layout.q_pad, NUM_LANES),
                                      jnp.float32)],
      compiler_params=_compiler_params(),
      interpret=_interpret(spec.interpret),
  )(*layout.lengths, qt, kt, vt, *layout.side)
  out = jnp.swapaxes(out[:, :, :q_len, :head_dim], 1, 2)  # [B, Tq, Hq, D]
  return out.astype(dtype), lse[:, :, :q_len, 0]  # lse: [B, Hq, Tq]


@functools.partial(jax.jit, static_argnames=("spec", "bias_grad"))
def backward(q, k, v, bias, masks: Masks, spec: Spec, out, lse, d_out, delta,
             bias_grad: bool):
  """dq, dk, dv (and the bias gradient) by FlashAttention-2's backward pass.

  Args:
    q, k, v, bias, masks, spec: as `forward` took them.
    out: `forward`'s output (unused: `delta` carries what is needed of it).
    lse: float32 `[B, Hq, Tq]`, `forward`'s log-sum-exp.
    d_out: `[B, Tq, Hq, D]`, the output's cotangent, in `q.dtype`.
    delta: float32 `[B, Hq, Tq]`, `rowsum(d_out * out) - d_lse`.
    bias_grad: also return the bias gradient.

  Returns:
    `(dq, dk, dv, dbias)`: in the dtypes of `q`, `k`, `v`; `dbias` float32
    `[B, Hq, Tq, Tk]` (the logits' gradient), or None unless `bias_grad`.
  """
  del out
  dtypes = q.dtype, k.dtype, v.dtype
  q, k, v, d_out = _compute_dtype(q, k, v, d_out)
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  bias_grad = bool(bias_grad) and bias is not None
  blocks = _block_sizes(spec, head_dim, dtypes[0])
  layout = _layout(q, k, bias, masks, spec, blocks.block_q_bwd, blocks.block_k_bwd,
                   bias_grad)
  cfg = layout.cfg
  nq, nk, group = cfg.num_q_blocks, cfg.num_k_blocks, cfg.group
  # Rows with nothing to attend have lse = -inf; every p there is masked to 0, so any
  # finite value does, and it keeps exp(logits - lse) from overflowing on masked pairs.
  lse = _lanes(jnp.where(jnp.isfinite(lse), lse, 0.0), layout.q_pad)  # [B, Hq, q_pad, 128]
  delta = _lanes(delta, layout.q_pad)  # [B, Hq, q_pad, 128]
  qt = _heads_major(q, layout.q_pad, layout.dim_pad)  # [B, Hq, q_pad, dim_pad]
  dot_t = _heads_major(d_out.astype(q.dtype), layout.q_pad, layout.dim_pad)  # as qt
  kt = _heads_major(k, layout.kv_pad, layout.dim_pad)  # [B, Hkv, kv_pad, dim_pad]
  vt = _heads_major(v, layout.kv_pad, layout.dim_pad)  # [B, Hkv, kv_pad, dim_pad]
  operands = (*layout.lengths, qt, kt, vt, dot_t, lse, delta, *layout.side)

  # dq (and dbias): grid (batch, q_heads, q blocks, kv blocks).
  q_spec, row_spec, kv_spec, side_specs = _by_query_block(layout)
  out_specs, out_shape = [q_spec], [jax.ShapeDtypeStruct(qt.shape, q.dtype)]
  if bias_grad:  # one tile per step, never re-pointed: every step writes its own
    out_specs.append(pl.BlockSpec((_SQ, _SQ, cfg.block_q, cfg.block_k),
                                  lambda b, h, i, j, *_: (b, h, i, j)))
    out_shape.append(jax.ShapeDtypeStruct((batch, q_heads, layout.q_pad, layout.kv_pad),
                                          jnp.float32))
  dq, *dbias = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg),
      name="tpu_attention_dq",
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, q_heads, nq, nk),
          in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec] + side_specs,
          out_specs=out_specs,
          scratch_shapes=[pltpu.VMEM((cfg.block_q, layout.dim_pad), jnp.float32)]),
      out_shape=out_shape,
      compiler_params=_compiler_params(),
      interpret=_interpret(spec.interpret),
  )(*operands)

  # dk, dv: grid (batch, kv_heads, kv blocks, group * q blocks); the inner index t walks
  # the q blocks of each query head of the group in turn. Skipped steps re-point at the
  # nearest query block that visits kv block j.
  def q_head(b, h, j, t, *_):
    return h * group + div(t, nq)

  def q_block(b, h, j, t, q_len_ref, kv_len_ref):
    first, stop = _q_range(b, j, q_len_ref, kv_len_ref, cfg)
    return _nearest(rem(t, nq), first, stop, nq)

  q_spec = pl.BlockSpec((_SQ, _SQ, cfg.block_q, layout.dim_pad),
                        lambda *index: (index[0], q_head(*index), q_block(*index), 0))
  row_spec = pl.BlockSpec((_SQ, _SQ, cfg.block_q, NUM_LANES),
                          lambda *index: (index[0], q_head(*index), q_block(*index), 0))
  kv_spec = pl.BlockSpec((_SQ, _SQ, cfg.block_k, layout.dim_pad),
                         lambda b, h, j, t, *_: (b, h, j, 0))
  side_specs = _side_specs(layout, head=q_head, q_block=q_block,
                           kv_block=lambda b, h, j, *_: j)
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, cfg=cfg),
      name="tpu_attention_dkdv",
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, kv_heads, nk, group * nq),
          in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec] + side_specs,
          out_specs=[kv_spec, kv_spec],
          scratch_shapes=[pltpu.VMEM((cfg.block_k, layout.dim_pad), jnp.float32),
                          pltpu.VMEM((cfg.block_k, layout.dim_pad), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype),
                 jax.ShapeDtypeStruct(vt.shape, v.dtype)],
      compiler_params=_compiler_params(),
      interpret=_interpret(spec.interpret),
  )(*operands)

  dq = jnp.swapaxes(dq[:, :, :q_len, :head_dim], 1, 2)  # [B, Tq, Hq, D]
  dk = jnp.swapaxes(dk[:, :, :kv_len, :head_dim], 1, 2)  # [B, Tk, Hkv, D]
  dv = jnp.swapaxes(dv[:, :, :kv_len, :head_dim], 1, 2)  # [B, Tk, Hkv, D]
  dbias = dbias[0][:, :, :q_len, :kv_len] if bias_grad else None  # [B, Hq, Tq, Tk]
  return dq.astype(dtypes[0]), dk.astype(dtypes[1]), dv.astype(dtypes[2]), dbias
