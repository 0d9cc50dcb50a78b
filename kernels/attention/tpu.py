"""Flash attention for the TPU: Mosaic TPU Pallas kernels, forward and backward.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> q = k = v = jax.random.normal(jax.random.key(0), (1, 64, 2, 64), jnp.float32)
>>> out = kernels.attention(q, k, v, causal=True, impl="pallas_tpu")  # interpret mode off TPU

The forward pass is FlashAttention-2's online softmax (Dao, 2023, "FlashAttention-2",
Algorithm 1) over a grid `(batch, q_heads, q_blocks, kv_blocks)` whose kv axis is innermost
and sequential ("arbitrary"): the running max `m`, sum `l` and output `acc` live in VMEM
scratch across it, in float32. It writes the output and the log-sum-exp `lse` at the last kv
block. The backward pass (Algorithm 2) is two kernels: `dq` over the same grid, and `dk, dv`
over `(batch, kv_heads, kv_blocks, group * q_blocks)`, which sums the query heads of a GQA
group in its accumulators. `delta = rowsum(dO * O)` is computed in XLA.

Semantics are those of `kernels.attention.reference`. How the masks reach the kernel:

- lengths: scalar prefetch (SMEM), read as `q_len_ref[b]`, `kv_len_ref[b]`; blocks with
  nothing to attend (past a length, or above the causal diagonal) are skipped with
  `pl.when`, and the forward and dq kernels' k/v index maps re-point skipped blocks at the
  last useful one so that no DMA is spent on them.
- segment ids: blocked inputs, queries lane-broadcast `[B, Tq, 128]`, keys sublane-broadcast
  `[B, 8, Tk]`.
- explicit mask: blocked int8 tiles `[B or 1, Hq or 1, Tq, Tk]`.
- GQA: query head `h` reads kv head `h // group` through the k/v index maps.

The wrapper pads `Tq`, `Tk` to block multiples (padded keys are masked through the effective
kv length, padded queries are sliced off) and `head_dim` to a multiple of 128 with zeros
(zero q/k columns leave the logits unchanged, zero v columns give zero output columns that
are sliced off). float16 is not a TPU compute type: float16 inputs run in float32 and the
output is cast back. On a real TPU, kv blocks smaller than 128 and query blocks smaller
than 32 are raised to those sizes (Mosaic's lane tile and int8 sublane tile) unless they
cover the whole sequence; interpret mode runs the block sizes as given.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.attention.block_sizes import BlockSizes

__all__ = ["attention_tpu"]

NUM_LANES = 128  # the last (lane) dimension of a TPU vreg
NUM_SUBLANES = 8  # the second-to-last (sublane) dimension of a TPU vreg
_NT_DIMS = (((1,), (1,)), ((), ()))  # a @ b.T
_TN_DIMS = (((0,), (0,)), ((), ()))  # a.T @ b
_SQ = pl.Squeezed()


# ----------------------------------------------------------------------------------------
# Kernels.
# ----------------------------------------------------------------------------------------


def _num_kv_blocks(b, i, q_len_ref, kv_len_ref, *, causal, block_q, block_k):
  """How many leading kv blocks hold an allowed key for query block `i` of example `b`.

  Every allowed (query, key) pair of query block `i` lies in kv blocks `[0, n)`; blocks
  from `n` on are skipped (0 when the whole query block is padding).
  """
  q_len, kv_len = q_len_ref[b], kv_len_ref[b]
  q_start = i * block_q
  n = (kv_len + block_k - 1) // block_k
  if causal:
    last_row = jnp.minimum(q_start + block_q, q_len) - 1
    n = jnp.minimum(n, last_row // block_k + 1)
  return jnp.where(q_start < q_len, n, 0)


def _allowed(b, i, j, q_len_ref, kv_len_ref, mask_ref, q_seg_ref, kv_seg_ref, *, causal,
             block_q, block_k):
  """The bool `[block_q, block_k]` tile of allowed pairs of query block i, kv block j."""
  shape = (block_q, block_k)
  q_pos = i * block_q + lax.broadcasted_iota(jnp.int32, shape, 0)  # [block_q, block_k]
  kv_pos = j * block_k + lax.broadcasted_iota(jnp.int32, shape, 1)  # [block_q, block_k]
  allowed = jnp.logical_and(q_pos < q_len_ref[b], kv_pos < kv_len_ref[b])
  if causal:
    allowed = jnp.logical_and(allowed, kv_pos <= q_pos)
  if mask_ref is not None:
    allowed = jnp.logical_and(allowed, mask_ref[...] != 0)
  if q_seg_ref is not None:
    same = q_seg_ref[:, :1] == kv_seg_ref[:1, :]  # [block_q, 1] == [1, block_k]
    allowed = jnp.logical_and(allowed, same)
  return allowed


def _split_refs(refs, has_mask, has_segments):
  """(mask_ref, q_seg_ref, kv_seg_ref, rest) from the kernel's optional inputs on."""
  refs = list(refs)
  mask_ref = refs.pop(0) if has_mask else None
  q_seg_ref = refs.pop(0) if has_segments else None
  kv_seg_ref = refs.pop(0) if has_segments else None
  return mask_ref, q_seg_ref, kv_seg_ref, refs


def _fwd_kernel(q_len_ref, kv_len_ref, q_ref, k_ref, v_ref, *refs, causal, scale, block_q,
                block_k, has_mask, has_segments):
  """One (batch, head, q block, kv block) step of the online-softmax forward pass."""
  mask_ref, q_seg_ref, kv_seg_ref, refs = _split_refs(refs, has_mask, has_segments)
  o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  n = _num_kv_blocks(b, i, q_len_ref, kv_len_ref, causal=causal, block_q=block_q,
                     block_k=block_k)

  @pl.when(j < n)
  def _step():
    q = q_ref[...]  # [block_q, head_dim]
    k = k_ref[...]  # [block_k, head_dim]
    v = v_ref[...]  # [block_k, head_dim]
    s = lax.dot_general(q, k, _NT_DIMS, preferred_element_type=jnp.float32)
    s = s * scale  # [block_q, block_k]
    allowed = _allowed(b, i, j, q_len_ref, kv_len_ref, mask_ref, q_seg_ref, kv_seg_ref,
                       causal=causal, block_q=block_q, block_k=block_k)
    s = jnp.where(allowed, s, -jnp.inf)
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
    empty = l == 0.0  # fully masked rows (and padding)
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = jnp.where(empty, 0.0, acc_ref[...] / l_safe).astype(o_ref.dtype)
    lse = jnp.where(empty, 0.0, m_ref[:, :1] + jnp.log(l_safe))  # [block_q, 1]
    lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _probs_and_ds(b, i, j, q, k, v, do, lse, delta, q_len_ref, kv_len_ref, mask_ref,
                  q_seg_ref, kv_seg_ref, *, causal, scale, block_q, block_k):
  """Recomputed probabilities `p` and logit gradients `ds` (scale folded in), f32."""
  s = lax.dot_general(q, k, _NT_DIMS, preferred_element_type=jnp.float32)
  s = s * scale  # [block_q, block_k]
  allowed = _allowed(b, i, j, q_len_ref, kv_len_ref, mask_ref, q_seg_ref, kv_seg_ref,
                     causal=causal, block_q=block_q, block_k=block_k)
  p = jnp.where(allowed, jnp.exp(s - lse), 0.0)  # [block_q, block_k]
  dp = lax.dot_general(do, v, _NT_DIMS, preferred_element_type=jnp.float32)
  ds = p * (dp - delta) * scale  # [block_q, block_k]
  return p, ds


def _dq_kernel(q_len_ref, kv_len_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
               causal, scale, block_q, block_k, has_mask, has_segments):
  """One (batch, head, q block, kv block) step of dq += ds @ k."""
  mask_ref, q_seg_ref, kv_seg_ref, refs = _split_refs(refs, has_mask, has_segments)
  dq_ref, dq_acc_ref = refs
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)

  n = _num_kv_blocks(b, i, q_len_ref, kv_len_ref, causal=causal, block_q=block_q,
                     block_k=block_k)

  @pl.when(j < n)
  def _step():
    k = k_ref[...]  # [block_k, head_dim]
    _, ds = _probs_and_ds(b, i, j, q_ref[...], k, v_ref[...], do_ref[...], lse_ref[:, :1],
                          delta_ref[:, :1], q_len_ref, kv_len_ref, mask_ref, q_seg_ref,
                          kv_seg_ref, causal=causal, scale=scale, block_q=block_q,
                          block_k=block_k)
    dq_acc_ref[...] += lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = dq_acc_ref[...].astype(dq_ref.dtype)


def _dkdv_kernel(q_len_ref, kv_len_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                 *refs, causal, scale, block_q, block_k, num_q_blocks, has_mask,
                 has_segments):
  """One (batch, kv head, kv block, (group member, q block)) step of dk, dv."""
  mask_ref, q_seg_ref, kv_seg_ref, refs = _split_refs(refs, has_mask, has_segments)
  dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
  b, j, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  i = t % num_q_blocks

  @pl.when(t == 0)
  def _init():
    dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

  n = _num_kv_blocks(b, i, q_len_ref, kv_len_ref, causal=causal, block_q=block_q,
                     block_k=block_k)

  @pl.when(j < n)
  def _step():
    q = q_ref[...]  # [block_q, head_dim]
    do = do_ref[...]  # [block_q, head_dim]
    p, ds = _probs_and_ds(b, i, j, q, k_ref[...], v_ref[...], do, lse_ref[:, :1],
                          delta_ref[:, :1], q_len_ref, kv_len_ref, mask_ref, q_seg_ref,
                          kv_seg_ref, causal=causal, scale=scale, block_q=block_q,
                          block_k=block_k)
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


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _tiles(q_len: int, kv_len: int, block_q: int, block_k: int, interpret: bool):
  """Blocks no longer than the (8-aligned) sequences, and the padded lengths.

  On the TPU (not `interpret`) the blocks grow to Mosaic's minimum tiles: a kv block spans
  whole lanes (128) and a query block whole int8 sublane tiles (32), unless it covers the
  whole sequence.
  """
  if not interpret:
    block_q, block_k = max(block_q, 4 * NUM_SUBLANES), max(block_k, NUM_LANES)
  block_q = min(block_q, _round_up(q_len, NUM_SUBLANES))
  block_k = min(block_k, _round_up(kv_len, NUM_SUBLANES))
  return block_q, block_k, _round_up(q_len, block_q), _round_up(kv_len, block_k)


def _pad(x, axis: int, size: int):
  """Zero-pads `x` along `axis` up to `size`."""
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _heads_major(x, seq: int, head_dim: int):
  """`[B, T, H, D]` -> `[B, H, seq, head_dim]`, zero-padded."""
  x = jnp.swapaxes(x, 1, 2)
  return _pad(_pad(x, 2, seq), 3, head_dim)


def _lanes(x, seq: int):
  """`[B, H, T]` f32 -> `[B, H, seq, 128]`: padded, broadcast along the lanes."""
  x = _pad(x.astype(jnp.float32), 2, seq)
  return jnp.broadcast_to(x[..., None], x.shape + (NUM_LANES,))


def _mask_operands(mask, segments, q_pad: int, kv_pad: int):
  """The padded int8 mask and broadcast segment ids, as kernel operands (or None)."""
  if mask is not None:
    mask = _pad(_pad(mask, 2, q_pad), 3, kv_pad)  # [B or 1, Hq or 1, q_pad, kv_pad]
  if segments is None:
    return mask, None, None
  q_seg, kv_seg = (jnp.asarray(s, jnp.int32) for s in segments)
  q_seg = _pad(q_seg, 1, q_pad)
  kv_seg = _pad(kv_seg, 1, kv_pad)
  q_seg = jnp.broadcast_to(q_seg[:, :, None], q_seg.shape + (NUM_LANES,))  # [B, Tq, 128]
  kv_seg = jnp.broadcast_to(kv_seg[:, None, :], (kv_seg.shape[0], NUM_SUBLANES,
                                                 kv_seg.shape[1]))  # [B, 8, Tk]
  return mask, q_seg, kv_seg


def _mask_specs(mask, segments, block_q, block_k, head_of, q_block_of, kv_block_of):
  """BlockSpecs of the optional mask operands; the `*_of` map grid indices to blocks."""
  specs = []
  if mask is not None:
    mask_batch, mask_heads = mask.shape[0] > 1, mask.shape[1] > 1

    def mask_map(b, h, x, y, *_):
      return (b if mask_batch else 0, head_of(h, y) if mask_heads else 0, q_block_of(x, y),
              kv_block_of(x, y))

    specs.append(pl.BlockSpec((_SQ, _SQ, block_q, block_k), mask_map))
  if segments is not None:
    specs.append(pl.BlockSpec((_SQ, block_q, NUM_LANES),
                              lambda b, h, x, y, *_: (b, q_block_of(x, y), 0)))
    specs.append(pl.BlockSpec((_SQ, NUM_SUBLANES, block_k),
                              lambda b, h, x, y, *_: (b, 0, kv_block_of(x, y))))
  return specs


def _compiler_params():
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _interpret(interpret: bool):
  return pltpu.InterpretParams() if interpret else False


# ----------------------------------------------------------------------------------------
# The wrapper, under jax.custom_vjp.
# ----------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("causal", "scale", "block_sizes", "interpret"))
def attention_tpu(q, k, v, *, causal: bool, mask, q_lengths, kv_lengths, q_segment_ids,
                  kv_segment_ids, scale: float, block_sizes: BlockSizes,
                  interpret: bool) -> jax.Array:
  """Flash attention with Mosaic TPU Pallas kernels; differentiable in q, k, v.

  Args:
    q: `[B, Tq, Hq, D]` float32, bfloat16 or float16.
    k: `[B, Tk, Hkv, D]`, `Hq % Hkv == 0`.
    v: `[B, Tk, Hkv, D]`.
    causal: query `i` attends only keys `j <= i`.
    mask: None or bool `[B or 1, Hq or 1, Tq, Tk]` (True: attend).
    q_lengths: None or int32 `[B]`.
    kv_lengths: None or int32 `[B]`.
    q_segment_ids: None or int32 `[B, Tq]` (given together with `kv_segment_ids`).
    kv_segment_ids: None or int32 `[B, Tk]`.
    scale: the logit scale.
    block_sizes: forward (`block_q`, `block_k`) and backward (`block_q_bwd`,
      `block_k_bwd`) tiles.
    interpret: run the kernels in Pallas' TPU interpret mode (on the CPU).

  Returns:
    `[B, Tq, Hq, D]` in `q.dtype`; rows with nothing to attend are 0. The mask, lengths and
    segment ids get no gradient.
  """
  dtype = q.dtype
  if dtype == jnp.float16:  # not a TPU compute type: run in float32, cast back
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  batch, q_len, _, _ = q.shape
  kv_len = k.shape[1]
  q_lengths = jnp.full((batch,), q_len, jnp.int32) if q_lengths is None else q_lengths
  kv_lengths = jnp.full((batch,), kv_len, jnp.int32) if kv_lengths is None else kv_lengths
  # Clipped to the true lengths: padded rows and keys are then never allowed.
  q_lengths = jnp.clip(q_lengths.astype(jnp.int32), 0, q_len)
  kv_lengths = jnp.clip(kv_lengths.astype(jnp.int32), 0, kv_len)
  if mask is not None:  # [B or 1, Hq or 1, Tq, Tk]: only batch and heads stay broadcast
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (q_len, kv_len)).astype(jnp.int8)
  segments = None if q_segment_ids is None else (q_segment_ids, kv_segment_ids)
  out = _attention(q, k, v, mask, q_lengths, kv_lengths, segments, causal, scale,
                   block_sizes, interpret)
  return out.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _attention(q, k, v, mask, q_lengths, kv_lengths, segments, causal, scale, block_sizes,
               interpret):
  out, _ = _forward(q, k, v, mask, q_lengths, kv_lengths, segments, causal, scale,
                    block_sizes, interpret)
  return out


def _forward(q, k, v, mask, q_lengths, kv_lengths, segments, causal, scale, block_sizes,
             interpret):
  """Runs the forward kernel; returns (out `[B, Tq, Hq, D]`, lse `[B, Hq, Tq]` f32)."""
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  group = q_heads // kv_heads
  block_q, block_k, q_pad, kv_pad = _tiles(q_len, kv_len, block_sizes.block_q,
                                           block_sizes.block_k, interpret)
  dim_pad = _round_up(head_dim, NUM_LANES)
  qt = _heads_major(q, q_pad, dim_pad)  # [B, Hq, q_pad, dim_pad]
  kt = _heads_major(k, kv_pad, dim_pad)  # [B, Hkv, kv_pad, dim_pad]
  vt = _heads_major(v, kv_pad, dim_pad)  # [B, Hkv, kv_pad, dim_pad]
  mask_op, q_seg, kv_seg = _mask_operands(mask, segments, q_pad, kv_pad)

  def kv_block(b, i, j, q_len_ref, kv_len_ref):
    # Skipped blocks re-point at the last useful one: no new DMA for them.
    n = _num_kv_blocks(b, i, q_len_ref, kv_len_ref, causal=causal, block_q=block_q,
                       block_k=block_k)
    return jnp.minimum(j, jnp.maximum(n - 1, 0))

  q_spec = pl.BlockSpec((_SQ, _SQ, block_q, dim_pad), lambda b, h, i, j, *_: (b, h, i, 0))
  kv_spec = pl.BlockSpec((_SQ, _SQ, block_k, dim_pad),
                         lambda b, h, i, j, ql, kl: (b, h // group, kv_block(b, i, j, ql, kl),
                                                     0))
  lse_spec = pl.BlockSpec((_SQ, _SQ, block_q, NUM_LANES), lambda b, h, i, j, *_: (b, h, i, 0))
  operands = [x for x in (mask_op, q_seg, kv_seg) if x is not None]
  in_specs = [q_spec, kv_spec, kv_spec] + _mask_specs(
      mask_op, segments, block_q, block_k, head_of=lambda h, j: h,
      q_block_of=lambda i, j: i, kv_block_of=lambda i, j: j)
  kernel = functools.partial(_fwd_kernel, causal=causal, scale=scale, block_q=block_q,
                             block_k=block_k, has_mask=mask is not None,
                             has_segments=segments is not None)
  out, lse = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, q_heads, q_pad // block_q, kv_pad // block_k),
          in_specs=in_specs,
          out_specs=[q_spec, lse_spec],
          scratch_shapes=[
              pltpu.VMEM((block_q, NUM_LANES), jnp.float32),  # m
              pltpu.VMEM((block_q, NUM_LANES), jnp.float32),  # l
              pltpu.VMEM((block_q, dim_pad), jnp.float32),  # acc
          ]),
      out_shape=[jax.ShapeDtypeStruct(qt.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, q_heads, q_pad, NUM_LANES), jnp.float32)],
      compiler_params=_compiler_params(),
      interpret=_interpret(interpret),
  )(q_lengths, kv_lengths, qt, kt, vt, *operands)
  out = jnp.swapaxes(out[:, :, :q_len, :head_dim], 1, 2)  # [B, Tq, Hq, D]
  return out, lse[:, :, :q_len, 0]  # lse: [B, Hq, Tq]


def _fwd(q, k, v, mask, q_lengths, kv_lengths, segments, causal, scale, block_sizes,
         interpret):
  """The custom_vjp forward: the output, and what the backward pass recomputes from."""
  out, lse = _forward(q, k, v, mask, q_lengths, kv_lengths, segments, causal, scale,
                      block_sizes, interpret)
  return out, (q, k, v, mask, q_lengths, kv_lengths, segments, out, lse)


def _bwd(causal, scale, block_sizes, interpret, residuals, d_out):
  """dq, dk, dv by FlashAttention-2's backward pass; None for the masks and lengths."""
  q, k, v, mask, q_lengths, kv_lengths, segments, out, lse = residuals
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  group = q_heads // kv_heads
  block_q, block_k, q_pad, kv_pad = _tiles(q_len, kv_len, block_sizes.block_q_bwd,
                                           block_sizes.block_k_bwd, interpret)
  num_q_blocks, num_kv_blocks = q_pad // block_q, kv_pad // block_k
  dim_pad = _round_up(head_dim, NUM_LANES)
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, Tq, Hq]
  delta = _lanes(jnp.swapaxes(delta, 1, 2), q_pad)  # [B, Hq, q_pad, 128]
  lse = _lanes(lse, q_pad)  # [B, Hq, q_pad, 128]
  qt = _heads_major(q, q_pad, dim_pad)  # [B, Hq, q_pad, dim_pad]
  dot_t = _heads_major(d_out.astype(q.dtype), q_pad, dim_pad)  # [B, Hq, q_pad, dim_pad]
  kt = _heads_major(k, kv_pad, dim_pad)  # [B, Hkv, kv_pad, dim_pad]
  vt = _heads_major(v, kv_pad, dim_pad)  # [B, Hkv, kv_pad, dim_pad]
  mask_op, q_seg, kv_seg = _mask_operands(mask, segments, q_pad, kv_pad)
  operands = [x for x in (mask_op, q_seg, kv_seg) if x is not None]
  has = dict(has_mask=mask is not None, has_segments=segments is not None)
  static = dict(causal=causal, scale=scale, block_q=block_q, block_k=block_k)

  # dq: grid (batch, q_heads, q blocks, kv blocks).
  def kv_block(b, i, j, q_len_ref, kv_len_ref):
    n = _num_kv_blocks(b, i, q_len_ref, kv_len_ref, causal=causal, block_q=block_q,
                       block_k=block_k)
    return jnp.minimum(j, jnp.maximum(n - 1, 0))

  q_spec = pl.BlockSpec((_SQ, _SQ, block_q, dim_pad), lambda b, h, i, j, *_: (b, h, i, 0))
  row_spec = pl.BlockSpec((_SQ, _SQ, block_q, NUM_LANES), lambda b, h, i, j, *_: (b, h, i, 0))
  kv_spec = pl.BlockSpec((_SQ, _SQ, block_k, dim_pad),
                         lambda b, h, i, j, ql, kl: (b, h // group, kv_block(b, i, j, ql, kl),
                                                     0))
  in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec] + _mask_specs(
      mask_op, segments, block_q, block_k, head_of=lambda h, j: h,
      q_block_of=lambda i, j: i, kv_block_of=lambda i, j: j)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, **static, **has),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, q_heads, num_q_blocks, num_kv_blocks),
          in_specs=in_specs,
          out_specs=q_spec,
          scratch_shapes=[pltpu.VMEM((block_q, dim_pad), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
      compiler_params=_compiler_params(),
      interpret=_interpret(interpret),
  )(q_lengths, kv_lengths, qt, kt, vt, dot_t, lse, delta, *operands)

  # dk, dv: grid (batch, kv_heads, kv blocks, group * q blocks); the inner index t walks
  # the q blocks of each query head of the group in turn.
  def q_head(h, t):
    return h * group + t // num_q_blocks

  q_spec = pl.BlockSpec((_SQ, _SQ, block_q, dim_pad),
                        lambda b, h, j, t, *_: (b, q_head(h, t), t % num_q_blocks, 0))
  row_spec = pl.BlockSpec((_SQ, _SQ, block_q, NUM_LANES),
                          lambda b, h, j, t, *_: (b, q_head(h, t), t % num_q_blocks, 0))
  kv_spec = pl.BlockSpec((_SQ, _SQ, block_k, dim_pad), lambda b, h, j, t, *_: (b, h, j, 0))
  in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec] + _mask_specs(
      mask_op, segments, block_q, block_k, head_of=q_head,
      q_block_of=lambda j, t: t % num_q_blocks, kv_block_of=lambda j, t: j)
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, **static, **has, num_q_blocks=num_q_blocks),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, kv_heads, num_kv_blocks, group * num_q_blocks),
          in_specs=in_specs,
          out_specs=[kv_spec, kv_spec],
          scratch_shapes=[pltpu.VMEM((block_k, dim_pad), jnp.float32),
                          pltpu.VMEM((block_k, dim_pad), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype),
                 jax.ShapeDtypeStruct(vt.shape, v.dtype)],
      compiler_params=_compiler_params(),
      interpret=_interpret(interpret),
  )(q_lengths, kv_lengths, qt, kt, vt, dot_t, lse, delta, *operands)

  dq = jnp.swapaxes(dq[:, :, :q_len, :head_dim], 1, 2)  # [B, Tq, Hq, D]
  dk = jnp.swapaxes(dk[:, :, :kv_len, :head_dim], 1, 2)  # [B, Tk, Hkv, D]
  dv = jnp.swapaxes(dv[:, :, :kv_len, :head_dim], 1, 2)  # [B, Tk, Hkv, D]
  return dq, dk, dv, None, None, None, None


_attention.defvjp(_fwd, _bwd)
