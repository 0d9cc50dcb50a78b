"""Multi-layer perceptron with a named activation and optional dropout.

>>> import jax, jax.numpy as jnp
>>> from dlopt.models import MLP
>>> model = MLP(widths=(32,), num_outputs=10, activation="gelu",
...             dropout_rate=0.1)
>>> x = jnp.ones((4, 8, 8))
>>> variables = model.init(jax.random.key(0), x)
>>> logits = model.apply(variables, x, train=True,
...                      rngs={"dropout": jax.random.key(1)})
>>> logits.shape
(4, 10)
"""

from collections.abc import Callable, Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlopt.models import _utils

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": nn.tanh,
    "sigmoid": nn.sigmoid,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}


class MLP(nn.Module):
  """Dense -> activation -> dropout, once per hidden width, then a dense head.

  Attributes:
    widths: hidden layer widths, each >= 1; empty gives a linear classifier.
      Stored as a tuple, so the module stays hashable (a static jit argument).
    num_outputs: size of the output (logits), >= 1.
    activation: one of the names in `ACTIVATIONS`.
    dropout_rate: dropout after every hidden activation, 0 <= rate < 1;
      active only when `train=True`, drawing from the 'dropout' RNG stream.
    dtype: the computation dtype of every layer (jnp.bfloat16 for mixed
      precision); None promotes the inputs' and parameters' dtypes, as Flax
      layers do. bfloat16 needs no loss scaling: it has float32's exponent
      range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
  """

  widths: Sequence[int] = (64, 64)
  num_outputs: int = 10
  activation: str = "relu"
  dropout_rate: float = 0.0
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    self.widths = tuple(self.widths)
    _utils.check_positive_all("widths", self.widths)
    _utils.check_positive("num_outputs", self.num_outputs)
    if self.activation not in ACTIVATIONS:
      raise ValueError(
          f"activation must be one of {tuple(ACTIVATIONS)}; "
          f"got activation={self.activation!r}")
    _utils.check_dropout_rate(self.dropout_rate)
    _utils.set_dtypes(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Runs the network.

    Args:
      x: float inputs [batch, ...]; everything after the batch axis is
        flattened.
      train: enables dropout (needs `rngs={"dropout": key}` when
        `dropout_rate > 0`).

    Returns:
      Logits [batch, num_outputs], float32 whatever `dtype` computed them (cast
      at the end, as MaxText's `cast_logits_to_fp32` does), so the loss runs
      in float32.

    Raises:
      ValueError: if `x` has fewer than 2 dimensions.
    """
    if x.ndim < 2:
      raise ValueError(
          f"MLP expects inputs [batch, ...] with ndim >= 2; got {x.shape=}")
    act = ACTIVATIONS[self.activation]
    x = x.reshape(x.shape[0], -1)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    for width in self.widths:
      x = act(dense(width)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return _utils.float32_logits(dense(self.num_outputs)(x))
