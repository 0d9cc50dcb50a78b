"""Tile sizes of the convolution kernels: one validated dataclass, defaults per backend."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from kernels._block_sizes import check_block_sizes

__all__ = ["BlockSizes"]


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles of the implicit-GEMM convolution kernels (see `kernels.conv.canonical`).

  Attributes:
    block_m: output pixels (rows of the wide output grid) per tile.
    block_n: output channels per tile.
    block_k: input channels per inner step of the reduction.
    num_warps: GPU (Triton) warps per program; None lets the kernel choose.
    num_stages: GPU (Triton) software-pipelining stages; None lets the kernel choose.
    float32_dot: how the GPU kernels multiply float32 tiles: "tf32x3" (the default for
      None; float32's accuracy on the tensor cores), "tf32" (faster, about 1e-3 relative)
      or "ieee" (exact FMA loops; slow). Interpret mode is always exact.
  """

  block_m: int = 128
  block_n: int = 64
  block_k: int = 32
  num_warps: int | None = None
  num_stages: int | None = None
  float32_dot: str | None = None

  def __post_init__(self):
    check_block_sizes(self, ("block_m", "block_n", "block_k"))

  @classmethod
  def default(cls, backend: str, dtype=None) -> "BlockSizes":
    """Defaults for `backend` ("gpu", "tpu" or "cpu") and the inputs' `dtype`.

    On the GPU, float32 tiles take half the rows: at 128 the weight gradient's 3xTF32
    products spill (bench/results/gpu_compile_sm90.json).
    """
    if backend == "gpu":
      if dtype is not None and jnp.dtype(dtype).itemsize >= 4:
        return cls(block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=3)
      return cls(block_m=128, block_n=64, block_k=32, num_warps=4, num_stages=3)
    if backend == "tpu":
      return cls(block_m=256, block_n=128, block_k=128)
    return cls(block_m=128, block_n=64, block_k=32)
