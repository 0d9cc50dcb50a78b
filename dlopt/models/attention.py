"""Multi-head self-attention (with grouped-query heads) over `kernels.attention`.

The projections are Flax `DenseGeneral` layers; the attention itself is
`kernels.attention`, so the same module runs the XLA reference on the CPU and
the fused kernel where one exists (`attention_impl`).

>>> import jax, jax.numpy as jnp
>>> from dlopt.models import MultiHeadSelfAttention
>>> layer = MultiHeadSelfAttention(num_heads=4, num_kv_heads=2, causal=True)
>>> x = jnp.ones((2, 10, 32))                             # [B, T, F]
>>> variables = layer.init(jax.random.key(0), x)
>>> variables["params"]["key"]["kernel"].shape            # [F, Hkv, Dh]
(32, 2, 8)
>>> y = layer.apply(variables, x, lengths=jnp.array([10, 7]))
>>> y.shape, y.dtype
((2, 10, 32), dtype('float32'))
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import kernels
from kernels.attention import IMPLS

from dlopt.models import _utils
from dlopt.models.rotary import check_rope_base
from dlopt.models.rotary import rotary_embedding

__all__ = ["MultiHeadSelfAttention"]


def check_attention_impl(attention_impl: str) -> None:
  """Raises `ValueError` unless `attention_impl` names a `kernels.attention` impl."""
  if attention_impl not in IMPLS:
    raise ValueError(f"attention_impl must be one of {IMPLS}; "
                     f"got attention_impl={attention_impl!r}")


def check_num_kv_heads(num_heads: int, num_kv_heads: int | None) -> None:
  """Raises `ValueError` unless `num_kv_heads` is None or divides `num_heads`."""
  if num_kv_heads is None:
    return
  _utils.check_positive("num_kv_heads", num_kv_heads)
  if num_heads % num_kv_heads:
    raise ValueError(f"num_kv_heads must divide num_heads; got {num_kv_heads=} and "
                     f"{num_heads=}")


class MultiHeadSelfAttention(nn.Module):
  """Self-attention: project to heads, `kernels.attention`, project back.

  Query heads `h` read key/value head `h // (num_heads // num_kv_heads)`, so
  `num_kv_heads < num_heads` is grouped-query attention and
  `num_kv_heads == 1` multi-query attention.

  Parameters (`F` input features, `H` heads, `Hkv` kv heads, `Dh` head_dim):
  `query/kernel [F, H, Dh]`, `key/kernel` and `value/kernel [F, Hkv, Dh]`,
  `out/kernel [H, Dh, F]`, and biases of the output shapes when `use_bias`.

  Attributes:
    num_heads: query heads H, >= 1.
    num_kv_heads: key/value heads, dividing `num_heads`; None for `num_heads`.
    head_dim: features per head; None for `F // num_heads` (then `num_heads`
      must divide F).
    causal: position `i` attends only positions `j <= i`.
    dropout_rate: dropout on the output projection, 0 <= rate < 1; active
      only when `train=True`, drawing from the 'dropout' RNG stream.
    attention_impl: the `impl` of `kernels.attention` ("auto", "xla", ...).
    use_bias: add biases to the four projections.
    rope_base: None for no position information here; a number > 1 rotates
      queries and keys by their positions (`rotary_embedding`), so scores
      depend on relative offsets.
    local_window_size: `(left, right)` (or an int for both): position `i`
      attends only positions `i - left ... i + right` (sliding-window
      attention, as Mistral's; with `causal`, `(w, 0)`); None for all.
    logits_soft_cap: `c` to cap the attention logits at `c * tanh(s / c)`
      (Gemma 2); None for none.
    dtype: the computation dtype of the projections and the attention
      (jnp.bfloat16 for mixed precision); None promotes the inputs' and
      parameters' dtypes, as Flax layers do. bfloat16 needs no loss scaling:
      it has float32's exponent range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
  """

  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  causal: bool = False
  dropout_rate: float = 0.0
  attention_impl: str = "auto"
  use_bias: bool = False
  rope_base: float | None = None
  local_window_size: int | tuple[int, int] | None = None
  logits_soft_cap: float | None = None
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    _utils.check_positive("num_heads", self.num_heads)
    check_num_kv_heads(self.num_heads, self.num_kv_heads)
    if self.head_dim is not None:
      _utils.check_positive("head_dim", self.head_dim)
    if not isinstance(self.causal, bool):
      raise ValueError(f"causal must be a bool; got causal={self.causal!r}")
    _utils.check_dropout_rate(self.dropout_rate)
    check_attention_impl(self.attention_impl)
    check_rope_base(self.rope_base)
    _utils.set_dtypes(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None,
               lengths: jax.Array | None = None, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """Attends every position of `x` to the positions it may see.

    Args:
      x: float inputs [B, T, F].
      train: enables dropout (needs `rngs={"dropout": key}` when
        `dropout_rate > 0`).
      mask: bool [B, 1 or H, T, T] or [B, T, T]; True where query `i` may
        attend key `j`. Combined with `causal`, `lengths` and `segment_ids`.
      lengths: int [B]; positions at or past `lengths[b]` are padding: no
        query attends them, and their own attention output is 0.
      segment_ids: int [B, T]; attention stays within a segment (packed
        sequences).
      positions: int [B or 1, T], the positions `rope_base` rotates by; None
        for `arange(T)`. Ignored without `rope_base`.

    Returns:
      [B, T, F] in the computation dtype: `dtype`, or with None the dtype of
      `x` promoted with `param_dtype` (float32 for float32 inputs).

    Raises:
      ValueError: if `x` is not 3-D, `num_heads` does not divide F (with
        `head_dim=None`), or `mask` is not 3-D or 4-D.
    """
    _utils.check_ndim("MultiHeadSelfAttention", x, 3, "inputs [batch, seq, features]")
    features = x.shape[-1]
    head_dim = self.head_dim
    if head_dim is None:
      if features % self.num_heads:
        raise ValueError(f"num_heads must divide the input features when head_dim is None; "
                         f"got num_heads={self.num_heads} and features={features}")
      head_dim = features // self.num_heads
    num_kv_heads = self.num_kv_heads or self.num_heads
    if mask is not None:
      if mask.ndim == 3:
        mask = mask[:, None]                                   # [B, 1, T, T]
      elif mask.ndim != 4:
        raise ValueError(f"mask must be [B, 1 or H, T, T] or [B, T, T]; got {mask.shape=}")

    def project(name, heads):
      return nn.DenseGeneral((heads, head_dim), use_bias=self.use_bias, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)(x)

    q = project("query", self.num_heads)                        # [B, T, H, Dh]
    k = project("key", num_kv_heads)                            # [B, T, Hkv, Dh]
    v = project("value", num_kv_heads)                          # [B, T, Hkv, Dh]
    if self.rope_base is not None:
      if positions is None:
        positions = jnp.arange(x.shape[1])[None]                # [1, T]
      q = rotary_embedding(q, positions, base=self.rope_base)
      k = rotary_embedding(k, positions, base=self.rope_base)
    y = kernels.attention(q, k, v, causal=self.causal, mask=mask, q_lengths=lengths,
                          kv_lengths=lengths, segment_ids=segment_ids,
                          local_window_size=self.local_window_size,
                          logits_soft_cap=self.logits_soft_cap,
                          impl=self.attention_impl)             # [B, T, H, Dh]
    y = nn.DenseGeneral(features, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="out")(y)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)  # [B, T, F]
