"""The plain definition of attention that every other path is tested against.

Semantics shared by every implementation (`impl=`):

- Layout `[batch, seq, heads, head_dim]`. `q` has `Hq` heads, `k`/`v` have `Hkv` heads with
  `Hq % Hkv == 0`; query head `h` reads key/value head `h // (Hq // Hkv)` (grouped-query and
  multi-query attention).
- The logits are `cap(scale * q . k) + bias`: `scale` defaults to `1 / sqrt(head_dim)`,
  `cap(s) = c * tanh(s / c)` when `logits_soft_cap = c` (Gemma 2), and `bias` is an additive
  float array broadcastable to `[B, Hq, Tq, Tk]` (ALiBi, relative positions, pair bias),
  added after the cap.
- A query `i` of example `b` may attend key `j` iff every given condition holds:
  causal: `j <= i + offset`, where `offset` is 0 for `causal_alignment="top_left"`
  (`jax.nn.dot_product_attention`'s) and `kv_len - q_len` for "bottom_right"
  (FlashAttention's: the last query sees the last key);
  `local_window_size=(left, right)`: `i + offset - left <= j <= i + offset + right`;
  `kv_lengths[b]`: `j < kv_lengths[b]`;
  `q_lengths[b]`: `i < q_lengths[b]` (rows past the length are padding);
  `segment_ids`: `q_segment_ids[b, i] == kv_segment_ids[b, j]`;
  `mask`: `mask[b, h, i, j]` (a boolean array broadcastable to `[B, Hq, Tq, Tk]`).
- A query row with no key to attend (fully masked, or padding) gives zeros, never NaN, and
  passes no gradient; its log-sum-exp is `-inf`.
- Logits, softmax and accumulation run in float32 (or float64 for float64 inputs); the
  output has the dtype of `q`, the log-sum-exp is float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.attention.spec import make_band, soft_cap

__all__ = ["attention_reference", "allowed_mask"]


def allowed_mask(batch: int, q_len: int, kv_len: int, *, causal: bool = False, mask=None,
                 q_lengths=None, kv_lengths=None, q_segment_ids=None, kv_segment_ids=None,
                 local_window_size: tuple[int, int] | None = None,
                 causal_alignment: str = "top_left") -> jax.Array | None:
  """The boolean `[B, 1 or Hq, Tq, Tk]` mask of allowed (query, key) pairs, or None for all.

  Args:
    batch, q_len, kv_len: B, Tq, Tk.
    causal: allow only keys up to the diagonal (see `causal_alignment`).
    mask: bool, broadcastable to `[B, Hq, Tq, Tk]`.
    q_lengths, kv_lengths: int32 `[B]` valid lengths.
    q_segment_ids, kv_segment_ids: int32 `[B, Tq]`, `[B, Tk]`.
    local_window_size: `(left, right)` keys either side of the diagonal, or None.
    causal_alignment: "top_left" or "bottom_right" (see the module docstring).

  Returns:
    A bool array broadcastable to `[B, Hq, Tq, Tk]`, or None when nothing is masked.
  """
  allowed = None

  def both(a, b):
    return b if a is None else jnp.logical_and(a, b)

  qi = jnp.arange(q_len)[:, None]
  kj = jnp.arange(kv_len)[None, :]
  band = make_band(q_len, kv_len, causal=causal, local_window_size=local_window_size,
                   causal_alignment=causal_alignment)
  if band is not None:
    allowed = both(allowed, band.allows(qi, kj)[None, None])
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


def attention_reference(q, k, v, bias=None, *, causal: bool = False, mask=None,
                        q_lengths=None, kv_lengths=None, q_segment_ids=None,
                        kv_segment_ids=None, scale: float | None = None,
                        local_window_size: tuple[int, int] | None = None,
                        causal_alignment: str = "top_left",
                        logits_soft_cap: float | None = None,
                        return_residual: bool = False):
  """Attention by its definition, materializing the `[B, Hq, Tq, Tk]` logits.

  Args:
    q: `[B, Tq, Hq, D]`.
    k: `[B, Tk, Hkv, D]`.
    v: `[B, Tk, Hkv, D]`.
    bias: None or float, broadcastable to `[B, Hq, Tq, Tk]`.
    causal, mask, q_lengths, kv_lengths, q_segment_ids, kv_segment_ids, local_window_size,
      causal_alignment, logits_soft_cap: see the module docstring.
    scale: logit scale; None for `1 / sqrt(D)`.
    return_residual: also return the log-sum-exp.

  Returns:
    `[B, Tq, Hq, D]` in `q.dtype`; with `return_residual`, also the log-sum-exp
    `[B, Tq, Hq]` (float32, float64 for float64 inputs; `-inf` on rows with nothing to
    attend), as `jax.nn.dot_product_attention(return_residual=True)` returns it.
  """
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  scale = head_dim ** -0.5 if scale is None else scale
  compute = jnp.float64 if q.dtype == jnp.float64 else jnp.float32
  group = q_heads // kv_heads
  k = jnp.repeat(k, group, axis=2).astype(compute)
  v = jnp.repeat(v, group, axis=2).astype(compute)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(compute), k) * scale  # [B, Hq, Tq, Tk]
  logits = soft_cap(logits, logits_soft_cap)
  if bias is not None:
    logits = logits + jnp.asarray(bias).astype(compute)
  allowed = allowed_mask(batch, q_len, kv_len, causal=causal, mask=mask, q_lengths=q_lengths,
                         kv_lengths=kv_lengths, q_segment_ids=q_segment_ids,
                         kv_segment_ids=kv_segment_ids, local_window_size=local_window_size,
                         causal_alignment=causal_alignment)
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  # 0 on fully masked rows; constant, as the softmax does not depend on it.
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  weights = jnp.exp(logits - row_max)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  probs = weights / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).astype(q.dtype)
  if not return_residual:
    return out
  denom = denom[..., 0]  # [B, Hq, Tq]
  lse = jnp.where(denom == 0, -jnp.inf,
                  row_max[..., 0] + jnp.log(jnp.where(denom == 0, 1.0, denom)))
  return out, jnp.swapaxes(lse, 1, 2)  # [B, Tq, Hq]
