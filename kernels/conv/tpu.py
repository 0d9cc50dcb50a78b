"""The fused 2-D convolution for the TPU: Mosaic TPU Pallas kernels of the canonical problem.

Each function solves `kernels.conv.canonical`'s flat-shift implicit GEMM (same signatures,
same layouts) without building an im2col matrix: a kernel holds one example's (and group's)
whole flattened phases `[S, L, Ci]` in VMEM and reads, for tap `t = (phase, shift)` and the
output rows `[r0, r0 + block_m)`, the rows `[r0 + shift, r0 + shift + block_m)` of that
phase. Taps and shifts are static, so the tap loop is unrolled at trace time and every read
is an aligned dynamic offset (`r0`, a multiple of `block_m`) plus a static one (`shift`).

- `forward`: grid `(N, G, Co blocks, m blocks)`, all parallel. The x block's index map
  ignores the Co and m axes, so the phases are DMA'd once per `(n, g)`; the w block is
  `[T, Ci, block_n]`. The float32 tile `[block_m, block_n]` sums one MXU matmul per tap;
  the epilogue adds bias and residual, applies the activation (`canonical.activate`) and
  stores `y` (and the pre-activation `z` only when asked).
- `weight_grad`: grid `(G, Co blocks, N, m blocks)`, the last two a reduction
  ("arbitrary"). The float32 output block holds all taps and stays in VMEM across the
  reduction. It is computed transposed, `dw[t]^T += dz^T @ x_t`: `dz`'s tile is transposed
  once per step and shared by the taps, where `x_t^T @ dz` would transpose one x window per
  tap. The wrapper transposes the small result back.
- `depthwise_forward` / `depthwise_weight_grad`: the same grids without the group axis and
  with channels on the lanes (blocked by `block_n`); elementwise products in float32 on the
  VPU instead of matmuls.

The wrappers pad what the tiles need and slice the results back to the contract's shapes:
`m` to a multiple of `block_m` (padded `dz` rows are zero, so they add nothing to `dw`),
`Co` (or `C`) to a multiple of `block_n` when it spans several blocks, and `L` so that the
padded rows' reads stay in bounds. `Ci` is never padded: a block spanning a whole axis is
legal at any size.

VMEM: the x block is `S * L * Ci` elements, lane-padded to 128 (a 3-channel input costs as
much VMEM as a 128-channel one) and double-buffered, so the whole-image design suits
feature maps up to a few MiB per example; the scoped VMEM limit is raised to the blocks'
estimated need, up to `_MAX_VMEM_BYTES`. Larger images (or very large `Ci`, which is not
split into a K loop) would need manual halo DMAs of row windows instead.

dtypes: float32 (matmuls at `Precision.HIGHEST`) and bfloat16 run natively, accumulating in
float32. float16 is not a TPU compute type: float16 inputs run in float32 and the outputs
are cast back. On a real TPU, `block_m` is raised to the dtype's sublane tile (8 or 16) and
`block_n` to 128 lanes unless the block spans the whole axis; interpret mode
(`interpret=True`, Pallas' TPU interpreter, for testing on the CPU) runs them as given.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.conv import canonical
from kernels.conv.block_sizes import BlockSizes

__all__ = ["forward", "weight_grad", "depthwise_forward", "depthwise_weight_grad"]

NUM_LANES = 128  # the last (lane) dimension of a TPU vreg
NUM_SUBLANES = 8  # the second-to-last (sublane) dimension of a 32-bit TPU vreg
_MIN_VMEM_BYTES = 32 << 20  # never lower the scoped VMEM limit below this
_MAX_VMEM_BYTES = 100 << 20  # v5e/v6e have 128 MiB of VMEM per core (v7x: 64 MiB)
_SQ = pl.Squeezed()
_STATIC = ("taps", "m", "activation", "save_preactivation", "block_sizes", "interpret")
_STATIC_GRAD = ("taps", "block_sizes", "interpret")


# ----------------------------------------------------------------------------------------
# Kernels.
# ----------------------------------------------------------------------------------------


def _window(x_ref, phase: int, shift: int, i, block_m: int, tile: int):
  """Rows `[r0 + shift - rest, ... + block_m + tile)` of `phase`, `r0 = i * block_m`.

  Returns the window `[block_m + tile, lanes]` and `rest = shift % tile`: window row
  `rest + r` is row `r0 + shift + r`. The load starts on a sublane tile (`tile` rows) because
  Mosaic cannot always prove, and so refuses, an unaligned dynamic start; the caller moves
  the rows by `rest` afterwards with a static rotation of 32-bit values.
  """
  rest = shift % tile
  start = pl.multiple_of(i * block_m + shift - rest, tile)
  return x_ref[phase, pl.ds(start, block_m + tile), :], rest


def _rows_up(window, rest: int, block_m: int):
  """`window[rest:rest + block_m]` of a 32-bit window, by a sublane rotation."""
  if rest:
    window = pltpu.roll(window, window.shape[0] - rest, axis=0)
  return window[:block_m]


def _rows_down(rows, rest: int, tile: int):
  """float32 `[block_m, n]` -> `[block_m + tile, n]`: row r moved to `r + rest`, zeros around.

  Aligns a `dz` tile with `_window(...)` for a shift of residue `rest`.
  """
  padded = jnp.concatenate([rows, jnp.zeros((tile, rows.shape[1]), rows.dtype)], axis=0)
  return pltpu.roll(padded, rest, axis=0) if rest else padded


def _add(sums: dict, key, value):
  sums[key] = sums[key] + value if key in sums else value


def _epilogue(acc, b_ref, r_ref, y_ref, z_ref, activation):
  """Adds bias and residual to the float32 `acc`, stores `act(acc)` (and `acc` if asked)."""
  if b_ref is not None:
    acc = acc + b_ref[...]  # [1, block_n] f32, broadcast over the rows
  if r_ref is not None:
    acc = acc + r_ref[...].astype(jnp.float32)
  y_ref[...] = canonical.activate(acc, activation).astype(y_ref.dtype)
  if z_ref is not None:
    z_ref[...] = acc.astype(z_ref.dtype)


def _split_refs(refs, has_bias: bool, has_residual: bool, save_preactivation: bool):
  """(b_ref, r_ref, y_ref, z_ref) from the kernel's refs after x and w; absent ones None."""
  refs = list(refs)
  b_ref = refs.pop(0) if has_bias else None
  r_ref = refs.pop(0) if has_residual else None
  y_ref = refs.pop(0)
  z_ref = refs.pop(0) if save_preactivation else None
  return b_ref, r_ref, y_ref, z_ref


def _forward_kernel(x_ref, w_ref, *refs, taps, block_m, activation, precision, flags):
  """One (n, g, Co block, m block) tile: `act(sum_t x_t @ w[t] + bias + residual)`.

  `x_ref [S, L, Ci]`, `w_ref [T, Ci, block_n]`, then (per `flags`) `b_ref [1, block_n]`
  f32, `r_ref [block_m, block_n]`, `y_ref [block_m, block_n]`, `z_ref [block_m, block_n]`.
  """
  b_ref, r_ref, y_ref, z_ref = _split_refs(refs, *flags)
  i = pl.program_id(3)
  acc = None
  for t, (phase, shift) in enumerate(taps):
    term = jnp.dot(_rows(x_ref, phase, shift, i, block_m), w_ref[t], precision=precision,
                   preferred_element_type=jnp.float32)  # [block_m, block_n]
    acc = term if acc is None else acc + term
  _epilogue(acc, b_ref, r_ref, y_ref, z_ref, activation)


def _weight_grad_kernel(x_ref, dz_ref, dwt_ref, *, taps, block_m, precision):
  """One (g, Co block, n, m block) step of `dw[t]^T += dz^T @ x_t` for every tap.

  `x_ref [S, L, Ci]`, `dz_ref [block_m, block_n]`, `dwt_ref [T, block_n, Ci]` f32.
  """
  n, i = pl.program_id(2), pl.program_id(3)

  @pl.when(jnp.logical_and(n == 0, i == 0))
  def _init():
    dwt_ref[...] = jnp.zeros(dwt_ref.shape, jnp.float32)

  dz_t = dz_ref[...].T  # [block_n, block_m]
  for t, (phase, shift) in enumerate(taps):
    dwt_ref[t] += jnp.dot(dz_t, _rows(x_ref, phase, shift, i, block_m), precision=precision,
                          preferred_element_type=jnp.float32)  # [block_n, Ci]


def _depthwise_forward_kernel(x_ref, w_ref, *refs, taps, block_m, activation, flags):
  """One (n, C block, m block) tile of the elementwise forward.

  `x_ref [S, L, block_c]`, `w_ref [T, block_c]`, then (per `flags`) `b_ref [1, block_c]`
  f32, `r_ref`, `y_ref`, `z_ref [block_m, block_c]`.
  """
  b_ref, r_ref, y_ref, z_ref = _split_refs(refs, *flags)
  i = pl.program_id(2)
  acc = None
  for t, (phase, shift) in enumerate(taps):
    x = _rows(x_ref, phase, shift, i, block_m).astype(jnp.float32)  # [block_m, block_c]
    term = x * w_ref[pl.ds(t, 1), :].astype(jnp.float32)
    acc = term if acc is None else acc + term
  _epilogue(acc, b_ref, r_ref, y_ref, z_ref, activation)


def _depthwise_weight_grad_kernel(x_ref, dz_ref, dw_ref, *, taps, block_m):
  """One (C block, n, m block) step of `dw[t] += sum_r x_t * dz`.

  `x_ref [S, L, block_c]`, `dz_ref [block_m, block_c]`, `dw_ref [T, block_c]` f32.
  """
  n, i = pl.program_id(1), pl.program_id(2)

  @pl.when(jnp.logical_and(n == 0, i == 0))
  def _init():
    dw_ref[...] = jnp.zeros(dw_ref.shape, jnp.float32)

  dz = dz_ref[...].astype(jnp.float32)  # [block_m, block_c]
  for t, (phase, shift) in enumerate(taps):
    x = _rows(x_ref, phase, shift, i, block_m).astype(jnp.float32)
    dw_ref[pl.ds(t, 1), :] += jnp.sum(x * dz, axis=0, keepdims=True)  # [1, block_c]


# ----------------------------------------------------------------------------------------
# Layout: tiles, padding, compiler parameters.
# ----------------------------------------------------------------------------------------


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _sublanes(dtype) -> int:
  """Mosaic's sublane tile for `dtype`: 8 rows of 32-bit values, 16 of 16-bit ones."""
  return NUM_SUBLANES * 4 // jnp.dtype(dtype).itemsize


def _row_tiles(m: int, block_m: int, dtype, interpret: bool) -> tuple[int, int]:
  """(block_m, padded m): a block no longer than the (tile-aligned) rows."""
  sublanes = NUM_SUBLANES if interpret else _sublanes(dtype)
  block_m = min(max(block_m, sublanes), _round_up(m, sublanes))
  return block_m, _round_up(m, block_m)


def _lane_tiles(channels: int, block_n: int, interpret: bool) -> tuple[int, int]:
  """(block_n, padded channels): one whole-axis block if it fits, else lane-sized blocks."""
  if not interpret:
    block_n = max(block_n, NUM_LANES)
  if channels <= block_n:
    return channels, channels
  return block_n, _round_up(channels, block_n)


def _pad(x, axis: int, size: int):
  """Zero-pads `x` along `axis` up to `size`."""
  if x is None or x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _compute_dtype(dtype):
  """float16 runs in float32 (not a TPU compute type); other dtypes as they are."""
  return jnp.dtype(jnp.float32) if dtype == jnp.float16 else jnp.dtype(dtype)


def _as(x, dtype):
  return None if x is None else x.astype(dtype)


def _precision(dtype):
  """Full float32 matmuls for float32 inputs (Mosaic may otherwise use bfloat16 passes)."""
  return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _check_taps(taps, phases: int):
  for phase, shift in taps:
    if not 0 <= phase < phases or shift < 0:
      raise ValueError(f"taps need 0 <= phase < {phases} and shift >= 0; got {taps}")


def _vmem_bytes(shape, dtype) -> int:
  """VMEM footprint of one buffer of `shape`: its last two dims padded to Mosaic's tiles."""
  *lead, rows, cols = shape
  itemsize = jnp.dtype(dtype).itemsize
  return (math.prod(lead) * _round_up(rows, _sublanes(dtype)) * _round_up(cols, NUM_LANES) *
          itemsize)


def _compiler_params(semantics, blocks):
  """Mosaic parameters; `blocks` are the (shape, dtype) of every double-buffered block."""
  need = 2 * sum(_vmem_bytes(shape, dtype) for shape, dtype in blocks)
  limit = min(max(need + (8 << 20), _MIN_VMEM_BYTES), _MAX_VMEM_BYTES)
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit)


def _interpret(interpret: bool):
  return pltpu.InterpretParams() if interpret else False


# ----------------------------------------------------------------------------------------
# The canonical functions.
# ----------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=_STATIC)
def forward(xs, w, bias, residual, *, taps, m, activation, save_preactivation=False,
            block_sizes=None, interpret=False):
  """The canonical forward (`kernels.conv.canonical.forward`) as one Mosaic kernel.

  Args:
    xs: `[S, N, G, L, Ci]` float32, bfloat16 or float16, `L >= m + max(shift)`.
    w: `[T, G, Ci, Co]`, `xs`'s dtype.
    bias: float32 `[G, Co]` or None.
    residual: `[N, G, m, Co]` in `xs`'s dtype, or None.
    taps: static tuple of `T` `(phase, shift)` int pairs.
    m: rows of the wide output grid.
    activation: None, "relu", "gelu" or "silu".
    save_preactivation: also return the pre-activation `z`.
    block_sizes: `BlockSizes` (`block_m`, `block_n` used), None for the TPU defaults.
    interpret: run in Pallas' TPU interpret mode (on any backend).

  Returns:
    `y [N, G, m, Co]` in `xs.dtype`, or `(y, z)` with `z` the same shape and dtype.
  """
  block_sizes = block_sizes or BlockSizes.default("tpu")
  phases, batch, groups, length, ci = xs.shape
  num_taps, co = w.shape[0], w.shape[3]
  _check_taps(taps, phases)
  out_dtype, dtype = xs.dtype, _compute_dtype(xs.dtype)
  block_m, m_pad = _row_tiles(m, block_m=block_sizes.block_m, dtype=dtype, interpret=interpret)
  block_n, co_pad = _lane_tiles(co, block_sizes.block_n, interpret)
  length = max(length, m_pad + max(shift for _, shift in taps))
  xs = _pad(xs.astype(dtype), 3, length)
  w = _pad(w.astype(dtype), 3, co_pad)
  bias = None if bias is None else _pad(bias.astype(jnp.float32), 1, co_pad)[:, None, :]
  residual = _pad(_pad(_as(residual, dtype), 2, m_pad), 3, co_pad)

  tile = (_SQ, _SQ, block_m, block_n)
  tile_spec = pl.BlockSpec(tile, lambda n, g, j, i: (n, g, i, j))
  in_specs = [pl.BlockSpec((phases, _SQ, _SQ, length, ci), lambda n, g, j, i: (0, n, g, 0, 0)),
              pl.BlockSpec((num_taps, _SQ, ci, block_n), lambda n, g, j, i: (0, g, 0, j))]
  operands = [xs, w]
  if bias is not None:  # [G, 1, co_pad]: a whole-axis sublane dim of 1
    in_specs.append(pl.BlockSpec((_SQ, 1, block_n), lambda n, g, j, i: (g, 0, j)))
    operands.append(bias)
  if residual is not None:
    in_specs.append(tile_spec)
    operands.append(residual)
  out_shape = jax.ShapeDtypeStruct((batch, groups, m_pad, co_pad), dtype)
  num_out = 2 if save_preactivation else 1
  blocks = [((phases, length, ci), dtype), ((num_taps, ci, block_n), dtype),
            ((block_m, block_n), jnp.float32)] + [((block_m, block_n), dtype)] * (1 + num_out)
  kernel = functools.partial(
      _forward_kernel, taps=taps, block_m=block_m, activation=activation,
      precision=_precision(dtype),
      flags=(bias is not None, residual is not None, save_preactivation))
  outs = pl.pallas_call(
      kernel,
      grid=(batch, groups, co_pad // block_n, m_pad // block_m),
      in_specs=in_specs,
      out_specs=[tile_spec] * num_out,
      out_shape=[out_shape] * num_out,
      compiler_params=_compiler_params(("parallel",) * 4, blocks),
      interpret=_interpret(interpret),
  )(*operands)
  outs = [out[:, :, :m, :co].astype(out_dtype) for out in outs]
  return tuple(outs) if save_preactivation else outs[0]


@functools.partial(jax.jit, static_argnames=_STATIC_GRAD)
def weight_grad(xs, dz, *, taps, block_sizes=None, interpret=False):
  """The canonical weight gradient (`kernels.conv.canonical.weight_grad`) as one kernel.

  Args:
    xs: `[S, N, G, L, Ci]` float32, bfloat16 or float16, `L >= m + max(shift)`.
    dz: `[N, G, m, Co]`, `xs`'s dtype: the pre-activation's cotangent.
    taps: static tuple of `T` `(phase, shift)` int pairs.
    block_sizes: `BlockSizes` (`block_m`, `block_n` used), None for the TPU defaults.
    interpret: run in Pallas' TPU interpret mode (on any backend).

  Returns:
    float32 `[T, G, Ci, Co]`: `sum_{n, r < m} xs[phase_t, n, g, r + shift_t]^T @ dz[n, g, r]`.
  """
  block_sizes = block_sizes or BlockSizes.default("tpu")
  phases, batch, groups, length, ci = xs.shape
  m, co = dz.shape[2], dz.shape[3]
  _check_taps(taps, phases)
  dtype = _compute_dtype(xs.dtype)
  block_m, m_pad = _row_tiles(m, block_m=block_sizes.block_m, dtype=dtype, interpret=interpret)
  block_n, co_pad = _lane_tiles(co, block_sizes.block_n, interpret)
  length = max(length, m_pad + max(shift for _, shift in taps))
  xs = _pad(xs.astype(dtype), 3, length)
  dz = _pad(_pad(dz.astype(dtype), 2, m_pad), 3, co_pad)  # zero rows: no contribution

  num_taps = len(taps)
  blocks = [((phases, length, ci), dtype), ((block_m, block_n), dtype),
            ((num_taps, block_n, ci), jnp.float32)]
  dwt = pl.pallas_call(
      functools.partial(_weight_grad_kernel, taps=taps, block_m=block_m,
                        precision=_precision(dtype)),
      grid=(groups, co_pad // block_n, batch, m_pad // block_m),
      in_specs=[
          pl.BlockSpec((phases, _SQ, _SQ, length, ci), lambda g, j, n, i: (0, n, g, 0, 0)),
          pl.BlockSpec((_SQ, _SQ, block_m, block_n), lambda g, j, n, i: (n, g, i, j))],
      out_specs=pl.BlockSpec((num_taps, _SQ, block_n, ci), lambda g, j, n, i: (0, g, j, 0)),
      out_shape=jax.ShapeDtypeStruct((num_taps, groups, co_pad, ci), jnp.float32),
      compiler_params=_compiler_params(("parallel", "parallel", "arbitrary", "arbitrary"),
                                       blocks),
      interpret=_interpret(interpret),
  )(xs, dz)
  return jnp.swapaxes(dwt[:, :, :co, :], 2, 3)  # [T, G, Ci, Co]


@functools.partial(jax.jit, static_argnames=_STATIC)
def depthwise_forward(xs, w, bias, residual, *, taps, m, activation, save_preactivation=False,
                      block_sizes=None, interpret=False):
  """The canonical depthwise forward (`canonical.depthwise_forward`) as one kernel.

  Args:
    xs: `[S, N, L, C]` float32, bfloat16 or float16, `L >= m + max(shift)`.
    w: `[T, C]`, `xs`'s dtype.
    bias: float32 `[C]` or None.
    residual: `[N, m, C]` in `xs`'s dtype, or None.
    taps, m, activation, save_preactivation, interpret: as in `forward`.
    block_sizes: `BlockSizes` (`block_m`, and `block_n` for channels), None for defaults.

  Returns:
    `y [N, m, C]` in `xs.dtype`, or `(y, z)` with `z` the same shape and dtype.
  """
  block_sizes = block_sizes or BlockSizes.default("tpu")
  phases, batch, length, c = xs.shape
  num_taps = w.shape[0]
  _check_taps(taps, phases)
  out_dtype, dtype = xs.dtype, _compute_dtype(xs.dtype)
  block_m, m_pad = _row_tiles(m, block_m=block_sizes.block_m, dtype=dtype, interpret=interpret)
  block_c, c_pad = _lane_tiles(c, block_sizes.block_n, interpret)
  length = max(length, m_pad + max(shift for _, shift in taps))
  xs = _pad(_pad(xs.astype(dtype), 2, length), 3, c_pad)
  w = _pad(w.astype(dtype), 1, c_pad)
  bias = None if bias is None else _pad(bias.astype(jnp.float32), 0, c_pad)[None, :]
  residual = _pad(_pad(_as(residual, dtype), 1, m_pad), 2, c_pad)

  tile_spec = pl.BlockSpec((_SQ, block_m, block_c), lambda n, j, i: (n, i, j))
  in_specs = [pl.BlockSpec((phases, _SQ, length, block_c), lambda n, j, i: (0, n, 0, j)),
              pl.BlockSpec((num_taps, block_c), lambda n, j, i: (0, j))]
  operands = [xs, w]
  if bias is not None:
    in_specs.append(pl.BlockSpec((1, block_c), lambda n, j, i: (0, j)))
    operands.append(bias)
  if residual is not None:
    in_specs.append(tile_spec)
    operands.append(residual)
  num_out = 2 if save_preactivation else 1
  blocks = [((phases, length, block_c), dtype), ((num_taps, block_c), dtype),
            ((block_m, block_c), jnp.float32)] + [((block_m, block_c), dtype)] * (1 + num_out)
  kernel = functools.partial(
      _depthwise_forward_kernel, taps=taps, block_m=block_m, activation=activation,
      flags=(bias is not None, residual is not None, save_preactivation))
  outs = pl.pallas_call(
      kernel,
      grid=(batch, c_pad // block_c, m_pad // block_m),
      in_specs=in_specs,
      out_specs=[tile_spec] * num_out,
      out_shape=[jax.ShapeDtypeStruct((batch, m_pad, c_pad), dtype)] * num_out,
      compiler_params=_compiler_params(("parallel",) * 3, blocks),
      interpret=_interpret(interpret),
  )(*operands)
  outs = [out[:, :m, :c].astype(out_dtype) for out in outs]
  return tuple(outs) if save_preactivation else outs[0]


@functools.partial(jax.jit, static_argnames=_STATIC_GRAD)
def depthwise_weight_grad(xs, dz, *, taps, block_sizes=None, interpret=False):
  """The canonical depthwise weight gradient (`canonical.depthwise_weight_grad`).

  Args:
    xs: `[S, N, L, C]` float32, bfloat16 or float16, `L >= m + max(shift)`.
    dz: `[N, m, C]`, `xs`'s dtype.
    taps, interpret: as in `weight_grad`.
    block_sizes: `BlockSizes` (`block_m`, and `block_n` for channels), None for defaults.

  Returns:
    float32 `[T, C]`: `sum_{n, r < m} xs[phase_t, n, r + shift_t] * dz[n, r]`.
  """
  block_sizes = block_sizes or BlockSizes.default("tpu")
  phases, batch, length, c = xs.shape
  m = dz.shape[1]
  _check_taps(taps, phases)
  dtype = _compute_dtype(xs.dtype)
  block_m, m_pad = _row_tiles(m, block_m=block_sizes.block_m, dtype=dtype, interpret=interpret)
  block_c, c_pad = _lane_tiles(c, block_sizes.block_n, interpret)
  length = max(length, m_pad + max(shift for _, shift in taps))
  xs = _pad(_pad(xs.astype(dtype), 2, length), 3, c_pad)
  dz = _pad(_pad(dz.astype(dtype), 1, m_pad), 2, c_pad)  # zero rows: no contribution

  num_taps = len(taps)
  blocks = [((phases, length, block_c), dtype), ((block_m, block_c), dtype),
            ((num_taps, block_c), jnp.float32)]
  dw = pl.pallas_call(
      functools.partial(_depthwise_weight_grad_kernel, taps=taps, block_m=block_m),
      grid=(c_pad // block_c, batch, m_pad // block_m),
      in_specs=[pl.BlockSpec((phases, _SQ, length, block_c), lambda j, n, i: (0, n, 0, j)),
                pl.BlockSpec((_SQ, block_m, block_c), lambda j, n, i: (n, i, j))],
      out_specs=pl.BlockSpec((num_taps, block_c), lambda j, n, i: (0, j)),
      out_shape=jax.ShapeDtypeStruct((num_taps, c_pad), jnp.float32),
      compiler_params=_compiler_params(("parallel", "arbitrary", "arbitrary"), blocks),
      interpret=_interpret(interpret),
  )(xs, dz)
  return dw[:, :c]
