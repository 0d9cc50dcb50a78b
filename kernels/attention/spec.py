"""The contract between `kernels.attention`'s front end and its backends.

Every backend (`chunked`, `gpu`, `tpu`) is a module with two functions, and
`kernels.attention.vjp` ties them together under one `jax.custom_vjp`:

```
forward(q, k, v, bias, masks, spec) -> (out, lse)
backward(q, k, v, bias, masks, spec, out, lse, d_out, delta, bias_grad) -> (dq, dk, dv, dbias)
```

- `q [B, Tq, Hq, D]`, `k`, `v [B, Tk, Hkv, D]`, one float dtype, `Hq % Hkv == 0`.
- `bias`: None or a float array `[B or 1, Hq or 1, Tq, Tk]`, added to the logits after the
  soft cap (FlashAttention's and Gemma's order); read in float32.
- `masks`: a `Masks` (below) of integer and bool arrays; no gradient.
- `spec`: the static `Spec` (below): scale, the diagonal `Band`, the soft cap, the tiles.
- `out [B, Tq, Hq, D]` in `q.dtype` and `lse` float32 `[B, Hq, Tq]` (float64 for float64
  inputs, which only the XLA backend takes), the natural
  log-sum-exp of each row's logits; a row with no key to attend has `out = 0` and
  `lse = -inf`. Rows past `q_lengths` may hold anything: the caller zeroes them (and so
  their cotangents).
- `delta`, `[B, Hq, Tq]` in `lse`'s dtype, is `rowsum(d_out * out) - d_lse` (the caller's; with the
  log-sum-exp's cotangent folded in, `d logits = p * (d_out v^T - delta)`).
- `dq`, `dk`, `dv` in the dtypes of `q`, `k`, `v`; `dbias` float32 `[B, Hq, Tq, Tk]`, or
  None when `bias_grad` is False (the caller sums it down to the bias' shape).

The logits of one (query `i`, key `j`) pair are
`cap(scale * q_i . k_j) + bias[i, j]`, `cap(s) = c * tanh(s / c)` when `spec.soft_cap = c`,
and the pair may be attended iff the `Band` holds `j - i` and every mask in `Masks` allows it
(see `kernels.attention.reference`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from kernels._indexing import as_int32, div

__all__ = ["ALIGNMENTS", "Band", "Masks", "Spec", "kv_block_range", "make_band",
           "q_block_range", "soft_cap", "soft_cap_grad"]

# How a causal mask or a window lines up when q_len != kv_len.
ALIGNMENTS = ("top_left", "bottom_right")


@dataclasses.dataclass(frozen=True)
class Band:
  """The allowed diagonals: key `j` of query `i` may be attended iff
  `lower <= j - i <= upper` (None: unbounded on that side).

  Causal top-left attention is `Band(None, 0)`; bottom-right is
  `Band(None, kv_len - q_len)`; a window `(left, right)` is
  `Band(offset - left, offset + right)` with the alignment's offset.
  """

  lower: int | None
  upper: int | None

  def allows(self, rows, cols):
    """The bool array `lower <= cols - rows <= upper` (broadcasting), or None if unbounded.

    Args:
      rows, cols: int32 arrays (or ints) of query and key positions.
    """
    diff = cols - rows
    allowed = None
    if self.lower is not None:
      allowed = diff >= as_int32(self.lower)
    if self.upper is not None:
      below = diff <= as_int32(self.upper)
      allowed = below if allowed is None else jnp.logical_and(allowed, below)
    return allowed


def make_band(q_len: int, kv_len: int, *, causal: bool = False,
              local_window_size: tuple[int, int] | None = None,
              causal_alignment: str = "top_left") -> Band | None:
  """The `Band` of a causal mask and/or a local window, or None when neither is given.

  Args:
    q_len, kv_len: Tq and Tk.
    causal: query `i` sees keys up to its own diagonal.
    local_window_size: `(left, right)`: query `i` sees keys `i - left ... i + right`
      (relative to its diagonal), as `jax.nn.dot_product_attention`'s.
    causal_alignment: "top_left" (the diagonal through query 0, key 0; `jax.nn`'s) or
      "bottom_right" (through the last query and the last key: query `i` sees keys up to
      `i + kv_len - q_len`, FlashAttention's for decoding and chunked prefill).
  """
  if not causal and local_window_size is None:
    return None
  offset = kv_len - q_len if causal_alignment == "bottom_right" else 0
  lower = upper = None
  if local_window_size is not None:
    left, right = local_window_size
    lower, upper = offset - left, offset + right
  if causal:
    upper = offset if upper is None else min(upper, offset)
  return Band(lower, upper)


def kv_block_range(band: Band | None, q_start, block_q: int, block_k: int, num_k_blocks):
  """`(first, stop)`: the key blocks that hold an allowed key for a query block.

  Every key of the queries `[q_start, q_start + block_q)` that the band allows lies in
  key blocks `[first, stop)`; the kernels visit only those (and `stop <= first` means none).
  `q_start` and `num_k_blocks` may be Python ints or int32 scalars (program ids).
  """
  if band is None:
    return as_int32(0), as_int32(num_k_blocks)
  first, stop = as_int32(0), as_int32(num_k_blocks)
  if band.lower is not None:  # the smallest allowed key is q_start + lower
    first = div(jnp.maximum(q_start + band.lower, 0), block_k)
  if band.upper is not None:  # the largest is q_start + block_q - 1 + upper
    last = q_start + (block_q - 1 + band.upper)
    stop = jnp.minimum(stop, jnp.where(last < 0, 0, div(jnp.maximum(last, 0), block_k) + 1))
  return as_int32(first), as_int32(stop)


def q_block_range(band: Band | None, k_start, block_k: int, block_q: int, num_q_blocks):
  """`(first, stop)`: the query blocks that attend any key of a key block.

  The transpose of `kv_block_range`, for the dk/dv kernels: the queries that the band
  lets see the keys `[k_start, k_start + block_k)` lie in query blocks `[first, stop)`.
  """
  if band is None:
    return as_int32(0), as_int32(num_q_blocks)
  first, stop = as_int32(0), as_int32(num_q_blocks)
  if band.upper is not None:  # the smallest query is k_start - upper
    first = div(jnp.maximum(k_start - band.upper, 0), block_q)
  if band.lower is not None:  # the largest is k_start + block_k - 1 - lower
    last = k_start + (block_k - 1 - band.lower)
    stop = jnp.minimum(stop, jnp.where(last < 0, 0, div(jnp.maximum(last, 0), block_q) + 1))
  return as_int32(first), as_int32(stop)


def soft_cap(s, cap: float | None):
  """`cap * tanh(s / cap)` (Gemma 2's logit soft-capping), or `s` when `cap` is None."""
  if cap is None:
    return s
  return cap * jnp.tanh(s / cap)


def soft_cap_grad(capped, cap: float | None):
  """d soft_cap(s) / ds from the capped value `t`: `1 - (t / cap)^2` (1 when no cap)."""
  if cap is None:
    return 1.0
  ratio = capped / cap
  return 1.0 - ratio * ratio


class Masks(NamedTuple):
  """The masking operands (a pytree; none takes a gradient).

  Attributes:
    mask: None or bool `[B or 1, Hq or 1, Tq or 1, Tk or 1]` (True: attend).
    q_lengths: None or int32 `[B]`: query rows at or past it are padding.
    kv_lengths: None or int32 `[B]`: keys at or past it are never attended.
    q_segment_ids: None or int32 `[B, Tq]` (given with `kv_segment_ids`).
    kv_segment_ids: None or int32 `[B, Tk]`.
  """

  mask: Any = None
  q_lengths: Any = None
  kv_lengths: Any = None
  q_segment_ids: Any = None
  kv_segment_ids: Any = None


@dataclasses.dataclass(frozen=True)
class Spec:
  """The static options of one attention call (hashable: a `nondiff_argnums` argument).

  Attributes:
    scale: the logit scale.
    band: the allowed diagonals (causal, window), or None.
    soft_cap: `c` of `c * tanh(s / c)`, or None.
    block_sizes: the backend's tiles (its `BlockSizes`).
    interpret: run Pallas kernels in interpret mode.
  """

  scale: float
  band: Band | None = None
  soft_cap: float | None = None
  block_sizes: Any = None
  interpret: bool = False
