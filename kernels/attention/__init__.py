"""`attention(q, k, v, ...)`: one function, several implementations, one definition.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> q = k = v = jax.random.normal(jax.random.key(0), (2, 100, 4, 64), jnp.bfloat16)
>>> out = kernels.attention(q, k, v, causal=True)             # [2, 100, 4, 64] bfloat16
>>> out = kernels.attention(q, k, v, impl="xla_chunked")      # linear memory in seq length

The semantics (masks, GQA, padding, fully masked rows) are those of
`kernels.attention.reference`; every path is tested against it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kernels.attention.block_sizes import BlockSizes
from kernels.attention.reference import allowed_mask, attention_reference

__all__ = ["attention", "attention_reference", "allowed_mask", "BlockSizes", "IMPLS"]

IMPLS = ("auto", "xla", "xla_chunked", "pallas", "pallas_gpu", "pallas_tpu")
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)
# On the CPU, "auto" switches from the reference to the chunked path at this many logits per
# (batch, head). Measured (bench/results/attention_cpu.json, "crossover"): at seq 256 the two
# are even, from 512 on the chunked path is faster (fwd+bwd 2.5x at 512, 4x at 4096).
_CHUNKED_FROM_LOGITS = 512 * 512


def attention(q, k, v, *, causal: bool = False, mask=None, q_lengths=None, kv_lengths=None,
              segment_ids=None, scale: float | None = None, impl: str = "auto",
              block_sizes: BlockSizes | None = None) -> jax.Array:
  """Scaled dot-product attention, `softmax(q k^T * scale + masks) v`.

  Args:
    q: queries `[batch, q_len, q_heads, head_dim]`, float32, bfloat16 or float16.
    k: keys `[batch, kv_len, kv_heads, head_dim]`, `q_heads % kv_heads == 0` (GQA/MQA).
    v: values, the shape and dtype of `k`.
    causal: query `i` attends only keys `j <= i`.
    mask: bool, broadcastable to `[batch, q_heads, q_len, kv_len]` (True: attend); 2-D and
      3-D masks are broadcast from the right.
    q_lengths: int `[batch]`; query rows at or past the length are padding (zero output).
    kv_lengths: int `[batch]`; keys at or past the length are ignored.
    segment_ids: int `[batch, seq]` (self-attention, `q_len == kv_len`) or a pair
      `(q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len])`; attention stays
      within a segment (packed sequences).
    scale: the logit scale; None for `1 / sqrt(head_dim)`.
    impl: "auto" (Pallas on GPU and TPU, the best XLA path on the CPU), "xla" (the
      reference), "xla_chunked" (blockwise online softmax, linear memory), "pallas" (the
      kernel for this backend; on the CPU the GPU kernel in interpret mode), "pallas_gpu"
      or "pallas_tpu" (that kernel; interpret mode off its hardware).
    block_sizes: tile sizes; None for the backend's defaults.

  Returns:
    `[batch, q_len, q_heads, head_dim]` in `q.dtype`. Rows with nothing to attend are 0.

  Raises:
    ValueError: for inconsistent shapes, unsupported dtypes or unknown options, before
      anything is traced.
  """
  q_seg, kv_seg = _check(q, k, v, causal, mask, q_lengths, kv_lengths, segment_ids, scale,
                         impl, block_sizes)
  if mask is not None:
    mask = jnp.asarray(mask)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  if q_lengths is not None:
    q_lengths = jnp.asarray(q_lengths, jnp.int32)
  if kv_lengths is not None:
    kv_lengths = jnp.asarray(kv_lengths, jnp.int32)
  options = dict(causal=causal, mask=mask, q_lengths=q_lengths, kv_lengths=kv_lengths,
                 q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                 scale=q.shape[-1] ** -0.5 if scale is None else float(scale))
  backend = jax.default_backend()
  if impl == "auto":
    if backend in ("gpu", "tpu"):
      impl = "pallas"
    else:
      impl = "xla_chunked" if q.shape[1] * k.shape[1] >= _CHUNKED_FROM_LOGITS else "xla"
  if impl == "pallas":
    impl = "pallas_tpu" if backend == "tpu" else "pallas_gpu"
  if impl == "xla":
    return attention_reference(q, k, v, **options)
  if impl == "xla_chunked":
    from kernels.attention.chunked import attention_chunked
    return attention_chunked(q, k, v, **options,
                             block_sizes=block_sizes or BlockSizes.default("cpu", q.shape[-1]))
  if impl == "pallas_gpu":
    from kernels.attention.gpu import attention_gpu
    return attention_gpu(q, k, v, **options,
                         block_sizes=block_sizes or BlockSizes.default("gpu", q.shape[-1], q.dtype),
                         interpret=backend != "gpu")
  from kernels.attention.tpu import attention_tpu
  return attention_tpu(q, k, v, **options,
                       block_sizes=block_sizes or BlockSizes.default("tpu", q.shape[-1]),
                       interpret=backend != "tpu")


def _check(q, k, v, causal, mask, q_lengths, kv_lengths, segment_ids, scale, impl,
           block_sizes):
  """Validates everything static; returns the (q, kv) segment ids."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or len(x.shape) != 4:
      raise ValueError(f"{name} must be [batch, seq, heads, head_dim]; got "
                       f"{name}.shape={getattr(x, 'shape', type(x).__name__)}")
    if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in _DTYPES]:
      raise ValueError(f"{name}.dtype must be float32, bfloat16, float16 (or float64 on the "
                       f"XLA paths); got {x.dtype}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v must share a dtype; got {q.dtype=}, {k.dtype=}, {v.dtype=}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape; got {k.shape=} and {v.shape=}")
  batch, q_len, q_heads, head_dim = q.shape
  if k.shape[0] != batch:
    raise ValueError(f"q and k must agree on batch; got {q.shape=} and {k.shape=}")
  if k.shape[3] != head_dim:
    raise ValueError(f"q and k must agree on head_dim; got {q.shape=} and {k.shape=}")
  if k.shape[2] == 0 or q_heads % k.shape[2]:
    raise ValueError(f"q_heads must be a multiple of kv_heads; got {q.shape=} and {k.shape=}")
  if min(q.shape) == 0 or min(k.shape) == 0:
    raise ValueError(f"q and k must be non-empty; got {q.shape=} and {k.shape=}")
  kv_len = k.shape[1]
  if not isinstance(causal, bool):
    raise ValueError(f"causal must be a bool; got {causal!r}")
  if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)
                                and scale > 0):
    raise ValueError(f"scale must be None or a finite number > 0; got {scale!r}")
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be None or a kernels.attention.BlockSizes; "
                     f"got {type(block_sizes).__name__}")
  if jnp.dtype(q.dtype) == jnp.float64 and impl.startswith("pallas"):
    raise ValueError("float64 inputs run only on impl='xla' or 'xla_chunked'; "
                     f"got impl={impl!r}")
  for name, lengths in (("q_lengths", q_lengths), ("kv_lengths", kv_lengths)):
    if lengths is not None:
      if getattr(lengths, "shape", None) != (batch,) or not jnp.issubdtype(lengths.dtype,
                                                                         jnp.integer):
        raise ValueError(f"{name} must be an integer array of shape ({batch},); got "
                         f"{getattr(lengths, 'shape', None)} {getattr(lengths, 'dtype', '')}")
  if mask is not None:
    shape = getattr(mask, "shape", None)
    if shape is None or getattr(mask, "dtype", None) != jnp.bool_:
      raise ValueError(f"mask must be a bool array; got {getattr(mask, 'dtype', type(mask))}")
    target = (batch, q_heads, q_len, kv_len)
    if not 2 <= len(shape) <= 4 or any(
        s not in (1, t) for s, t in zip(shape[::-1], target[::-1])):
      raise ValueError(f"mask must be broadcastable to [batch, q_heads, q_len, kv_len] = "
                       f"{list(target)}; got mask.shape={shape}")
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError("segment_ids must be an array [batch, seq] or a pair "
                       f"(q_segment_ids, kv_segment_ids); got a sequence of {len(segment_ids)}")
    q_seg, kv_seg = segment_ids
  else:
    if q_len != kv_len:
      raise ValueError(f"a single segment_ids array needs q_len == kv_len; got {q_len} and "
                       f"{kv_len}: pass (q_segment_ids, kv_segment_ids)")
    q_seg = kv_seg = segment_ids
  for name, ids, length in (("q_segment_ids", q_seg, q_len), ("kv_segment_ids", kv_seg, kv_len)):
    if getattr(ids, "shape", None) != (batch, length) or not jnp.issubdtype(ids.dtype,
                                                                          jnp.integer):
      raise ValueError(f"{name} must be an integer array of shape ({batch}, {length}); got "
                       f"{getattr(ids, 'shape', None)} {getattr(ids, 'dtype', '')}")
  return jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32)
