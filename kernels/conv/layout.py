"""From NHWC images and HWIO weights to the canonical problem of `kernels.conv.canonical`.

`Geometry` holds every static size of one convolution; the functions below move arrays
between the image layouts and the canonical ones (phases, taps, the wide output grid).
Each is a pad/reshape/transpose chain that XLA fuses into a single copy.
"""

from __future__ import annotations

import dataclasses

import jax
from jax import lax
import jax.numpy as jnp

__all__ = ["Geometry", "geometry", "to_phases", "weights_to_taps", "taps_to_weights",
           "bias_to_groups", "to_wide", "from_wide"]


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Static sizes of a convolution `x [N, H, W, Cin] * w [KH, KW, Cin/G, Cout]`.

  Attributes:
    batch, height, width, in_channels: the input's shape.
    kernel_h, kernel_w, out_channels, groups: the weights' shape and the group count.
    stride, dilation: `(h, w)` pairs.
    padding: `((top, bottom), (left, right))`, non-negative.
    out_h, out_w: the output's spatial size.
    phase_h, phase_w: the size of one stride phase of the padded input.
    taps: `(phase, shift)` per kernel tap, row-major over `(i, j)`.
    m: rows of the wide output grid, `out_h * phase_w`.
    length: the flat length of one phase, `>= m + max(shift)`.
  """

  batch: int
  height: int
  width: int
  in_channels: int
  kernel_h: int
  kernel_w: int
  out_channels: int
  groups: int
  stride: tuple[int, int]
  dilation: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  out_h: int
  out_w: int
  phase_h: int
  phase_w: int
  taps: tuple[tuple[int, int], ...]
  m: int
  length: int

  @property
  def depthwise(self) -> bool:
    """One input channel per group: the elementwise kernels apply."""
    return self.in_channels == self.groups

  @property
  def phases(self) -> int:
    return self.stride[0] * self.stride[1]


def geometry(x_shape, w_shape, *, stride, padding, dilation, groups) -> Geometry:
  """The `Geometry` of a validated convolution (pairs already normalized).

  Tap `(i, j)` reads padded pixel `(oh * sh + i * dh, ow * sw + j * dw)`, which lies in
  phase `((i * dh) % sh, (j * dw) % sw)` at phase coordinates `(oh + (i * dh) // sh,
  ow + (j * dw) // sw)`: a constant flat shift from the wide output row `oh * phase_w + ow`.
  """
  n, h, w, cin = x_shape
  kh, kw, _, cout = w_shape
  (sh, sw), (dh, dw) = stride, dilation
  (pt, pb), (pl, pr) = padding
  out_h = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
  out_w = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
  phase_h, phase_w = _cdiv(h + pt + pb, sh), _cdiv(w + pl + pr, sw)
  taps = tuple(
      (((i * dh) % sh) * sw + (j * dw) % sw, ((i * dh) // sh) * phase_w + (j * dw) // sw)
      for i in range(kh) for j in range(kw))
  m = out_h * phase_w
  length = max(phase_h * phase_w, m + max(shift for _, shift in taps))
  return Geometry(n, h, w, cin, kh, kw, cout, groups, (sh, sw), (dh, dw),
                  ((pt, pb), (pl, pr)), out_h, out_w, phase_h, phase_w, taps, m, length)


def to_phases(x: jax.Array, geo: Geometry) -> jax.Array:
  """`x [N, H, W, Cin]` -> canonical `xs`: `[S, N, G, L, Ci]`, or `[S, N, L, Cout]` if depthwise.

  Depthwise inputs with a channel multiplier `k = Cout / Cin` repeat each channel `k` times,
  so that output channel `c` reads input channel `c // k` (the grouping of `lax.conv`).
  """
  (sh, sw), ((pt, pb), (pl, pr)) = geo.stride, geo.padding
  if geo.depthwise and geo.out_channels != geo.in_channels:
    x = jnp.repeat(x, geo.out_channels // geo.in_channels, axis=-1)
  c = x.shape[-1]
  x = jnp.pad(x, ((0, 0), (pt, geo.phase_h * sh - geo.height - pt),
                  (pl, geo.phase_w * sw - geo.width - pl), (0, 0)))
  x = x.reshape(geo.batch, geo.phase_h, sh, geo.phase_w, sw, c)
  x = x.transpose(2, 4, 0, 1, 3, 5).reshape(sh * sw, geo.batch, geo.phase_h * geo.phase_w, c)
  x = jnp.pad(x, ((0, 0), (0, 0), (0, geo.length - geo.phase_h * geo.phase_w), (0, 0)))
  if geo.depthwise:
    return x  # [S, N, L, Cout]
  ci = c // geo.groups
  return x.reshape(*x.shape[:3], geo.groups, ci).transpose(0, 1, 3, 2, 4)  # [S, N, G, L, Ci]


def weights_to_taps(w: jax.Array, geo: Geometry) -> jax.Array:
  """`w [KH, KW, Ci, Cout]` -> canonical `[T, G, Ci, Co]`, or `[T, Cout]` if depthwise."""
  taps = geo.kernel_h * geo.kernel_w
  if geo.depthwise:
    return w.reshape(taps, geo.out_channels)
  ci, co = w.shape[2], geo.out_channels // geo.groups
  return w.reshape(taps, ci, geo.groups, co).transpose(0, 2, 1, 3)


def taps_to_weights(w_taps: jax.Array, geo: Geometry) -> jax.Array:
  """The inverse of `weights_to_taps`: `[KH, KW, Ci, Cout]`."""
  kh, kw = geo.kernel_h, geo.kernel_w
  if geo.depthwise:
    return w_taps.reshape(kh, kw, 1, geo.out_channels)
  taps, groups, ci, co = w_taps.shape
  return w_taps.transpose(0, 2, 1, 3).reshape(kh, kw, ci, groups * co)


def bias_to_groups(b: jax.Array | None, geo: Geometry) -> jax.Array | None:
  """`b [Cout]` -> float32 `[G, Co]`, or `[Cout]` if depthwise; None stays None."""
  if b is None:
    return None
  b = b.astype(jnp.float32)
  return b if geo.depthwise else b.reshape(geo.groups, geo.out_channels // geo.groups)


def to_wide(y: jax.Array, geo: Geometry) -> jax.Array:
  """`y [N, OH, OW, Cout]` -> the wide grid `[N, G, m, Co]` (or `[N, m, Cout]`), zero-filled."""
  y = jnp.pad(y, ((0, 0), (0, 0), (0, geo.phase_w - geo.out_w), (0, 0)))
  y = y.reshape(geo.batch, geo.m, geo.out_channels)
  if geo.depthwise:
    return y
  return y.reshape(geo.batch, geo.m, geo.groups, -1).transpose(0, 2, 1, 3)


def from_wide(y: jax.Array, geo: Geometry) -> jax.Array:
  """The wide grid `[N, G, m, Co]` (or `[N, m, Cout]`) -> `[N, OH, OW, Cout]`."""
  if not geo.depthwise:
    y = y.transpose(0, 2, 1, 3)
  y = y.reshape(geo.batch, geo.out_h, geo.phase_w, geo.out_channels)
  return lax.slice_in_dim(y, 0, geo.out_w, axis=2)
