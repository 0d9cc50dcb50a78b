"""The checks every kernel's `BlockSizes` dataclass shares."""

from __future__ import annotations

__all__ = ["check_block_sizes"]


def check_block_sizes(config, tiles: tuple[str, ...]) -> None:
  """Raises `ValueError` unless each of `tiles` is a power of two >= 8 and the Triton
  options `num_warps` / `num_stages` are None or integers >= 1.

  Args:
    config: a `BlockSizes` instance (any dataclass with those fields).
    tiles: the names of its tile-size fields.
  """
  for name in tiles:
    value = getattr(config, name)
    if (not isinstance(value, int) or isinstance(value, bool) or value < 8
        or value & (value - 1)):
      raise ValueError(f"BlockSizes.{name} must be a power of two >= 8; got {value!r}")
  for name in ("num_warps", "num_stages"):
    value = getattr(config, name)
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ValueError(f"BlockSizes.{name} must be None or an integer >= 1; got {value!r}")
