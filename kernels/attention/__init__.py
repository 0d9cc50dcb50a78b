"""`attention(q, k, v, ...)`: one function, several implementations, one definition.

>>> import jax, jax.numpy as jnp
>>> import kernels
>>> q = k = v = jax.random.normal(jax.random.key(0), (2, 100, 4, 64), jnp.bfloat16)
>>> out = kernels.attention(q, k, v, causal=True)             # [2, 100, 4, 64] bfloat16
>>> out = kernels.attention(q, k, v, impl="xla_chunked")      # linear memory in seq length
>>> out = kernels.attention(q, k, v, local_window_size=(16, 0), logits_soft_cap=50.0)
>>> out, lse = kernels.attention(q, k, v, return_residual=True)  # lse: [2, 100, 4] float32

The semantics (masks, windows, bias, GQA, padding, fully masked rows) are those of
`kernels.attention.reference`; every path is tested against it. The package's parts:
`api` (validation, the registry of paths, `impl="auto"`), `reference`, `spec` (the contract
of the blockwise backends), `vjp` (their one `custom_vjp`), `chunked` (XLA), `gpu`
(Pallas Triton), `tpu` (Pallas Mosaic), `cudnn` (through `jax.nn`), `block_sizes`.
"""

from kernels.attention.api import AUTO_TABLE, IMPLEMENTATIONS, IMPLS, attention
from kernels.attention.block_sizes import BlockSizes, GpuBlockSizes
from kernels.attention.reference import allowed_mask, attention_reference

__all__ = ["attention", "attention_reference", "allowed_mask", "BlockSizes", "GpuBlockSizes",
           "IMPLS", "IMPLEMENTATIONS", "AUTO_TABLE"]
