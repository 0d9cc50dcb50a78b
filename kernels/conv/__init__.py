"""`conv2d` and `causal_conv1d`: fused convolutions, several implementations, one definition.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> x = jax.random.normal(jax.random.key(0), (2, 28, 28, 16))
>>> w = jax.random.normal(jax.random.key(1), (3, 3, 16, 32)) * 0.1
>>> kernels.conv2d(x, w, jnp.zeros(32), activation="relu").shape
(2, 28, 28, 32)
>>> kernels.conv2d(x, w, stride=2, padding="VALID", impl="xla_implicit_gemm").shape
(2, 13, 13, 32)

The semantics are `kernels.conv.reference`'s; every path is tested against it. The parts:
`api` (validation, the registry of paths, dispatch), `reference`, `fused` (the one
`custom_vjp` over the backends' canonical kernels), `canonical` (the XLA implicit GEMM),
`gpu` (Pallas Triton), `tpu` (Pallas Mosaic), `layout`, `block_sizes`.
"""

from kernels.conv.api import IMPLEMENTATIONS, IMPLS, causal_conv1d, conv2d
from kernels.conv.block_sizes import BlockSizes
from kernels.conv.reference import causal_conv1d_reference, conv2d_reference

__all__ = ["conv2d", "causal_conv1d", "conv2d_reference", "causal_conv1d_reference",
           "BlockSizes", "IMPLS", "IMPLEMENTATIONS"]
