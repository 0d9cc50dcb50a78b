"""Tile sizes of the attention kernels: one validated dataclass, defaults per backend."""

from __future__ import annotations

import dataclasses

from kernels._block_sizes import check_block_sizes

__all__ = ["BlockSizes"]


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles of the forward and backward passes.

  Attributes:
    block_q: query rows per forward tile.
    block_k: key rows per forward inner step.
    block_q_bwd: query rows per tile in the backward kernels.
    block_k_bwd: key rows per tile in the backward kernels.
    num_warps: GPU (Triton) warps per program; None lets the kernel choose.
    num_stages: GPU (Triton) software-pipelining stages; None lets the kernel choose.
  """

  block_q: int = 128
  block_k: int = 128
  block_q_bwd: int = 64
  block_k_bwd: int = 64
  num_warps: int | None = None
  num_stages: int | None = None

  def __post_init__(self):
    check_block_sizes(self, ("block_q", "block_k", "block_q_bwd", "block_k_bwd"))

  @classmethod
  def default(cls, backend: str, head_dim: int) -> "BlockSizes":
    """Defaults for `backend` ("gpu", "tpu" or "cpu") and `head_dim`."""
    if backend == "gpu":
      if head_dim > 128:
        return cls(block_q=64, block_k=32, block_q_bwd=32, block_k_bwd=32, num_warps=4,
                   num_stages=2)
      return cls(block_q=128, block_k=64, block_q_bwd=64, block_k_bwd=64, num_warps=4,
                 num_stages=2)
    if backend == "tpu":
      return cls(block_q=128, block_k=128, block_q_bwd=128, block_k_bwd=128)
    return cls(block_q=512, block_k=512, block_q_bwd=512, block_k_bwd=512)
