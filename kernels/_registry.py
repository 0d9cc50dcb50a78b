"""What every op's registry of implementations holds: where a path runs.

>>> from kernels._registry import Implementation
>>> Implementation("pallas_gpu", ("gpu",), interpretable=True).supported_on("cpu")
True
"""

from __future__ import annotations

import dataclasses

__all__ = ["Implementation"]


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One path of an op: where it runs and which options it supports.

  Attributes:
    name: the `impl=` string.
    platforms: the JAX platforms it runs on natively ("cpu", "gpu", "tpu").
    interpretable: a Pallas kernel that also runs off its hardware, in interpret mode.
    supports: the op's option names it implements (each op lists its own).
  """

  name: str
  platforms: tuple[str, ...]
  interpretable: bool = False
  supports: frozenset = frozenset()

  def supported_on(self, platform: str) -> bool:
    """Whether it runs on `platform` (natively, or interpreted)."""
    return self.interpretable or platform in self.platforms

  def check(self, used: set, platform: str, hints: dict | None = None,
            instead: str = "") -> None:
    """Raises `ValueError` unless it runs on `platform` and supports every option in `used`.

    Args:
      used: the option names a call asks for.
      platform: `jax.default_backend()`.
      hints: how to spell an option in the message, by name.
      instead: what to use instead, appended to the message of a missing option.
    """
    if not self.supported_on(platform):
      raise ValueError(f"impl={self.name!r} runs only on {' or '.join(self.platforms)}; "
                       f"jax.default_backend() is {platform!r}")
    missing = sorted(set(used) - self.supports)
    if missing:
      names = ", ".join((hints or {}).get(name, name) for name in missing)
      raise ValueError(f"impl={self.name!r} does not support {names}"
                       + (f"; {instead}" if instead else ""))
