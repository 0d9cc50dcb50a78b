"""Flax Linen models, used through pure `init` / `apply`.

Every model is called as `model.apply(variables, x, train=..., rngs=...,
mutable=...)` and takes the keyword `train` (even where unused), so that one
train step drives them all. Dropout draws from the 'dropout' RNG stream;
batch norm keeps its running statistics in the 'batch_stats' collection.

>>> import jax, jax.numpy as jnp
>>> from dlopt import models
>>> model = models.MLP(widths=(32,), num_outputs=10, dropout_rate=0.5)
>>> x = jnp.ones((4, 8, 8))
>>> variables = model.init(jax.random.key(0), x)
>>> models.count_params(variables["params"])
2410
>>> logits = model.apply(variables, x, train=True,
...                      rngs={"dropout": jax.random.key(1)})
>>> logits.shape, logits.dtype
((4, 10), dtype('float32'))

Models with batch norm (`ResidualCNN(norm="batch")`) also hold
`variables["batch_stats"]`; in training, pass `mutable=["batch_stats"]` and
get `(logits, {"batch_stats": new_stats})` back.

Mixed precision: every model takes `dtype` (the computation dtype; None
promotes as Flax layers do) and `param_dtype` (float32 by default), passed to
each of its Flax layers. `dtype=jnp.bfloat16` runs the matmuls and convolutions
in bfloat16 on float32 parameters; logits come out float32 whatever `dtype`,
and norm statistics stay float32. bfloat16 needs no loss scaling (it has
float32's exponent range). `remat=True` on `ResidualCNN` and the transformer
models recomputes each block's activations in the backward pass (`nn.remat`):
less memory, same parameters and results.

>>> model = models.MLP(widths=(32,), num_outputs=10, dtype=jnp.bfloat16)
>>> variables = model.init(jax.random.key(0), x)
>>> variables["params"]["Dense_0"]["kernel"].dtype, model.apply(variables, x).dtype
(dtype('float32'), dtype('float32'))
"""

from dlopt.models._utils import count_params
from dlopt.models.attention import MultiHeadSelfAttention
from dlopt.models.cnn import CNN
from dlopt.models.cnn import ResidualBlock
from dlopt.models.cnn import ResidualCNN
from dlopt.models.linear import LinearRegression
from dlopt.models.mlp import MLP
from dlopt.models.recurrent import RecurrentClassifier
from dlopt.models.recurrent import RecurrentStack
from dlopt.models.summary import summary
from dlopt.models.transformer import DecoderLM
from dlopt.models.transformer import TransformerBlock
from dlopt.models.transformer import TransformerEncoderClassifier

__all__ = [
    "CNN",
    "DecoderLM",
    "LinearRegression",
    "MLP",
    "MultiHeadSelfAttention",
    "RecurrentClassifier",
    "RecurrentStack",
    "ResidualBlock",
    "ResidualCNN",
    "TransformerBlock",
    "TransformerEncoderClassifier",
    "count_params",
    "summary",
]
