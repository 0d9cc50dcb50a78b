"""Pre-norm transformer blocks, a sequence classifier and a decoder-only LM.

>>> import jax, jax.numpy as jnp
>>> from dlopt.models import DecoderLM, TransformerEncoderClassifier
>>> clf = TransformerEncoderClassifier(num_classes=3, num_layers=1, width=32)
>>> x = jnp.ones((2, 8, 5))                              # [B, T, F] features
>>> variables = jax.jit(clf.init)(jax.random.key(0), x)
>>> jax.jit(clf.apply)(variables, x, lengths=jnp.array([8, 3])).shape
(2, 3)
>>> lm = DecoderLM(vocab_size=50, num_layers=1, width=32, num_kv_heads=1, max_len=16)
>>> tokens = jnp.zeros((2, 12), jnp.int32)               # [B, T] token ids
>>> variables = jax.jit(lm.init)(jax.random.key(0), tokens)
>>> segment_ids = jnp.array([[1] * 5 + [2] * 7] * 2)     # two packed sequences
>>> logits = jax.jit(lm.apply)(variables, tokens, segment_ids=segment_ids)
>>> logits.shape, logits.dtype
((2, 12, 50), dtype('float32'))
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlopt.models import _utils
from dlopt.models.attention import MultiHeadSelfAttention
from dlopt.models.attention import check_attention_impl
from dlopt.models.attention import check_num_kv_heads
from dlopt.models.rotary import check_rope_base

__all__ = ["DecoderLM", "POOLINGS", "TransformerBlock", "TransformerEncoderClassifier"]

POOLINGS = ("mean", "cls")
# Embedding tables (tokens, positions, the [CLS] vector) start at this scale (GPT-2).
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def _check_mlp_ratio(mlp_ratio: float) -> None:
  if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not (
      mlp_ratio > 0):
    raise ValueError(f"mlp_ratio must be a number > 0; got mlp_ratio={mlp_ratio!r}")


def _check_stack(model) -> None:
  """Validates the fields shared by the two transformer stacks (and sets the dtypes)."""
  _utils.check_positive("num_layers", model.num_layers)
  _utils.check_positive("width", model.width)
  _utils.check_positive("num_heads", model.num_heads)
  if model.width % model.num_heads:
    raise ValueError(f"num_heads must divide width; got num_heads={model.num_heads} and "
                     f"width={model.width}")
  check_num_kv_heads(model.num_heads, model.num_kv_heads)
  _utils.check_positive("max_len", model.max_len)
  _check_mlp_ratio(model.mlp_ratio)
  _utils.check_dropout_rate(model.dropout_rate)
  check_attention_impl(model.attention_impl)
  _utils.set_dtypes(model)
  _utils.check_bool("remat", model.remat)


def _block_class(remat: bool) -> type[nn.Module]:
  """`TransformerBlock`, or it under `nn.remat` (`train`, argument 2 counting `self`,
  static)."""
  return nn.remat(TransformerBlock, static_argnums=(2,)) if remat else TransformerBlock


def _check_length(model: str, length: int, max_len: int) -> None:
  if length > max_len:
    raise ValueError(f"{model} input length {length} exceeds max_len={max_len}")


class TransformerBlock(nn.Module):
  """Pre-norm block: `x + Attn(LN(x))`, then `x + MLP(LN(x))`.

  The MLP is Dense(`round(mlp_ratio * F)`) -> gelu -> Dense(F), `F` the input
  width; `num_heads` must divide F.

  Attributes:
    num_heads: attention heads, >= 1.
    num_kv_heads: key/value heads dividing `num_heads`; None for `num_heads`.
    mlp_ratio: MLP hidden width over the model width, > 0.
    dropout_rate: dropout on the attention output projection and on the MLP
      output, 0 <= rate < 1; active only with `train=True` ('dropout' stream).
    causal: causal self-attention.
    attention_impl: the `impl` of `kernels.attention`.
    rope_base: rotary position embeddings in the attention with this base;
      None for none.
    local_window_size, logits_soft_cap: sliding-window attention and the
      logits' soft cap, as in `MultiHeadSelfAttention`.
    dtype: the computation dtype of every layer (jnp.bfloat16 for mixed
      precision); None promotes the inputs' and parameters' dtypes, as Flax
      layers do. LayerNorm computes its statistics in float32 either way.
      bfloat16 needs no loss scaling: it has float32's exponent range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
  """

  num_heads: int
  num_kv_heads: int | None = None
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  causal: bool = False
  attention_impl: str = "auto"
  rope_base: float | None = None
  local_window_size: int | tuple[int, int] | None = None
  logits_soft_cap: float | None = None
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    _utils.check_positive("num_heads", self.num_heads)
    check_num_kv_heads(self.num_heads, self.num_kv_heads)
    _check_mlp_ratio(self.mlp_ratio)
    _utils.check_dropout_rate(self.dropout_rate)
    check_attention_impl(self.attention_impl)
    check_rope_base(self.rope_base)
    _utils.set_dtypes(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, *, mask: jax.Array | None = None,
               lengths: jax.Array | None = None, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """Runs the block.

    Args:
      x: float [B, T, F].
      train: enables dropout. It may be passed by position, as
        `nn.remat(TransformerBlock, static_argnums=(2,))` needs it.
      mask, lengths, segment_ids, positions: as in
        `MultiHeadSelfAttention.__call__`.

    Returns:
      [B, T, F] in the computation dtype (`dtype`, or with None the dtype of
      `x` promoted with `param_dtype`).
    """
    _utils.check_ndim("TransformerBlock", x, 3, "inputs [batch, seq, features]")
    width = x.shape[-1]
    hidden = max(1, round(self.mlp_ratio * width))
    dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    x = _utils.cast_dtype(x, self.dtype)                        # the residual stream
    y = nn.LayerNorm(name="ln_attn", **dtypes)(x)
    y = MultiHeadSelfAttention(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                               causal=self.causal, dropout_rate=self.dropout_rate,
                               attention_impl=self.attention_impl,
                               rope_base=self.rope_base,
                               local_window_size=self.local_window_size,
                               logits_soft_cap=self.logits_soft_cap, name="attention",
                               **dtypes)(
                                   y, train=train, mask=mask, lengths=lengths,
                                   segment_ids=segment_ids, positions=positions)
    x = x + y
    y = nn.LayerNorm(name="ln_mlp", **dtypes)(x)
    y = nn.gelu(nn.Dense(hidden, name="mlp_in", **dtypes)(y))   # [B, T, hidden]
    y = nn.Dense(width, name="mlp_out", **dtypes)(y)            # [B, T, F]
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return x + y


class TransformerEncoderClassifier(nn.Module):
  """Bidirectional transformer encoder with a pooled classification head.

  Inputs are token ids int [B, T] (embedded; needs `vocab_size`) or features
  float [B, T, F] (projected by a Dense to `width`). Learned position
  embeddings are added, `num_layers` `TransformerBlock`s run, a final
  LayerNorm, then "mean" pooling over the valid positions (honouring
  `lengths`) or the output at a learned [CLS] vector prepended at position 0
  ("cls"), and a Dense to `num_classes` logits.

  Attributes:
    num_classes: logits per example, >= 1.
    num_layers: transformer blocks, >= 1.
    width: model width, divisible by `num_heads`.
    num_heads: attention heads.
    num_kv_heads: key/value heads dividing `num_heads`; None for `num_heads`.
    max_len: rows of the position table; T (T + 1 with "cls") must not exceed it.
    mlp_ratio: MLP hidden width over `width`.
    dropout_rate: dropout after the embeddings and in every block.
    pooling: "mean" or "cls".
    attention_impl: the `impl` of `kernels.attention`.
    vocab_size: the token vocabulary for integer inputs; None for feature inputs only.
    dtype: the computation dtype of every layer (jnp.bfloat16 for mixed
      precision); None promotes the inputs' and parameters' dtypes, as Flax
      layers do. LayerNorm computes its statistics in float32 either way.
      bfloat16 needs no loss scaling: it has float32's exponent range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
    remat: rematerialize each `TransformerBlock` (`nn.remat`): its
      activations are recomputed in the backward pass instead of kept from the
      forward one, trading compute for memory. Same parameters, outputs and
      gradients.
  """

  num_classes: int
  num_layers: int = 2
  width: int = 64
  num_heads: int = 4
  num_kv_heads: int | None = None
  max_len: int = 512
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  pooling: str = "mean"
  attention_impl: str = "auto"
  vocab_size: int | None = None
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def __post_init__(self):
    _utils.check_positive("num_classes", self.num_classes)
    _check_stack(self)
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}; got pooling={self.pooling!r}")
    if self.vocab_size is not None:
      _utils.check_positive("vocab_size", self.vocab_size)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False,
               lengths: jax.Array | None = None) -> jax.Array:
    """Classifies each sequence.

    Args:
      x: token ids int [B, T], or features float [B, T, F].
      train: enables dropout (needs `rngs={"dropout": key}` when
        `dropout_rate > 0`).
      lengths: int [B]; positions at or past `lengths[b]` are padding and
        change nothing. None: every position is valid.

    Returns:
      Logits float32 [B, num_classes], whatever `dtype` computed them (cast
      at the end, as MaxText's `cast_logits_to_fp32` does), so the loss runs
      in float32.

    Raises:
      ValueError: for inputs of another rank or dtype, token ids without
        `vocab_size`, or a sequence longer than `max_len`.
    """
    name = "TransformerEncoderClassifier"
    dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    if jnp.issubdtype(x.dtype, jnp.integer):
      _utils.check_ndim(name, x, 2, "token ids int [batch, seq]")
      if self.vocab_size is None:
        raise ValueError(f"{name} got token ids {x.shape=} {x.dtype}, which need vocab_size; "
                         "got vocab_size=None")
      h = nn.Embed(self.vocab_size, self.width, embedding_init=_EMBED_INIT, name="embed",
                   **dtypes)(x)
    else:
      _utils.check_ndim(name, x, 3, "features float [batch, seq, features] or token ids "
                        "int [batch, seq]")
      h = nn.Dense(self.width, name="input_proj", **dtypes)(x)  # [B, T, W]
    batch, length = x.shape[:2]
    if self.pooling == "cls":
      cls = self.param("cls", _EMBED_INIT, (self.width,), self.param_dtype)
      h = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)).astype(h.dtype), h],
                          axis=1)                               # [B, 1 + T, W]
      if lengths is not None:
        lengths = jnp.asarray(lengths) + 1
    _check_length(name, h.shape[1], self.max_len)
    pos = self.param("pos_embed", _EMBED_INIT, (self.max_len, self.width), self.param_dtype)
    h = _utils.cast_dtype(h + pos[:h.shape[1]], self.dtype)
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    block_cls = _block_class(self.remat)
    for i in range(self.num_layers):
      h = block_cls(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                    mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
                    attention_impl=self.attention_impl, name=f"block_{i}", **dtypes)(
                        h, train, lengths=lengths)
    h = nn.LayerNorm(name="ln_final", **dtypes)(h)
    if self.pooling == "cls":
      pooled = h[:, 0]                                          # [B, W]
    elif lengths is None:
      pooled = h.mean(axis=1)
    else:
      valid = jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]  # [B, T]
      counts = jnp.maximum(valid.sum(axis=1, keepdims=True), 1)
      pooled = jnp.where(valid[..., None], h, 0).sum(axis=1) / counts
    return _utils.float32_logits(nn.Dense(self.num_classes, name="head", **dtypes)(pooled))


def _segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Position of each token within its (contiguous) segment: int32 [B, T]."""
  index = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)   # start of own segment
  return index - first


class DecoderLM(nn.Module):
  """Decoder-only (causal) transformer language model.

  Token embeddings plus positions (a learned table, or rotary embeddings in
  every attention with `rope_base`), `num_layers` causal `TransformerBlock`s,
  a final LayerNorm, and logits through the transposed token embedding
  (`tie_embeddings`) or a bias-free Dense `lm_head`.

  Attributes:
    vocab_size: the token vocabulary, >= 1.
    num_layers: transformer blocks, >= 1.
    width: model width, divisible by `num_heads`.
    num_heads: attention heads.
    num_kv_heads: key/value heads dividing `num_heads` (GQA/MQA); None for
      `num_heads`.
    max_len: rows of the position table; the longest input.
    mlp_ratio: MLP hidden width over `width`.
    dropout_rate: dropout after the embeddings and in every block.
    attention_impl: the `impl` of `kernels.attention`.
    tie_embeddings: reuse the token embedding as the output projection.
    rope_base: None for the learned position table; a number > 1 for rotary
      position embeddings with that base instead (no table; `width //
      num_heads` must be even). Rotary positions let attention find
      neighbouring tokens from the first steps, which speeds up early
      training markedly on character-level text.
    local_window_size: each token attends only the `local_window_size`
      tokens before it (sliding-window attention, as Mistral's; the kernels
      skip the key blocks outside the window); None for all before it.
    logits_soft_cap: `c` to cap the attention logits at `c * tanh(s / c)`
      (Gemma 2); None for none.
    dtype: the computation dtype of every layer (jnp.bfloat16 for mixed
      precision); None promotes the inputs' and parameters' dtypes, as Flax
      layers do. LayerNorm computes its statistics in float32 either way.
      bfloat16 needs no loss scaling: it has float32's exponent range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
    remat: rematerialize each `TransformerBlock` (`nn.remat`): its
      activations are recomputed in the backward pass instead of kept from the
      forward one, trading compute for memory. Same parameters, outputs and
      gradients.
  """

  vocab_size: int
  num_layers: int = 2
  width: int = 64
  num_heads: int = 4
  num_kv_heads: int | None = None
  max_len: int = 512
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_impl: str = "auto"
  tie_embeddings: bool = True
  rope_base: float | None = None
  local_window_size: int | None = None
  logits_soft_cap: float | None = None
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def __post_init__(self):
    _utils.check_positive("vocab_size", self.vocab_size)
    _check_stack(self)
    check_rope_base(self.rope_base)
    if self.rope_base is not None and (self.width // self.num_heads) % 2:
      raise ValueError(f"rotary embeddings need an even head dim width // num_heads; got "
                       f"width={self.width} and num_heads={self.num_heads}")
    super().__post_init__()

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False,
               segment_ids: jax.Array | None = None) -> jax.Array:
    """Next-token logits at every position.

    Args:
      tokens: int [B, T], T <= max_len.
      train: enables dropout (needs `rngs={"dropout": key}` when
        `dropout_rate > 0`).
      segment_ids: int [B, T] for packed sequences: contiguous runs of equal
        ids are separate sequences; tokens attend only within their own
        segment, and positions restart at 0 at each segment's first token, so
        each segment gets the logits it would get alone.

    Returns:
      Logits float32 [B, T, vocab_size], whatever `dtype` computed them
      (cast at the end, as MaxText's `cast_logits_to_fp32` does), so the
      loss runs in float32.

    Raises:
      ValueError: if `tokens` is not int [B, T], T exceeds `max_len`, or
        `segment_ids` is not int [B, T].
    """
    name = "DecoderLM"
    _utils.check_ndim(name, tokens, 2, "token ids int [batch, seq]")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"{name} expects integer token ids; got {tokens.dtype=}")
    length = tokens.shape[1]
    _check_length(name, length, self.max_len)
    if segment_ids is not None:
      segment_ids = jnp.asarray(segment_ids)
      if segment_ids.shape != tokens.shape or not jnp.issubdtype(segment_ids.dtype,
                                                                   jnp.integer):
        raise ValueError(f"segment_ids must be int {tokens.shape}; got "
                         f"{segment_ids.shape=} {segment_ids.dtype}")
      positions = _segment_positions(segment_ids)               # [B, T]
    else:
      positions = jnp.arange(length)[None]                      # [1, T]
    dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=_EMBED_INIT, name="embed",
                     **dtypes)
    h = embed(tokens)                                           # [B, T, W]
    if self.rope_base is None:
      pos = self.param("pos_embed", _EMBED_INIT, (self.max_len, self.width), self.param_dtype)
      h = _utils.cast_dtype(h + pos[positions], self.dtype)
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    block_cls = _block_class(self.remat)
    for i in range(self.num_layers):
      h = block_cls(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                    mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
                    causal=True, attention_impl=self.attention_impl,
                    rope_base=self.rope_base,
                    local_window_size=(None if self.local_window_size is None
                                       else (self.local_window_size, 0)),
                    logits_soft_cap=self.logits_soft_cap, name=f"block_{i}", **dtypes)(
                        h, train, segment_ids=segment_ids, positions=positions)
    h = nn.LayerNorm(name="ln_final", **dtypes)(h)
    if self.tie_embeddings:
      return _utils.float32_logits(embed.attend(h))             # [B, T, V]
    head = nn.Dense(self.vocab_size, use_bias=False, name="lm_head", **dtypes)
    return _utils.float32_logits(head(h))
