"""Flax Linen models, used through pure `init` / `apply`.

Every model is called as `model.apply(variables, x, train=..., rngs=...,
mutable=...)` and takes the keyword `train` (even where unused), so that one
train step drives them all. Dropout draws from the 'dropout' RNG stream;
batch norm keeps its running statistics in the 'batch_stats' collection.

>>> import jax, jax.numpy as jnp
>>> from dlopt import models
>>> model = models.CNN(num_classes=10, features=(8, 16), dense_width=32,
...                    dropout_rate=0.5)
>>> x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
>>> variables = model.init(jax.random.key(1), x)
>>> models.count_params(variables["params"])
26698
>>> logits = model.apply(variables, x, train=True,
...                      rngs={"dropout": jax.random.key(2)})
>>> logits.shape, logits.dtype
((2, 10), dtype('float32'))
"""

from dlopt.models._utils import count_params
from dlopt.models.cnn import CNN
from dlopt.models.cnn import ResidualBlock
from dlopt.models.cnn import ResidualCNN
from dlopt.models.linear import LinearRegression
from dlopt.models.mlp import MLP

__all__ = [
    "CNN",
    "LinearRegression",
    "MLP",
    "ResidualBlock",
    "ResidualCNN",
    "count_params",
]
