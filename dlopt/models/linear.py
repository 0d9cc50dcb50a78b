"""Linear regression: a single dense layer.

>>> import jax, jax.numpy as jnp
>>> from dlopt.models import LinearRegression
>>> model = LinearRegression(features=1)
>>> x = jnp.ones((4, 10))
>>> variables = model.init(jax.random.key(0), x)
>>> model.apply(variables, x).shape
(4, 1)
"""

import flax.linen as nn
import jax

from dlopt.models import _utils

__all__ = ["LinearRegression"]


class LinearRegression(nn.Module):
  """`y = x @ kernel + bias`, one `nn.Dense` layer.

  Attributes:
    features: number of outputs per example, >= 1.
  """

  features: int = 1

  def __post_init__(self):
    _utils.check_positive("features", self.features)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the affine map.

    Args:
      x: float inputs, [batch, in_features].
      train: unused; accepted so that one train step drives every model.

    Returns:
      Predictions [batch, features], float32 for float32 inputs.

    Raises:
      ValueError: if `x` is not 2-D.
    """
    del train
    _utils.check_ndim("LinearRegression", x, 2, "[batch, in_features]")
    return nn.Dense(self.features)(x)
