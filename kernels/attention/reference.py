"""The plain definition of attention that every other path is tested against.

Semantics shared by every implementation (`impl=`):

- Layout `[batch, seq, heads, head_dim]`. `q` has `Hq` heads, `k`/`v` have `Hkv` heads with
  `Hq % Hkv == 0`; query head `h` reads key/value head `h // (Hq // Hkv)` (grouped-query and
  multi-query attention).
- `scale` defaults to `1 / sqrt(head_dim)`.
- A query `i` of example `b` may attend key `j` iff every given condition holds:
  causal: `j <= i` (top-left aligned, as `jax.nn.dot_product_attention`);
  `kv_lengths[b]`: `j < kv_lengths[b]`;
  `q_lengths[b]`: `i < q_lengths[b]` (rows past the length are padding);
  `segment_ids`: `q_segment_ids[b, i] == kv_segment_ids[b, j]`;
  `mask`: `mask[b, h, i, j]` (a boolean array broadcastable to `[B, Hq, Tq, Tk]`).
- A query row with no key to attend (fully masked, or padding) gives zeros, never NaN, and
  passes no gradient.
- Logits, softmax and accumulation run in float32 (or float64 for float64 inputs); the
  output has the dtype of `q`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["attention_reference", "allowed_mask"]


def allowed_mask(batch: int, q_len: int, kv_len: int, *, causal: bool = False, mask=None,
                 q_lengths=None, kv_lengths=None, q_segment_ids=None,
                 kv_segment_ids=None) -> jax.Array | None:
  """The boolean `[B, 1 or Hq, Tq, Tk]` mask of allowed (query, key) pairs, or None for all.

  Args:
    batch, q_len, kv_len: B, Tq, Tk.
    causal: allow only `j <= i`.
    mask: bool, broadcastable to `[B, Hq, Tq, Tk]`.
    q_lengths, kv_lengths: int32 `[B]` valid lengths.
    q_segment_ids, kv_segment_ids: int32 `[B, Tq]`, `[B, Tk]`.

  Returns:
    A bool array broadcastable to `[B, Hq, Tq, Tk]`, or None when nothing is masked.
  """
  allowed = None

  def both(a, b):
    return b if a is None else jnp.logical_and(a, b)

  qi = jnp.arange(q_len)[:, None]
  kj = jnp.arange(kv_len)[None, :]
  if causal:
    allowed = both(allowed, (kj <= qi)[None, None])
  if kv_lengths is not None:
    allowed = both(allowed, (kj[None] < kv_lengths[:, None, None])[:, None])
  if q_lengths is not None:
    allowed = both(allowed, (qi[None] < q_lengths[:, None, None])[:, None])
  if q_segment_ids is not None:
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    allowed = both(allowed, same[:, None])
  if mask is not None:
    allowed = both(allowed, mask.astype(bool))
  if allowed is not None:
    allowed = jnp.broadcast_to(allowed, (batch,) + allowed.shape[1:2] + (q_len, kv_len))
  return allowed


def attention_reference(q, k, v, *, causal: bool = False, mask=None, q_lengths=None,
                        kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
                        scale: float | None = None) -> jax.Array:
  """Attention by its definition, materializing the `[B, Hq, Tq, Tk]` logits.

  Args:
    q: `[B, Tq, Hq, D]`.
    k: `[B, Tk, Hkv, D]`.
    v: `[B, Tk, Hkv, D]`.
    causal, mask, q_lengths, kv_lengths, q_segment_ids, kv_segment_ids: see the module
      docstring.
    scale: logit scale; None for `1 / sqrt(D)`.

  Returns:
    `[B, Tq, Hq, D]` in `q.dtype`.
  """
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  scale = head_dim ** -0.5 if scale is None else scale
  compute = jnp.float64 if q.dtype == jnp.float64 else jnp.float32
  group = q_heads // kv_heads
  k = jnp.repeat(k, group, axis=2).astype(compute)
  v = jnp.repeat(v, group, axis=2).astype(compute)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(compute), k) * scale  # [B, Hq, Tq, Tk]
  allowed = allowed_mask(batch, q_len, kv_len, causal=causal, mask=mask, q_lengths=q_lengths,
                         kv_lengths=kv_lengths, q_segment_ids=q_segment_ids,
                         kv_segment_ids=kv_segment_ids)
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # fully masked rows
  weights = jnp.exp(logits - jax.lax.stop_gradient(row_max))
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  probs = weights / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  return out.astype(q.dtype)
