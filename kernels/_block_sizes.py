"""The checks every kernel's `BlockSizes` dataclass shares."""

from __future__ import annotations

from jax import lax

__all__ = ["FLOAT32_DOTS", "check_block_sizes", "float32_dot_precision"]

# How the GPU kernels multiply float32 tiles (None: the default, "tf32x3").
FLOAT32_DOTS = (None, "tf32x3", "tf32", "ieee")


def check_block_sizes(config, tiles: tuple[str, ...]) -> None:
  """Raises `ValueError` unless each of `tiles` is a power of two >= 8 and the Triton
  options (`num_warps`, `num_stages` and their `_bwd` forms, where the class has them)
  are None or integers >= 1; and unless `float32_dot`, where present, is a known one.

  Args:
    config: a `BlockSizes` instance (any dataclass with those fields).
    tiles: the names of its tile-size fields.
  """
  for name in tiles:
    value = getattr(config, name)
    if (not isinstance(value, int) or isinstance(value, bool) or value < 8
        or value & (value - 1)):
      raise ValueError(f"BlockSizes.{name} must be a power of two >= 8; got {value!r}")
  for name in ("num_warps", "num_stages", "num_warps_bwd", "num_stages_bwd"):
    value = getattr(config, name, None)
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ValueError(f"BlockSizes.{name} must be None or an integer >= 1; got {value!r}")
  dot = getattr(config, "float32_dot", None)
  if dot not in FLOAT32_DOTS:
    raise ValueError(f"BlockSizes.float32_dot must be one of {FLOAT32_DOTS}; got {dot!r}")


def float32_dot_precision(float32_dot: str | None, interpret: bool):
  """The `precision` of a Pallas Triton dot of float32 operands.

  Args:
    float32_dot: "tf32x3" (the default for None: three TF32 tensor-core products that
      carry float32's accuracy, about 1e-6 relative), "tf32" (one product, about 1e-3) or
      "ieee" (exact FMA loops without tensor cores: slow, and it spills at the default
      tiles).
    interpret: in the interpreter every float32 dot is exact (HIGHEST).
  """
  if interpret or float32_dot == "ieee":
    return lax.Precision.HIGHEST
  if float32_dot == "tf32":
    return lax.DotAlgorithmPreset.TF32_TF32_F32
  return lax.DotAlgorithmPreset.TF32_TF32_F32_X3
