"""Recurrent (LSTM / GRU) stacks and a sequence classifier, built on Flax's RNN.

Padding-aware: with `lengths`, the steps at or past `lengths[b]` of example `b`
change nothing, and the stack's outputs there are zero.

>>> import jax, jax.numpy as jnp
>>> from dlopt.models import RecurrentClassifier
>>> model = RecurrentClassifier(num_classes=3, hidden_size=8, num_layers=2,
...                             cell="gru", bidirectional=True)
>>> x = jnp.ones((2, 6, 5))                              # [B, T, F] features
>>> lengths = jnp.array([6, 2])                          # valid steps per example
>>> variables = jax.jit(model.init)(jax.random.key(0), x, lengths)
>>> logits = jax.jit(model.apply)(variables, x, lengths)
>>> logits.shape, logits.dtype
((2, 3), dtype('float32'))
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlopt.models import _utils

__all__ = ["CELLS", "RECURRENT_POOLINGS", "RecurrentClassifier", "RecurrentStack"]

# Cell name -> Flax cell class; each is built as `cls(features=hidden_size)`.
CELLS: dict[str, type[nn.RNNCellBase]] = {
    "lstm": nn.OptimizedLSTMCell,
    "gru": nn.GRUCell,
}
RECURRENT_POOLINGS = ("last", "mean")


def _check_cell(cell: str) -> None:
  if cell not in CELLS:
    raise ValueError(f"cell must be one of {tuple(CELLS)}; got cell={cell!r}")


_check_bool = _utils.check_bool


def _check_inputs(model: str, x: jax.Array,
                  lengths: jax.Array | None) -> jax.Array | None:
  """Checks `x` float [B, T, F] and `lengths` int [B]; clips `lengths` to [0, T]."""
  _utils.check_ndim(model, x, 3, "features float [batch, seq, features]")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{model} expects floating-point features; got {x.dtype=}")
  if lengths is None:
    return None
  lengths = jnp.asarray(lengths)
  if lengths.shape != x.shape[:1] or not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f"lengths must be int [{x.shape[0]}] (one per example of "
                     f"{x.shape=}); got {lengths.shape=} {lengths.dtype}")
  return jnp.clip(lengths, 0, x.shape[1])


def _valid_mask(lengths: jax.Array, length: int) -> jax.Array:
  """bool [B, T]: step t of example b is valid iff t < lengths[b]."""
  return jnp.arange(length)[None, :] < lengths[:, None]


class RecurrentStack(nn.Module):
  """`num_layers` recurrent layers (Flax `nn.RNN`, or `nn.Bidirectional`).

  Each layer runs a Flax cell (`CELLS[cell]`, hidden size `hidden_size`) over
  time from a zero state; bidirectional layers run a second cell over each
  sequence's valid part reversed and concatenate its outputs (re-aligned to the
  input order) after the forward ones. With `lengths`, Flax's `seq_lengths`
  keeps the padding out of every valid output (the forward direction is causal;
  the backward one starts at the last valid step), and outputs at padded steps
  are set to zero. Dropout, when training, acts on the outputs of every layer
  but the last.

  Attributes:
    hidden_size: hidden units per direction, >= 1.
    num_layers: stacked recurrent layers, >= 1.
    cell: "lstm" (`nn.OptimizedLSTMCell`) or "gru" (`nn.GRUCell`).
    bidirectional: add a backward direction to every layer.
    dropout_rate: dropout between layers, 0 <= rate < 1; active only with
      `train=True`, drawing from the 'dropout' RNG stream.
    dtype: the computation dtype of the cells' and head's matmuls
      (jnp.bfloat16 for mixed precision); None promotes the inputs' and
      parameters' dtypes, as Flax layers do. Flax's cells start their state
      in `param_dtype`, so with float32 parameters the recurrent state stays
      float32. bfloat16 needs no loss scaling: it has float32's exponent range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
  """

  hidden_size: int
  num_layers: int = 1
  cell: str = "lstm"
  bidirectional: bool = False
  dropout_rate: float = 0.0
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    _utils.check_positive("hidden_size", self.hidden_size)
    _utils.check_positive("num_layers", self.num_layers)
    _check_cell(self.cell)
    _check_bool("bidirectional", self.bidirectional)
    _utils.check_dropout_rate(self.dropout_rate)
    _utils.set_dtypes(self)
    super().__post_init__()

  @property
  def output_size(self) -> int:
    """Features per step of the output: `hidden_size`, doubled if bidirectional."""
    return self.hidden_size * (2 if self.bidirectional else 1)

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Runs the stack.

    Args:
      x: float [B, T, F].
      lengths: int [B], valid steps per example (clipped to [0, T]); steps at or
        past `lengths[b]` are padding and change nothing. None: every step is
        valid.
      train: enables dropout between layers (needs `rngs={"dropout": key}`
        when `dropout_rate > 0` and `num_layers > 1`).

    Returns:
      Outputs [B, T, H], the cells' hidden states: float32 for float32
      inputs or parameters (Flax's cells keep their state in `param_dtype`); H
      `hidden_size` (`2 * hidden_size` if bidirectional, forward features
      first); zero at padded steps. The output of the backward direction at
      step 0 is its state after reading the whole valid sequence.

    Raises:
      ValueError: if `x` is not float [B, T, F] or `lengths` is not int [B].
    """
    lengths = _check_inputs("RecurrentStack", x, lengths)
    cell_cls = functools.partial(CELLS[self.cell], dtype=self.dtype,
                                 param_dtype=self.param_dtype)
    valid = None if lengths is None else _valid_mask(lengths, x.shape[1])[..., None]
    h = x
    for i in range(self.num_layers):
      if i > 0:
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      # parent=None: the cell (and RNN) belong to the module they are passed to,
      # so parameters live under layer_{i}/cell (or layer_{i}/{forward,backward}_rnn/cell).
      if self.bidirectional:
        layer = nn.Bidirectional(
            nn.RNN(cell_cls(self.hidden_size, parent=None), parent=None),
            nn.RNN(cell_cls(self.hidden_size, parent=None), parent=None),
            name=f"layer_{i}")
      else:
        layer = nn.RNN(cell_cls(self.hidden_size, parent=None), name=f"layer_{i}")
      h = layer(h, seq_lengths=lengths)                         # [B, T, H]
      if valid is not None:
        h = jnp.where(valid, h, jnp.zeros((), h.dtype))         # padded steps -> 0
    return h


class RecurrentClassifier(nn.Module):
  """A `RecurrentStack`, pooled over time, then a Dense to logits.

  Pooling "last" takes each sequence's last valid step: the forward output at
  step `lengths[b] - 1` and, if bidirectional, the backward output at step 0
  (the backward state after reading the whole valid sequence). "mean" averages
  the outputs over the valid steps. A sequence with no valid steps pools to
  zeros. Dropout acts between recurrent layers and on the pooled features.

  Attributes:
    num_classes: logits per example, >= 1.
    hidden_size: hidden units per direction, >= 1.
    num_layers: stacked recurrent layers, >= 1.
    cell: "lstm" or "gru" (see `CELLS`).
    bidirectional: add a backward direction to every layer.
    dropout_rate: dropout between layers and before the head, 0 <= rate < 1;
      active only with `train=True` ('dropout' RNG stream).
    pooling: "last" or "mean".
    dtype: the computation dtype of the cells' and head's matmuls
      (jnp.bfloat16 for mixed precision); None promotes the inputs' and
      parameters' dtypes, as Flax layers do. Flax's cells start their state
      in `param_dtype`, so with float32 parameters the recurrent state stays
      float32. bfloat16 needs no loss scaling: it has float32's exponent range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
  """

  num_classes: int
  hidden_size: int = 64
  num_layers: int = 1
  cell: str = "lstm"
  bidirectional: bool = False
  dropout_rate: float = 0.0
  pooling: str = "last"
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    _utils.check_positive("num_classes", self.num_classes)
    _utils.check_positive("hidden_size", self.hidden_size)
    _utils.check_positive("num_layers", self.num_layers)
    _check_cell(self.cell)
    _check_bool("bidirectional", self.bidirectional)
    _utils.check_dropout_rate(self.dropout_rate)
    if self.pooling not in RECURRENT_POOLINGS:
      raise ValueError(f"pooling must be one of {RECURRENT_POOLINGS}; "
                       f"got pooling={self.pooling!r}")
    _utils.set_dtypes(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Classifies each sequence.

    Args:
      x: float [B, T, F].
      lengths: int [B], valid steps per example (clipped to [0, T]); steps at or
        past `lengths[b]` are padding and change nothing. None: every step is
        valid.
      train: enables dropout (needs `rngs={"dropout": key}` when
        `dropout_rate > 0`).

    Returns:
      Logits [B, num_classes], float32 whatever `dtype` computed them (cast
      at the end, as MaxText's `cast_logits_to_fp32` does), so the loss runs
      in float32.

    Raises:
      ValueError: if `x` is not float [B, T, F] or `lengths` is not int [B].
    """
    lengths = _check_inputs("RecurrentClassifier", x, lengths)
    batch, length = x.shape[:2]
    h = RecurrentStack(hidden_size=self.hidden_size, num_layers=self.num_layers,
                       cell=self.cell, bidirectional=self.bidirectional,
                       dropout_rate=self.dropout_rate, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="stack")(
                           x, lengths, train=train)             # [B, T, D], zero if padded
    if lengths is None:
      lengths = jnp.full((batch,), length, jnp.int32)
    if self.pooling == "mean":
      counts = jnp.maximum(lengths, 1)[:, None].astype(h.dtype)
      pooled = h.sum(axis=1) / counts                           # [B, D]
    else:
      last = jnp.maximum(lengths - 1, 0)                        # step 0 if empty (zeros)
      forward = jnp.take_along_axis(h[..., :self.hidden_size], last[:, None, None],
                                    axis=1)[:, 0]               # [B, H]
      if self.bidirectional:
        pooled = jnp.concatenate([forward, h[:, 0, self.hidden_size:]], axis=-1)  # [B, 2H]
      else:
        pooled = forward
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="head")
    return _utils.float32_logits(head(pooled))
