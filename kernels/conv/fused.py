"""The fused convolution as one `jax.custom_vjp` over any backend's canonical kernels.

Forward: lay the input out in stride phases, run the backend's implicit-GEMM `forward` with
the epilogue fused, and drop the wide grid's extra columns.

Backward, from the saved output (and the pre-activation for `gelu`/`silu` only):
- `dz = dy * act'(z)`, in float32 on the wide grid (its extra columns are zero);
- `db = sum(dz)`, `dresidual = dz`;
- `dw` by the backend's `weight_grad`, the implicit-GEMM reduction over pixels;
- `dx` as a transposed convolution through the same `forward` kernel: `dz` spread to the
  input's stride (zeros between rows and columns), padded by the dilated kernel extent and
  convolved at stride 1 with the spatially flipped kernel whose in/out channels are swapped
  per group. At stride 2 that spends 4x the necessary multiplies on zeros.

Second-order gradients are not supported (the kernels have no derivative rules).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
from jax import lax
import jax.numpy as jnp

from kernels.conv import canonical
from kernels.conv.block_sizes import BlockSizes
from kernels.conv.layout import (Geometry, bias_to_groups, from_wide, geometry, taps_to_weights,
                                 to_phases, to_wide, weights_to_taps)

__all__ = ["FusedConfig", "fused_conv2d"]

_BACKEND_MODULES = {"xla": "kernels.conv.canonical", "gpu": "kernels.conv.gpu",
                    "tpu": "kernels.conv.tpu"}


@dataclasses.dataclass(frozen=True)
class FusedConfig:
  """Everything static about one fused convolution.

  Attributes:
    geo: its sizes.
    activation: None, "relu", "gelu" or "silu".
    backend: whose canonical kernels run: "xla", "gpu" or "tpu".
    block_sizes: the kernels' tiles, or None for their defaults.
    interpret: run Pallas kernels in interpret mode.
    has_residual: whether a residual is added (its cotangent is then returned).
  """

  geo: Geometry
  activation: str | None
  backend: str
  block_sizes: BlockSizes | None = None
  interpret: bool = False
  has_residual: bool = False


def _ops(backend: str):
  return importlib.import_module(_BACKEND_MODULES[backend])


def _forward_wide(x, w, b, residual, config: FusedConfig, save_preactivation: bool):
  """The backend's canonical forward: wide `y`, or `(y, z)` when `save_preactivation`."""
  geo, ops = config.geo, _ops(config.backend)
  fn = ops.depthwise_forward if geo.depthwise else ops.forward
  return fn(to_phases(x, geo), weights_to_taps(w, geo), bias_to_groups(b, geo),
            None if residual is None else to_wide(residual, geo), taps=geo.taps, m=geo.m,
            activation=config.activation, save_preactivation=save_preactivation,
            block_sizes=config.block_sizes, interpret=config.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def fused_conv2d(x, w, b, residual, config: FusedConfig) -> jax.Array:
  """`act(conv(x, w) + b + residual)` through `config.backend`'s kernels.

  Args:
    x: `[N, H, W, Cin]`, validated by the caller.
    w: `[KH, KW, Cin / G, Cout]`, `x`'s dtype.
    b: `[Cout]` or None.
    residual: `[N, OH, OW, Cout]` in `x`'s dtype, or None.
    config: the static `FusedConfig`.

  Returns:
    `[N, OH, OW, Cout]` in `x.dtype`.
  """
  return from_wide(_forward_wide(x, w, b, residual, config, False), config.geo)


def _needs_preactivation(activation) -> bool:
  return activation in ("gelu", "silu")


def _fused_fwd(x, w, b, residual, config):
  save = _needs_preactivation(config.activation)
  out = _forward_wide(x, w, b, residual, config, save)
  y_wide, z_wide = out if save else (out, None)
  return from_wide(y_wide, config.geo), (x, w, b, y_wide, z_wide)


def _fused_bwd(config, saved, dy):
  x, w, b, y_wide, z_wide = saved
  geo = config.geo
  dz = canonical.activation_grad(to_wide(dy, geo), y_wide, z_wide, config.activation)
  db = None
  if b is not None:
    db = jnp.sum(dz, axis=(0, 1) if geo.depthwise else (0, 2)).reshape(-1).astype(b.dtype)
  dz = dz.astype(x.dtype)
  dz_image = from_wide(dz, geo)  # [N, OH, OW, Cout]
  ops = _ops(config.backend)
  weight_grad = ops.depthwise_weight_grad if geo.depthwise else ops.weight_grad
  dw_taps = weight_grad(to_phases(x, geo), dz, taps=geo.taps, block_sizes=config.block_sizes,
                        interpret=config.interpret)
  dw = taps_to_weights(dw_taps, geo).astype(w.dtype)
  dx = _input_grad(dz_image, w, config)
  return dx, dw, db, dz_image if config.has_residual else None


fused_conv2d.defvjp(_fused_fwd, _fused_bwd)


def _input_grad(dz, w, config: FusedConfig) -> jax.Array:
  """`dx [N, H, W, Cin]` from `dz [N, OH, OW, Cout]`: the transposed convolution."""
  geo = config.geo
  (sh, sw), (dh, dw) = geo.stride, geo.dilation
  up = lax.pad(dz, jnp.zeros((), dz.dtype),
               ((0, 0, 0), (0, 0, sh - 1), (0, 0, sw - 1), (0, 0, 0)))
  pads = []
  for axis, (size, (pad_lo, _), extent) in enumerate(
      ((geo.height, geo.padding[0], dh * (geo.kernel_h - 1)),
       (geo.width, geo.padding[1], dw * (geo.kernel_w - 1))), start=1):
    lo, hi = extent - pad_lo, size - up.shape[axis] + pad_lo
    # A negative pad crops; crop here so the canonical layout only ever pads.
    up = lax.slice_in_dim(up, max(-lo, 0), up.shape[axis] - max(-hi, 0), axis=axis)
    pads.append((max(lo, 0), max(hi, 0)))
  if geo.depthwise:
    w_t = w[::-1, ::-1]  # [KH, KW, 1, Cout]: each output channel on its own
    groups = geo.out_channels
  else:
    kh, kw, ci, cout = w.shape
    w_t = w.reshape(kh, kw, ci, geo.groups, cout // geo.groups).transpose(0, 1, 4, 3, 2)
    w_t = w_t.reshape(kh, kw, cout // geo.groups, geo.groups * ci)[::-1, ::-1]
    groups = geo.groups
  geo_t = geometry(up.shape, w_t.shape, stride=(1, 1), padding=tuple(pads),
                   dilation=geo.dilation, groups=groups)
  config_t = dataclasses.replace(config, geo=geo_t, activation=None, has_residual=False)
  dx = from_wide(_forward_wide(up, w_t, None, None, config_t, False), geo_t)
  if geo.depthwise and geo.out_channels != geo.in_channels:
    # Output channel c read input channel c // k: sum the k multipliers back.
    dx = dx.reshape(*dx.shape[:3], geo.in_channels, -1).sum(axis=-1)
  return dx
