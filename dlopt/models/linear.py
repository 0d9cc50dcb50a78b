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
import jax.numpy as jnp

from dlopt.models import _utils

__all__ = ["LinearRegression"]


class LinearRegression(nn.Module):
  """`y = x @ kernel + bias`, one `nn.Dense` layer.

  Attributes:
    features: number of outputs per example, >= 1.
    dtype: the computation dtype (jnp.bfloat16 for mixed precision); None
      promotes the inputs' and parameters' dtypes, as `nn.Dense` does.
      bfloat16 needs no loss scaling: it has float32's exponent range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
  """

  features: int = 1
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    _utils.check_positive("features", self.features)
    _utils.set_dtypes(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the affine map.

    Args:
      x: float inputs, [batch, in_features].
      train: unused; accepted so that one train step drives every model.

    Returns:
      Predictions [batch, features], float32 whatever `dtype` computed them
      (cast at the end), so the loss runs in float32.

    Raises:
      ValueError: if `x` is not 2-D.
    """
    del train
    _utils.check_ndim("LinearRegression", x, 2, "[batch, in_features]")
    y = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return _utils.float32_logits(y)
