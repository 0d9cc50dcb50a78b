"""Tile sizes of the attention kernels: `BlockSizes` (the tiles, every backend) and
`GpuBlockSizes` (with Triton's options), validated, with defaults per backend.

The GPU defaults come from compiling every kernel for sm_90a (`python -m bench
gpu-compile`, bench/results/gpu_compile_sm90.json): per head dim (padded to a power of two)
and operand width, the largest tiles whose forward, dq and dk/dv programs spill no register
and keep at least 2 blocks resident per SM.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from kernels._block_sizes import check_block_sizes

__all__ = ["BlockSizes", "GpuBlockSizes"]

# (operand bits, padded head dim) -> (block_q, block_k, num_warps, num_stages) forward,
# (block_q_bwd, block_k_bwd, num_warps_bwd, num_stages_bwd) backward and `float32_dot`, for
# sm_90a. Float32 tiles are small because 3xTF32 doubles every operand in registers; from
# head dim 128 on even 16x16 3xTF32 tiles spill (some mask kinds), while exact FMA dots fit.
_GPU_TABLE = {
    (16, 32): ((128, 64, 8, 2), (64, 64, 4, 2), None),
    (16, 64): ((128, 32, 8, 2), (64, 64, 4, 2), None),
    (16, 128): ((64, 64, 4, 2), (64, 32, 4, 2), None),
    (16, 256): ((64, 32, 4, 2), (32, 16, 4, 2), None),
    (32, 32): ((64, 32, 4, 2), (32, 16, 4, 2), None),
    (32, 64): ((64, 32, 4, 2), (16, 32, 4, 2), None),
    (32, 128): ((32, 16, 4, 1), (16, 16, 2, 2), "ieee"),
    (32, 256): ((16, 16, 4, 1), (16, 16, 4, 2), "ieee"),
}


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles of the forward and backward passes, for every blockwise path.

  Attributes:
    block_q: query rows per forward tile.
    block_k: key rows per forward inner step.
    block_q_bwd: query rows per tile in the backward kernels.
    block_k_bwd: key rows per tile in the backward kernels.
  """

  block_q: int = 128
  block_k: int = 128
  block_q_bwd: int = 64
  block_k_bwd: int = 64

  def __post_init__(self):
    check_block_sizes(self, ("block_q", "block_k", "block_q_bwd", "block_k_bwd"))

  @classmethod
  def default(cls, backend: str, head_dim: int, dtype=jnp.bfloat16) -> "BlockSizes":
    """The defaults of `backend` ("gpu", "tpu" or "cpu") for `head_dim` and `dtype`.

    GPU: a `GpuBlockSizes` from the sm_90a compile table above. TPU: 128-row tiles (a
    whole lane width of keys), 256 for 16-bit operands up to head dim 128, where the
    tiles of q, k, v, the logits and the float32 accumulators stay far inside VMEM. CPU
    (`xla_chunked`): 512-row tiles, halved from head dim 256 on so that one tile's
    logits and accumulators stay within a few MB per (batch, head).
    """
    if backend == "gpu":
      return GpuBlockSizes.default_for(head_dim, dtype)
    narrow = jnp.dtype(dtype).itemsize <= 2
    if backend == "tpu":
      size = 256 if narrow and head_dim <= 128 else 128
      return cls(block_q=size, block_k=size, block_q_bwd=128, block_k_bwd=128)
    size = 512 if head_dim < 256 else 256
    return cls(block_q=size, block_k=size, block_q_bwd=size, block_k_bwd=size)


@dataclasses.dataclass(frozen=True)
class GpuBlockSizes(BlockSizes):
  """`BlockSizes` with the GPU (Triton) kernels' own options.

  Attributes:
    num_warps: warps per forward program; None lets the kernel choose.
    num_stages: software-pipelining stages of the forward; None: the kernel's.
    num_warps_bwd, num_stages_bwd: the same for the dq and dk/dv programs; None: as the
      forward's.
    float32_dot: how the kernels multiply float32 tiles: "tf32x3" (the default for None;
      float32's accuracy on the tensor cores), "tf32" (faster, about 1e-3 relative) or
      "ieee" (exact FMA loops; slow). Interpret mode is always exact.
  """

  num_warps: int | None = None
  num_stages: int | None = None
  num_warps_bwd: int | None = None
  num_stages_bwd: int | None = None
  float32_dot: str | None = None

  @classmethod
  def default_for(cls, head_dim: int, dtype) -> "GpuBlockSizes":
    """The sm_90a table's entry for `head_dim` (padded to a power of two) and `dtype`."""
    bits = 32 if jnp.dtype(dtype).itemsize >= 4 else 16
    padded = min(256, max(32, 1 << max(0, (head_dim - 1).bit_length())))
    (bq, bk, warps, stages), (bq_bwd, bk_bwd, warps_bwd, stages_bwd), dot = _GPU_TABLE[
        bits, padded]
    return cls(block_q=bq, block_k=bk, block_q_bwd=bq_bwd, block_k_bwd=bk_bwd,
               num_warps=warps, num_stages=stages, num_warps_bwd=warps_bwd,
               num_stages_bwd=stages_bwd, float32_dot=dot)
