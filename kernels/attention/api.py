"""`kernels.attention`: validation, the registry of implementations, `impl="auto"`.

Every implementation computes `kernels.attention.reference`'s definition. `IMPLEMENTATIONS`
says where each runs and which options it takes; a call that asks a path for an option it
lacks fails here, naming both, before anything is traced.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels._registry import Implementation
from kernels.attention.block_sizes import BlockSizes
from kernels.attention.reference import attention_reference
from kernels.attention.spec import ALIGNMENTS, Masks, Spec, make_band

__all__ = ["AUTO_TABLE", "AutoChoice", "IMPLEMENTATIONS", "IMPLS", "attention"]

# The options a path may support (capabilities), by the names of `attention`'s arguments.
OPTIONS = ("bias", "mask", "causal", "bottom_right", "local_window_size", "logits_soft_cap",
           "lengths", "segment_ids", "return_residual", "float32", "float64")
_ALL = frozenset(OPTIONS)
_HINTS = {"float32": "float32 inputs", "float64": "float64 inputs",
          "bottom_right": "causal_alignment='bottom_right' with q_len != kv_len"}


IMPLEMENTATIONS = {
    impl.name: impl for impl in (
        Implementation("xla", ("cpu", "gpu", "tpu"), supports=_ALL),
        Implementation("xla_chunked", ("cpu", "gpu", "tpu"), supports=_ALL),
        Implementation("pallas_gpu", ("gpu",), interpretable=True,
                       supports=_ALL - {"float64"}),
        Implementation("pallas_tpu", ("tpu",), interpretable=True,
                       supports=_ALL - {"float64"}),
        # cuDNN's fused attention through jax.nn.dot_product_attention: 16-bit inputs only,
        # no soft cap or segment ids, and a causal diagonal through the top-left corner.
        Implementation("cudnn", ("gpu",),
                       supports=_ALL - {"logits_soft_cap", "segment_ids", "bottom_right",
                                        "float32", "float64"}),
    )
}
IMPLS = ("auto", "xla", "xla_chunked", "pallas", "pallas_gpu", "pallas_tpu", "cudnn")


class AutoChoice(NamedTuple):
  """How `impl="auto"` picks on one platform, and the measurement that says so.

  Attributes:
    source: the bench/results JSON the steps come from.
    steps: `(limit, impl)` pairs in order: the first whose `limit` (logits per batch and
      head, `q_len * kv_len`) is None or above the call's wins.
  """

  source: str
  steps: tuple


# impl="auto", per platform: the fastest path `python -m bench attention` measured.
# cpu, "crossover": at seq 256 the XLA reference and the chunked path are even, from 512 on
#   the chunked path is faster (fwd+bwd 2.5x at 512, 4x at 4096); test_api.py re-reads it.
# gpu and tpu: nothing measured on one yet (bench/results holds no attention_gpu.json or
#   attention_tpu.json), so they take the path the benchmark last showed fastest: the CPU's.
AUTO_TABLE = {
    "cpu": AutoChoice("bench/results/attention_cpu.json",
                      ((512 * 512, "xla"), (None, "xla_chunked"))),
}

_DTYPES = tuple(jnp.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64))


def attention(q, k, v, bias=None, mask=None, *, causal: bool = False,
              causal_alignment: str = "top_left", local_window_size=None,
              logits_soft_cap: float | None = None, q_lengths=None, kv_lengths=None,
              segment_ids=None, scale: float | None = None, impl: str = "auto",
              block_sizes: BlockSizes | None = None, return_residual: bool = False,
              interpret: bool | None = None, is_causal: bool | None = None,
              implementation: str | None = None, query_seq_lengths=None,
              key_value_seq_lengths=None):
  """Scaled dot-product attention, `softmax(cap(q k^T * scale) + bias + masks) v`.

  Args:
    q: queries `[batch, q_len, q_heads, head_dim]`, float32, bfloat16 or float16 (float64
      on the XLA paths).
    k: keys `[batch, kv_len, kv_heads, head_dim]`, `q_heads % kv_heads == 0` (GQA/MQA).
    v: values, the shape and dtype of `k`.
    bias: float, broadcastable to `[batch, q_heads, q_len, kv_len]`, added to the logits
      (after the soft cap); differentiable.
    mask: bool, broadcastable to `[batch, q_heads, q_len, kv_len]` (True: attend); 2-D and
      3-D masks are broadcast from the right.
    causal: query `i` attends only keys up to its diagonal (see `causal_alignment`).
    causal_alignment: "top_left" (key `j <= i`, `jax.nn.dot_product_attention`'s) or
      "bottom_right" (`j <= i + kv_len - q_len`, FlashAttention's for decoding and chunked
      prefill). It places the local window's diagonal too.
    local_window_size: `(left, right)` or an int for both: query `i` attends keys from
      `left` before to `right` after its diagonal (sliding-window attention); blocks
      outside the window are skipped, not computed.
    logits_soft_cap: `c` to cap the logits at `c * tanh(s / c)` (Gemma 2), or None.
    q_lengths: int `[batch]`; query rows at or past the length are padding (zero output).
    kv_lengths: int `[batch]`; keys at or past the length are ignored.
    segment_ids: int `[batch, seq]` (self-attention, `q_len == kv_len`) or a pair
      `(q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len])`; attention stays
      within a segment (packed sequences).
    scale: the logit scale; None for `1 / sqrt(head_dim)`.
    impl: "auto" (the path measured fastest on this platform: `AUTO_TABLE`), "xla" (the
      reference), "xla_chunked" (blockwise online softmax, linear memory), "pallas" (this
      platform's kernel; the GPU kernel on the CPU), "pallas_gpu" or "pallas_tpu" (that
      kernel), "cudnn" (cuDNN through `jax.nn.dot_product_attention`; NVIDIA GPUs).
    block_sizes: tile sizes (`BlockSizes`, or `GpuBlockSizes` with Triton's options);
      None for the backend's defaults.
    return_residual: also return the log-sum-exp of every row, to merge partial
      attentions (`jax.nn.dot_product_attention`'s name).
    interpret: run a Pallas kernel in interpret mode; None: exactly when its hardware is
      not the default backend.
    is_causal, implementation, query_seq_lengths, key_value_seq_lengths:
      `jax.nn.dot_product_attention`'s names for `causal`, `impl`, `q_lengths` and
      `kv_lengths` (give one name or the other, not both).

  Returns:
    `[batch, q_len, q_heads, head_dim]` in `q.dtype`; rows with nothing to attend are 0.
    With `return_residual`, `(out, lse)`: `lse` float32 `[batch, q_len, q_heads]`, the
    natural log-sum-exp of each row's logits (`-inf` on rows with nothing to attend),
    differentiable.

  Raises:
    ValueError: for inconsistent shapes, unsupported dtypes, unknown options, or an
      option the chosen path does not support, before anything is traced.
  """
  causal = _alias("causal", causal, False, "is_causal", is_causal)
  impl = _alias("impl", impl, "auto", "implementation", implementation)
  q_lengths = _alias("q_lengths", q_lengths, None, "query_seq_lengths", query_seq_lengths)
  kv_lengths = _alias("kv_lengths", kv_lengths, None, "key_value_seq_lengths",
                      key_value_seq_lengths)
  _check_arrays(q, k, v)
  batch, q_len, q_heads, head_dim = q.shape
  kv_len = k.shape[1]
  window = _check_window(local_window_size)
  _check_scalars(causal, causal_alignment, logits_soft_cap, scale, impl, block_sizes,
                 return_residual, interpret)
  lengths = [_check_lengths(name, x, batch)
             for name, x in (("q_lengths", q_lengths), ("kv_lengths", kv_lengths))]
  q_seg, kv_seg = _check_segments(segment_ids, batch, q_len, kv_len)
  target = (batch, q_heads, q_len, kv_len)
  mask = _check_broadcast("mask", mask, target, bool_=True)
  bias = _check_broadcast("bias", bias, target, bool_=False)
  scale = head_dim ** -0.5 if scale is None else float(scale)
  soft_cap = None if logits_soft_cap is None else float(logits_soft_cap)

  platform = jax.default_backend()
  impl = _resolve(impl, platform, q_len * kv_len)
  used = _options_used(q, bias, mask, causal, causal_alignment, q_len, kv_len, window,
                       soft_cap, lengths, q_seg, return_residual)
  IMPLEMENTATIONS[impl].check(used, platform, hints=_HINTS,
                              instead="impl='xla' and 'xla_chunked' support every option")
  q_lengths, kv_lengths = lengths
  if impl == "xla":
    result = attention_reference(
        q, k, v, bias, causal=causal, mask=mask, q_lengths=q_lengths, kv_lengths=kv_lengths,
        q_segment_ids=q_seg, kv_segment_ids=kv_seg, scale=scale, local_window_size=window,
        causal_alignment=causal_alignment, logits_soft_cap=soft_cap,
        return_residual=return_residual)
    if return_residual:
      result = result[0], result[1].astype(jnp.float32)
    return result
  if impl == "cudnn":
    from kernels.attention.cudnn import attention_cudnn
    return attention_cudnn(q, k, v, bias, mask, causal=causal, local_window_size=window,
                           q_lengths=q_lengths, kv_lengths=kv_lengths, scale=scale,
                           return_residual=return_residual)
  from kernels.attention.vjp import blockwise_attention
  native = IMPLEMENTATIONS[impl].platforms
  spec = Spec(scale=scale,
              band=make_band(q_len, kv_len, causal=causal, local_window_size=window,
                             causal_alignment=causal_alignment),
              soft_cap=soft_cap,
              block_sizes=block_sizes or BlockSizes.default(
                  "cpu" if impl == "xla_chunked" else native[0], head_dim, q.dtype),
              interpret=(platform not in native) if interpret is None else interpret)
  if mask is not None:
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  if bias is not None:  # [B or 1, Hq or 1, Tq, Tk]: the kernels tile the last two
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    bias = jnp.broadcast_to(bias, bias.shape[:2] + (q_len, kv_len))
  masks = Masks(mask=mask, q_lengths=q_lengths, kv_lengths=kv_lengths, q_segment_ids=q_seg,
                kv_segment_ids=kv_seg)
  out, lse = blockwise_attention(q, k, v, bias, masks, spec, impl)
  return (out, jnp.swapaxes(lse, 1, 2)) if return_residual else out


def _alias(name: str, value, default, alias: str, alias_value):
  """`value`, or `alias_value` where only the `jax.nn` name was given."""
  if alias_value is None:
    return value
  given = value is not default if default is None else value != default
  if given and (hasattr(value, "shape") or value != alias_value):
    raise ValueError(f"{name} and {alias} name the same option; give one of them, got "
                     f"{name}={value!r} and {alias}={alias_value!r}")
  return alias_value


def _resolve(impl: str, platform: str, logits: int) -> str:
  """"auto" and "pallas" -> a key of `IMPLEMENTATIONS`."""
  if impl == "auto":
    steps = AUTO_TABLE.get(platform, AUTO_TABLE["cpu"]).steps
    return next(choice for limit, choice in steps if limit is None or logits < limit)
  if impl == "pallas":
    return "pallas_tpu" if platform == "tpu" else "pallas_gpu"
  return impl


def _options_used(q, bias, mask, causal, alignment, q_len, kv_len, window, soft_cap,
                  lengths, q_seg, return_residual) -> set:
  """The `OPTIONS` a call asks for."""
  flags = {"bias": bias is not None, "mask": mask is not None, "causal": causal,
           "bottom_right": (alignment == "bottom_right" and q_len != kv_len
                            and (causal or window is not None)),
           "local_window_size": window is not None, "logits_soft_cap": soft_cap is not None,
           "lengths": any(x is not None for x in lengths), "segment_ids": q_seg is not None,
           "return_residual": return_residual,
           "float32": jnp.dtype(q.dtype) == jnp.float32,
           "float64": jnp.dtype(q.dtype) == jnp.float64}
  return {name for name, used in flags.items() if used}


def _check_arrays(q, k, v):
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or len(x.shape) != 4:
      raise ValueError(f"{name} must be [batch, seq, heads, head_dim]; got "
                       f"{name}.shape={getattr(x, 'shape', type(x).__name__)}")
    if jnp.dtype(x.dtype) not in _DTYPES:
      raise ValueError(f"{name}.dtype must be float32, bfloat16, float16 (or float64 on the "
                       f"XLA paths); got {x.dtype}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v must share a dtype; got {q.dtype=}, {k.dtype=}, {v.dtype=}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape; got {k.shape=} and {v.shape=}")
  if k.shape[0] != q.shape[0]:
    raise ValueError(f"q and k must agree on batch; got {q.shape=} and {k.shape=}")
  if k.shape[3] != q.shape[3]:
    raise ValueError(f"q and k must agree on head_dim; got {q.shape=} and {k.shape=}")
  if k.shape[2] == 0 or q.shape[2] % k.shape[2]:
    raise ValueError(f"q_heads must be a multiple of kv_heads; got {q.shape=} and {k.shape=}")
  if min(q.shape) == 0 or min(k.shape) == 0:
    raise ValueError(f"q and k must be non-empty; got {q.shape=} and {k.shape=}")


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_window(window):
  """An int or an `(left, right)` pair of ints >= 0 -> the pair (or None)."""
  if window is None:
    return None
  pair = (window, window) if _is_int(window) else window
  if (not isinstance(pair, (tuple, list)) or len(pair) != 2
      or not all(_is_int(x) and x >= 0 for x in pair)):
    raise ValueError("local_window_size must be None, an int >= 0 or a pair (left, right) of "
                     f"ints >= 0; got {window!r}")
  return tuple(int(x) for x in pair)


def _check_scalars(causal, alignment, soft_cap, scale, impl, block_sizes, return_residual,
                   interpret):
  if not isinstance(causal, bool):
    raise ValueError(f"causal must be a bool; got {causal!r}")
  if alignment not in ALIGNMENTS:
    raise ValueError(f"causal_alignment must be one of {ALIGNMENTS}; got {alignment!r}")
  for name, value in (("scale", scale), ("logits_soft_cap", soft_cap)):
    if value is not None and not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
      raise ValueError(f"{name} must be None or a finite number > 0; got {value!r}")
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be None or a kernels.attention.BlockSizes; "
                     f"got {type(block_sizes).__name__}")
  for name, value in (("return_residual", return_residual), ("interpret", interpret)):
    if not isinstance(value, bool) and not (name == "interpret" and value is None):
      raise ValueError(f"{name} must be a bool; got {value!r}")


def _check_lengths(name: str, lengths, batch: int):
  if lengths is None:
    return None
  if getattr(lengths, "shape", None) != (batch,) or not jnp.issubdtype(lengths.dtype,
                                                                     jnp.integer):
    raise ValueError(f"{name} must be an integer array of shape ({batch},); got "
                     f"{getattr(lengths, 'shape', None)} {getattr(lengths, 'dtype', '')}")
  return jnp.asarray(lengths, jnp.int32)


def _check_broadcast(name: str, x, target: tuple, bool_: bool):
  """`x` as an array broadcastable to `target` (2-4 dims, from the right), or None."""
  if x is None:
    return None
  dtype = getattr(x, "dtype", None)
  if bool_ and dtype != jnp.bool_:
    raise ValueError(f"{name} must be a bool array; got {dtype or type(x).__name__}")
  if not bool_ and (dtype is None or not jnp.issubdtype(dtype, jnp.floating)):
    raise ValueError(f"{name} must be a float array; got {dtype or type(x).__name__}")
  shape = x.shape
  if not 2 <= len(shape) <= 4 or any(s not in (1, t) for s, t in zip(shape[::-1],
                                                                     target[::-1])):
    raise ValueError(f"{name} must be broadcastable to [batch, q_heads, q_len, kv_len] = "
                     f"{list(target)}; got {name}.shape={shape}")
  return jnp.asarray(x)


def _check_segments(segment_ids, batch: int, q_len: int, kv_len: int):
  """The (q, kv) segment ids as int32, or (None, None)."""
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
