"""FlashAttention-2 for GPUs in Pallas with the Triton lowering, forward and backward.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> q = k = v = jax.random.normal(jax.random.key(0), (2, 100, 4, 64), jnp.bfloat16)
>>> out = kernels.attention(q, k, v, causal=True, impl="pallas_gpu")  # [2, 100, 4, 64]

The semantics are those of `kernels.attention.reference`. The wrapper pads the sequences
up to whole blocks and the head dim up to a power of two (Triton's tensors must have
power-of-two sizes), so that the kernels only ever see whole tiles. Each block size is
shrunk to the next power of two of its sequence and raised to 16 (`tl.dot`'s minimum).

- causal: key blocks above the diagonal are skipped (loop bounds), the diagonal masked;

- zero-padded head-dim columns change no logit and give zero output columns;
- padded keys are masked through a per-key validity vector (as are keys past `kv_lengths`);
- padded query rows are computed and sliced off (their cotangent is zero);
- query rows past `q_lengths` are zeroed after the kernel, which also zeroes their
  cotangent, so they pass no gradient (their `dO` and `delta` are 0, hence `dS` is 0).

Masks reach the kernels as tiles: segment ids and key validity as int32 vectors, an
explicit mask as an int8 `[Tq, Tk]` array per (batch, head) (broadcast dims stay 1 and
are indexed at 0). Every masked logit is `-inf`; the running max is replaced by 0 where
it is still `-inf`, so a row with nothing to attend keeps `l = 0`, gives output 0 and
`lse = -inf`, which the backward kernels read as "no gradient". Key blocks past
`kv_lengths` are masked, not skipped (the loops do not read the lengths).

References:
  Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
  Partitioning", 2023, https://arxiv.org/abs/2307.08691 (Algorithms 1 and 2).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from kernels._block_sizes import float32_dot_precision
from kernels._indexing import div, fori_loop
from kernels.attention.block_sizes import BlockSizes

__all__ = ["attention_gpu"]

# Triton's `tl.dot` needs every dimension >= 16, and every tensor a power-of-two size.
_MIN_DIM = 16
_DEFAULT_NUM_WARPS = 4
_DEFAULT_NUM_STAGES = 2


# ---------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------


def _dot(a, b, *, precision, trans_a=False, trans_b=False):
  """`a @ b` (optionally transposed), accumulated in float32.

  `precision` applies to float32 operands only (`kernels._block_sizes.float32_dot_precision`); 16-bit operands
  always take the tensor cores' native 16-bit product.
  """
  return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b,
                   precision=precision if a.dtype == jnp.float32 else None)


def _allowed(q_start, k_start, block_q, block_k, *, causal, q_seg, kv_seg, kv_valid,
             mask_tile):
  """The `[block_q, block_k]` bool tile of allowed pairs, or None when all are allowed.

  Args:
    q_start, k_start: the first query row and key of the tile.
    block_q, block_k: the tile's shape.
    causal: allow only key <= query.
    q_seg, kv_seg: int32 `[block_q]` and `[block_k]` segment ids, or None.
    kv_valid: int32 `[block_k]`, nonzero for real keys, or None.
    mask_tile: int8 `[block_q, block_k]`, nonzero to attend, or None.
  """
  allowed = None

  def both(a, b):
    return b if a is None else jnp.logical_and(a, b)

  if causal:
    rows = q_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
    cols = k_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
    allowed = both(allowed, cols <= rows)  # [block_q, block_k]
  if q_seg is not None:
    allowed = both(allowed, q_seg[:, None] == kv_seg[None, :])  # [block_q, block_k]
  if kv_valid is not None:
    allowed = both(allowed, jnp.broadcast_to(kv_valid[None, :] != 0, (block_q, block_k)))
  if mask_tile is not None:
    allowed = both(allowed, mask_tile != 0)  # [block_q, block_k]
  return allowed


def _causal_k_blocks(q_block, block_q, block_k, num_k_blocks):
  """How many key blocks the query block `q_block` sees under a causal mask."""
  # ceil((q_block + 1) * block_q / block_k), written with an int32 div: program ids are
  # int32 scalars for which `pl.cdiv` and `//` do not lower.
  upper = div((q_block + 1) * block_q + block_k - 1, block_k)
  return jnp.minimum(upper, num_k_blocks)


def _fwd_kernel(q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, kv_valid_ref, mask_ref,
                o_ref, lse_ref, *, scale, causal, block_q, block_k, precision):
  """One query block of one (batch, head): online softmax over the key blocks.

  Refs (batch and head squeezed): q `[block_q, D]`, k and v `[Tk, D]`, q_seg `[block_q]`,
  kv_seg and kv_valid `[Tk]`, mask int8 `[block_q, Tk]` (any of these four may be None);
  outputs o `[block_q, D]`, lse float32 `[block_q]`.
  """
  q_block = pl.program_id(0)
  kv_len, head_dim = k_ref.shape
  num_k_blocks = kv_len // block_k
  q = q_ref[...]  # [block_q, D]
  q_seg = None if q_seg_ref is None else q_seg_ref[...]  # [block_q]

  def body(k_block, carry):
    acc, m_prev, l_prev = carry  # [block_q, D], [block_q], [block_q]
    k_slice = pl.ds(k_block * block_k, block_k)
    k = k_ref[k_slice, :]  # [block_k, D]
    s = _dot(q, k, precision=precision, trans_b=True) * scale  # [block_q, block_k]
    allowed = _allowed(
        q_block * block_q, k_block * block_k, block_q, block_k, causal=causal, q_seg=q_seg,
        kv_seg=None if kv_seg_ref is None else kv_seg_ref[k_slice],
        kv_valid=None if kv_valid_ref is None else kv_valid_ref[k_slice],
        mask_tile=None if mask_ref is None else mask_ref[:, k_slice])
    if allowed is not None:
      s = jnp.where(allowed, s, -jnp.inf)
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))  # [block_q]
    # Rows that have seen no allowed key yet keep m = -inf; subtract 0 from them instead,
    # so that exp() gives 0 rather than exp(-inf - -inf) = nan.
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # [block_q]
    correction = jnp.exp(m_prev - m_safe)  # [block_q]
    p = jnp.exp(s - m_safe[:, None])  # [block_q, block_k]
    l_next = correction * l_prev + jnp.sum(p, axis=1)  # [block_q]
    v = v_ref[k_slice, :]  # [block_k, D]
    acc = correction[:, None] * acc + _dot(p.astype(v.dtype), v, precision=precision)  # [block_q, D]
    return acc, m_next, l_next

  acc = jnp.zeros((block_q, head_dim), jnp.float32)
  m = jnp.full((block_q,), -jnp.inf, jnp.float32)
  l = jnp.zeros((block_q,), jnp.float32)
  if causal:  # Key blocks entirely above the diagonal are never visited.
    upper = _causal_k_blocks(q_block, block_q, block_k, num_k_blocks)
  else:
    upper = num_k_blocks
  acc, m, l = fori_loop(0, upper, body, (acc, m, l))
  empty = l == 0.0  # [block_q]: rows with nothing to attend
  o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))


def _probs_and_dscores(q, k, v, do, lse, delta, allowed, scale, precision):
  """The backward of one tile (FlashAttention-2, Algorithm 2, lines 11-16).

  Args:
    q: `[block_q, D]`; k, v: `[block_k, D]`; do: `[block_q, D]`.
    lse, delta: float32 `[block_q]`; lse is -inf for rows with nothing to attend.
    allowed: bool `[block_q, block_k]` or None.
    scale: the logit scale.
    precision: of the float32 dots (see `_dot`).

  Returns:
    p: float32 `[block_q, block_k]`, the probabilities.
    ds: float32 `[block_q, block_k]`, d(loss)/d(logits before scaling), times scale.
  """
  s = _dot(q, k, precision=precision, trans_b=True) * scale  # [block_q, block_k]
  if allowed is not None:
    s = jnp.where(allowed, s, -jnp.inf)
  lse = jnp.where(lse == -jnp.inf, 0.0, lse)  # [block_q]; such rows have s = -inf anyway
  p = jnp.exp(s - lse[:, None])  # [block_q, block_k]
  dp = _dot(do, v, precision=precision, trans_b=True)  # [block_q, block_k]
  ds = p * (dp - delta[:, None]) * scale  # [block_q, block_k]
  return p, ds


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref,
               kv_valid_ref, mask_ref, dq_ref, *, scale, causal, block_q, block_k,
               precision):
  """dq of one query block: iterates over the key blocks.

  Refs (batch and head squeezed): q, do `[block_q, D]`, k, v `[Tk, D]`, lse, delta
  `[block_q]`, q_seg `[block_q]`, kv_seg, kv_valid `[Tk]`, mask `[block_q, Tk]`;
  output dq `[block_q, D]`.
  """
  q_block = pl.program_id(0)
  kv_len, head_dim = k_ref.shape
  num_k_blocks = kv_len // block_k
  q = q_ref[...]  # [block_q, D]
  do = do_ref[...]  # [block_q, D]
  lse = lse_ref[...]  # [block_q]
  delta = delta_ref[...]  # [block_q]
  q_seg = None if q_seg_ref is None else q_seg_ref[...]  # [block_q]

  def body(k_block, dq):
    k_slice = pl.ds(k_block * block_k, block_k)
    k = k_ref[k_slice, :]  # [block_k, D]
    v = v_ref[k_slice, :]  # [block_k, D]
    allowed = _allowed(
        q_block * block_q, k_block * block_k, block_q, block_k, causal=causal, q_seg=q_seg,
        kv_seg=None if kv_seg_ref is None else kv_seg_ref[k_slice],
        kv_valid=None if kv_valid_ref is None else kv_valid_ref[k_slice],
        mask_tile=None if mask_ref is None else mask_ref[:, k_slice])
    _, ds = _probs_and_dscores(q, k, v, do, lse, delta, allowed, scale, precision)
    return dq + _dot(ds.astype(k.dtype), k, precision=precision)  # [block_q, D]

  if causal:
    upper = _causal_k_blocks(q_block, block_q, block_k, num_k_blocks)
  else:
    upper = num_k_blocks
  dq = fori_loop(0, upper, body, jnp.zeros((block_q, head_dim), jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref,
                kv_valid_ref, mask_ref, dk_ref, dv_ref, *, scale, causal, block_q, block_k,
                precision):
  """dk and dv of one key block, for one query head: iterates over the query blocks.

  Refs (batch and head squeezed): q, do `[Tq, D]`, k, v `[block_k, D]`, lse, delta
  `[Tq]`, q_seg `[Tq]`, kv_seg, kv_valid `[block_k]`, mask `[Tq, block_k]`; outputs
  dk, dv `[block_k, D]`.
  """
  k_block = pl.program_id(0)
  q_len, head_dim = q_ref.shape
  num_q_blocks = q_len // block_q
  k = k_ref[...]  # [block_k, D]
  v = v_ref[...]  # [block_k, D]
  kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]  # [block_k]
  kv_valid = None if kv_valid_ref is None else kv_valid_ref[...]  # [block_k]

  def body(q_block, carry):
    dk, dv = carry  # [block_k, D], [block_k, D]
    q_slice = pl.ds(q_block * block_q, block_q)
    q = q_ref[q_slice, :]  # [block_q, D]
    do = do_ref[q_slice, :]  # [block_q, D]
    allowed = _allowed(
        q_block * block_q, k_block * block_k, block_q, block_k, causal=causal,
        q_seg=None if q_seg_ref is None else q_seg_ref[q_slice], kv_seg=kv_seg,
        kv_valid=kv_valid, mask_tile=None if mask_ref is None else mask_ref[q_slice, :])
    p, ds = _probs_and_dscores(q, k, v, do, lse_ref[q_slice], delta_ref[q_slice], allowed,
                               scale, precision)
    dv = dv + _dot(p.astype(do.dtype), do, precision=precision, trans_a=True)  # [block_k, D]
    dk = dk + _dot(ds.astype(q.dtype), q, precision=precision, trans_a=True)  # [block_k, D]
    return dk, dv

  # Under a causal mask, query blocks that end before this key block starts see none of it.
  lower = div(k_block * block_k, block_q) if causal else 0
  zeros = jnp.zeros((block_k, head_dim), jnp.float32)
  dk, dv = fori_loop(lower, num_q_blocks, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ---------------------------------------------------------------------------------------
# The wrapper.
# ---------------------------------------------------------------------------------------


def _next_power_of_2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pad_axis(x, axis: int, size: int, value=0):
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _block(requested: int, length: int) -> int:
  """`requested`, shrunk to what the sequence needs and raised to Triton's minimum of 16."""
  return max(_MIN_DIM, min(requested, _next_power_of_2(length)))


@dataclasses.dataclass(frozen=True)
class _Config:
  """The static options of the kernels (hashable: a `nondiff_argnums` argument)."""

  causal: bool
  scale: float
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int
  num_warps: int
  num_stages: int
  num_warps_bwd: int
  num_stages_bwd: int
  precision: object  # of the float32 dots: a lax.Precision or lax.DotAlgorithmPreset
  interpret: bool


@functools.partial(jax.jit, static_argnames=("causal", "scale", "block_sizes", "interpret"))
def attention_gpu(q, k, v, *, causal: bool = False, mask=None, q_lengths=None,
                  kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
                  scale: float | None = None, block_sizes: BlockSizes | None = None,
                  interpret: bool = False) -> jax.Array:
  """FlashAttention-2 in Pallas (Triton lowering), differentiable through its own kernels.

  Args:
    q: `[B, Tq, Hq, D]`, float32, bfloat16 or float16.
    k: `[B, Tk, Hkv, D]`, `Hq % Hkv == 0`.
    v: `[B, Tk, Hkv, D]`.
    causal: query `i` attends only keys `j <= i`.
    mask: bool, 4-D, broadcastable to `[B, Hq, Tq, Tk]`, or None.
    q_lengths, kv_lengths: int32 `[B]` or None.
    q_segment_ids, kv_segment_ids: int32 `[B, Tq]` and `[B, Tk]`, both or neither.
    scale: the logit scale; None for `1 / sqrt(D)`.
    block_sizes: tiles (and Triton num_warps/num_stages); None for the GPU defaults.
    interpret: run the kernels in the Pallas interpreter (any backend).

  Returns:
    `[B, Tq, Hq, D]` in `q.dtype`; rows with nothing to attend are 0.
  """
  batch, q_len, q_heads, head_dim = q.shape
  kv_len = k.shape[1]
  scale = head_dim ** -0.5 if scale is None else float(scale)
  block_sizes = block_sizes or BlockSizes.default("gpu", head_dim, q.dtype)
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("q_segment_ids and kv_segment_ids must be given together; got "
                     f"{q_segment_ids is None=} and {kv_segment_ids is None=}")
  blocks = (_block(block_sizes.block_q, q_len), _block(block_sizes.block_k, kv_len),
            _block(block_sizes.block_q_bwd, q_len), _block(block_sizes.block_k_bwd, kv_len))
  # Blocks are powers of two, so padding to the largest fits every kernel's tiling.
  q_pad = _round_up(q_len, max(blocks[0], blocks[2]))
  kv_pad = _round_up(kv_len, max(blocks[1], blocks[3]))
  dim_pad = max(_MIN_DIM, _next_power_of_2(head_dim))

  qp = _pad_axis(_pad_axis(q, 1, q_pad), 3, dim_pad)  # [B, Tq', Hq, D']
  kp = _pad_axis(_pad_axis(k, 1, kv_pad), 3, dim_pad)  # [B, Tk', Hkv, D']
  vp = _pad_axis(_pad_axis(v, 1, kv_pad), 3, dim_pad)  # [B, Tk', Hkv, D']
  q_seg = kv_seg = kv_valid = None
  if q_segment_ids is not None:
    q_seg = _pad_axis(q_segment_ids.astype(jnp.int32), 1, q_pad)  # [B, Tq']
    kv_seg = _pad_axis(kv_segment_ids.astype(jnp.int32), 1, kv_pad)  # [B, Tk']
  if kv_lengths is not None or kv_pad != kv_len:
    limit = kv_len if kv_lengths is None else jnp.minimum(kv_lengths, kv_len)
    kv_valid = (jnp.arange(kv_pad, dtype=jnp.int32)[None, :]
                < jnp.reshape(limit, (-1, 1)))  # [B or 1, Tk']
    kv_valid = jnp.broadcast_to(kv_valid, (batch, kv_pad)).astype(jnp.int32)
  if mask is not None:  # int8: Triton has no bool tensors in memory.
    mask = jnp.broadcast_to(mask.astype(jnp.int8), mask.shape[:2] + (q_len, kv_len))
    mask = _pad_axis(_pad_axis(mask, 2, q_pad), 3, kv_pad)  # [B|1, Hq|1, Tq', Tk']

  config = _Config(causal=causal, scale=scale, block_q=blocks[0], block_k=blocks[1],
                   block_q_bwd=blocks[2], block_k_bwd=blocks[3],
                   num_warps=block_sizes.num_warps or _DEFAULT_NUM_WARPS,
                   num_stages=block_sizes.num_stages or _DEFAULT_NUM_STAGES,
                   num_warps_bwd=(block_sizes.num_warps_bwd or block_sizes.num_warps
                                  or _DEFAULT_NUM_WARPS),
                   num_stages_bwd=(block_sizes.num_stages_bwd or block_sizes.num_stages
                                   or _DEFAULT_NUM_STAGES),
                   precision=float32_dot_precision(block_sizes.float32_dot, interpret),
                   interpret=interpret)
  out = _flash_attention(config, qp, kp, vp, q_seg, kv_seg, kv_valid, mask)
  out = out[:, :q_len, :, :head_dim]  # [B, Tq, Hq, D]
  if q_lengths is not None:  # Rows past the length: output 0, and so cotangent 0.
    row_valid = jnp.arange(q_len, dtype=jnp.int32)[None, :] < q_lengths[:, None]  # [B, Tq]
    out = jnp.where(row_valid[:, :, None, None], out, jnp.zeros((), out.dtype))
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_attention(config, q, k, v, q_seg, kv_seg, kv_valid, mask):
  """Padded attention: q `[B, Tq', Hq, D']`, k and v `[B, Tk', Hkv, D']` -> `[B, Tq', Hq, D']`."""
  return _forward(config, q, k, v, q_seg, kv_seg, kv_valid, mask)[0]


def _mask_index(mask):
  """Maps (b, h) to the mask's block index, reading broadcast (size-1) dims at 0."""
  batch_axis_size, head_axis_size = mask.shape[:2]
  return lambda b, h: (b if batch_axis_size > 1 else 0, h if head_axis_size > 1 else 0)


def _forward(config, q, k, v, q_seg, kv_seg, kv_valid, mask):
  """Runs the forward kernel; returns (out `[B, Tq', Hq, D']`, lse f32 `[B, Hq, Tq']`)."""
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  group = q_heads // kv_heads
  block_q, block_k = config.block_q, config.block_k
  in_specs = [
      pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0)),
      pl.BlockSpec((None, kv_len, None, head_dim), lambda i, b, h: (b, 0, h // group, 0)),
      pl.BlockSpec((None, kv_len, None, head_dim), lambda i, b, h: (b, 0, h // group, 0)),
      None if q_seg is None else pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),
      None if kv_seg is None else pl.BlockSpec((None, kv_len), lambda i, b, h: (b, 0)),
      None if kv_valid is None else pl.BlockSpec((None, kv_len), lambda i, b, h: (b, 0)),
  ]
  if mask is None:
    in_specs.append(None)
  else:
    index = _mask_index(mask)
    in_specs.append(pl.BlockSpec((None, None, block_q, kv_len),
                                 lambda i, b, h: (*index(b, h), i, 0)))
  kernel = functools.partial(_fwd_kernel, scale=config.scale, causal=config.causal,
                             block_q=block_q, block_k=block_k, precision=config.precision)
  out, lse = pl.pallas_call(
      kernel,
      grid=(q_len // block_q, batch, q_heads),
      in_specs=in_specs,
      out_specs=[
          pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0)),
          pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i)),
      ],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, q_heads, q_len), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=config.interpret,
      name="flash_attention_fwd",
  )(q, k, v, q_seg, kv_seg, kv_valid, mask)
  return out, lse


def _fwd(config, q, k, v, q_seg, kv_seg, kv_valid, mask):
  out, lse = _forward(config, q, k, v, q_seg, kv_seg, kv_valid, mask)
  return out, (q, k, v, q_seg, kv_seg, kv_valid, mask, out, lse)


def _bwd(config, residuals, d_out):
  q, k, v, q_seg, kv_seg, kv_valid, mask, out, lse = residuals
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  group = q_heads // kv_heads
  block_q, block_k = config.block_q_bwd, config.block_k_bwd
  # delta_i = rowsum(dO_i * O_i) (FlashAttention-2, Algorithm 2, line 4).
  delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32),
                     out.astype(jnp.float32))  # [B, Hq, Tq']
  compiler_params = plgpu.CompilerParams(num_warps=config.num_warps_bwd,
                                         num_stages=config.num_stages_bwd)
  operands = (q, k, v, d_out, lse, delta, q_seg, kv_seg, kv_valid, mask)
  mask_index = None if mask is None else _mask_index(mask)

  # dq: a grid over (query blocks, batch, heads), each iterating over the key blocks.
  q_block_spec = pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0))
  kv_full_spec = pl.BlockSpec((None, kv_len, None, head_dim),
                              lambda i, b, h: (b, 0, h // group, 0))
  row_spec = pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=config.scale, causal=config.causal,
                        block_q=block_q, block_k=block_k, precision=config.precision),
      grid=(q_len // block_q, batch, q_heads),
      in_specs=[
          q_block_spec, kv_full_spec, kv_full_spec, q_block_spec, row_spec, row_spec,
          None if q_seg is None else pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),
          None if kv_seg is None else pl.BlockSpec((None, kv_len), lambda i, b, h: (b, 0)),
          None if kv_valid is None else pl.BlockSpec((None, kv_len), lambda i, b, h: (b, 0)),
          None if mask is None else pl.BlockSpec(
              (None, None, block_q, kv_len), lambda i, b, h: (*mask_index(b, h), i, 0)),
      ],
      out_specs=q_block_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=compiler_params,
      interpret=config.interpret,
      name="flash_attention_dq",
  )(*operands)

  # dk, dv: a grid over (key blocks, batch, query heads), each iterating over the query
  # blocks. With GQA every query head writes its own dk/dv (float32), summed per group.
  q_full_spec = pl.BlockSpec((None, q_len, None, head_dim), lambda j, b, h: (b, 0, h, 0))
  kv_block_spec = pl.BlockSpec((None, block_k, None, head_dim),
                               lambda j, b, h: (b, j, h // group, 0))
  row_full_spec = pl.BlockSpec((None, None, q_len), lambda j, b, h: (b, h, 0))
  dkv_spec = pl.BlockSpec((None, block_k, None, head_dim), lambda j, b, h: (b, j, h, 0))
  dkv_dtype = k.dtype if group == 1 else jnp.float32
  dkv_shape = jax.ShapeDtypeStruct((batch, kv_len, q_heads, head_dim), dkv_dtype)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=config.scale, causal=config.causal,
                        block_q=block_q, block_k=block_k, precision=config.precision),
      grid=(kv_len // block_k, batch, q_heads),
      in_specs=[
          q_full_spec, kv_block_spec, kv_block_spec, q_full_spec, row_full_spec,
          row_full_spec,
          None if q_seg is None else pl.BlockSpec((None, q_len), lambda j, b, h: (b, 0)),
          None if kv_seg is None else pl.BlockSpec((None, block_k), lambda j, b, h: (b, j)),
          None if kv_valid is None else pl.BlockSpec((None, block_k),
                                                     lambda j, b, h: (b, j)),
          None if mask is None else pl.BlockSpec(
              (None, None, q_len, block_k), lambda j, b, h: (*mask_index(b, h), 0, j)),
      ],
      out_specs=[dkv_spec, dkv_spec],
      out_shape=[dkv_shape, dkv_shape],
      compiler_params=compiler_params,
      interpret=config.interpret,
      name="flash_attention_dkv",
  )(*operands)
  if group > 1:
    dk = dk.reshape(batch, kv_len, kv_heads, group, head_dim).sum(3).astype(k.dtype)
    dv = dv.reshape(batch, kv_len, kv_heads, group, head_dim).sum(3).astype(v.dtype)
  # Segment ids, key validity and the mask are integer inputs: no cotangent.
  return dq, dk, dv, None, None, None, None


_flash_attention.defvjp(_fwd, _bwd)
