"""Tile sizes of the convolution kernels: one validated dataclass, defaults per backend."""

from __future__ import annotations

import dataclasses

__all__ = ["BlockSizes"]


def _power_of_two(value: int) -> bool:
  return value >= 1 and value & (value - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles of the implicit-GEMM convolution kernels (see `kernels.conv.canonical`).

  Attributes:
    block_m: output pixels (rows of the wide output grid) per tile.
    block_n: output channels per tile.
    block_k: input channels per inner step of the reduction.
    num_warps: GPU (Triton) warps per program; None lets the kernel choose.
    num_stages: GPU (Triton) software-pipelining stages; None lets the kernel choose.
  """

  block_m: int = 128
  block_n: int = 64
  block_k: int = 32
  num_warps: int | None = None
  num_stages: int | None = None

  def __post_init__(self):
    for name in ("block_m", "block_n", "block_k"):
      value = getattr(self, name)
      if not isinstance(value, int) or not _power_of_two(value) or value < 8:
        raise ValueError(f"BlockSizes.{name} must be a power of two >= 8; got {value!r}")
    for name in ("num_warps", "num_stages"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"BlockSizes.{name} must be None or an integer >= 1; got {value!r}")

  @classmethod
  def default(cls, backend: str) -> "BlockSizes":
    """Defaults for `backend` ("gpu", "tpu" or "cpu")."""
    if backend == "gpu":
      return cls(block_m=128, block_n=64, block_k=32, num_warps=4, num_stages=3)
    if backend == "tpu":
      return cls(block_m=256, block_n=128, block_k=128)
    return cls(block_m=128, block_n=64, block_k=32)
