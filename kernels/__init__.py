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

The name `kernels` is also that of an unrelated package on PyPI (Hugging Face's `kernels`,
which loads compute kernels from the Hub). Both cannot live in one environment: `import
dlopt` checks that the `kernels` it finds is this one (`__dlopt_kernels__`) and fails,
naming both, when it is not; and a directory of ours that the other package's install has
overwritten fails here, below.
"""

__dlopt_kernels__ = True  # marks this package as dlopt's (see the docstring)

try:
  from kernels.attention import BlockSizes as AttentionBlockSizes
except ImportError as error:  # a `kernels` of mixed origin: ours with parts of another's
  raise ImportError(
      f"`kernels` at {__path__[0]} is not the one dlopt ships (its kernels.attention does "
      "not import); another package named `kernels` (Hugging Face's, on PyPI) has probably "
      "overwritten it: pip uninstall kernels, then reinstall dlopt, or keep the two in "
      "separate virtual environments") from error
from kernels.attention import attention
from kernels.conv import BlockSizes as ConvBlockSizes
from kernels.conv import causal_conv1d, conv2d

__all__ = ["attention", "AttentionBlockSizes", "conv2d", "causal_conv1d", "ConvBlockSizes"]
