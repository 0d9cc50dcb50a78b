"""Rotary position embeddings (RoPE, Su et al. 2021) for queries and keys.

Each pair of features `(i, i + D/2)` of a head is rotated by the angle
`position * base ** (-2i / D)`, so the dot product of a rotated query and key
depends on their positions only through `q_position - k_position`: attention
sees relative offsets, with no position table to learn.

>>> import jax.numpy as jnp
>>> from dlopt.models.rotary import rotary_embedding
>>> x = jnp.ones((2, 5, 4, 8))                        # [B, T, H, D]
>>> rotary_embedding(x, jnp.arange(5)[None]).shape
(2, 5, 4, 8)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["check_rope_base", "rotary_embedding"]


def check_rope_base(rope_base: float | None) -> None:
  """Raises `ValueError` unless `rope_base` is None or a finite number > 1."""
  if rope_base is None:
    return
  if (isinstance(rope_base, bool) or not isinstance(rope_base, (int, float))
      or not math.isfinite(rope_base) or rope_base <= 1):
    raise ValueError(f"rope_base must be None or a finite number > 1; got {rope_base=!r}")


def rotary_embedding(x: jax.Array, positions: jax.Array, *, base: float = 10_000.0
                     ) -> jax.Array:
  """Rotates the features of every head of `x` by its token's position.

  Args:
    x: float [B, T, H, D] queries or keys; D even.
    positions: int [B or 1, T], the position of each token (e.g. `arange(T)`,
      or positions restarting at each packed segment).
    base: the longest wavelength's scale; pairs rotate at `base ** (-2i / D)`
      radians per position.

  Returns:
    [B, T, H, D] in the dtype of `x`; the angles and the rotation are computed
    in float32.

  Raises:
    ValueError: if `x` is not 4-D with an even last axis, or `positions` is not
      [B or 1, T].
  """
  if x.ndim != 4 or x.shape[-1] % 2:
    raise ValueError(f"rotary_embedding expects x [batch, seq, heads, head_dim] with an "
                     f"even head_dim; got {x.shape=}")
  if positions.ndim != 2 or positions.shape[1] != x.shape[1] or positions.shape[0] not in (
      1, x.shape[0]):
    raise ValueError(f"positions must be [{x.shape[0]} or 1, {x.shape[1]}]; got "
                     f"{positions.shape=}")
  half = x.shape[-1] // 2
  inverse_frequency = base ** (-jnp.arange(half, dtype=jnp.float32) / half)     # [D/2]
  angles = positions.astype(jnp.float32)[..., None] * inverse_frequency         # [B, T, D/2]
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]           # [B, T, 1, D/2]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)
