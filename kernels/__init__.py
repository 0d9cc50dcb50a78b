"""Pallas kernels for dlopt, each with a plain XLA reference and an `impl=` switch.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> q = k = v = jax.random.normal(jax.random.key(0), (1, 64, 2, 32))
>>> kernels.attention(q, k, v, causal=True).shape
(1, 64, 2, 32)

>>> x = jax.random.normal(jax.random.key(1), (1, 8, 8, 3))
>>> w = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))
>>> kernels.conv2d(x, w, activation="relu").shape
(1, 8, 8, 4)

Never imports `dlopt`.
"""

from kernels.attention import BlockSizes as AttentionBlockSizes
from kernels.attention import attention
from kernels.conv import BlockSizes as ConvBlockSizes
from kernels.conv import causal_conv1d, conv2d

__all__ = ["attention", "AttentionBlockSizes", "conv2d", "causal_conv1d", "ConvBlockSizes"]
