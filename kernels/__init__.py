"""Pallas kernels for dlopt, each with a plain XLA reference and an `impl=` switch.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> q = k = v = jax.random.normal(jax.random.key(0), (1, 64, 2, 32))
>>> kernels.attention(q, k, v, causal=True).shape
(1, 64, 2, 32)

Never imports `dlopt`.
"""

from kernels.attention import BlockSizes as AttentionBlockSizes
from kernels.attention import attention

__all__ = ["attention", "AttentionBlockSizes"]
