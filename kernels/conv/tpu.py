"""The fused 2-D convolution for the TPU: Mosaic TPU Pallas kernels of the canonical problem.

Each function solves `kernels.conv.canonical`'s flat-shift implicit GEMM (same signatures,
same layouts) without building an im2col matrix: a kernel holds one example's (and group's)
whole flattened phases `[S, L, Ci]` in VMEM and, for tap `t = (phase, shift)` and the output
rows `[r0, r0 + block_m)`, reads the rows `[r0 + shift, r0 + shift + block_m)` of that
phase. Taps are static, so the tap loop is unrolled at trace time.

Mosaic refuses a dynamic load whose start it cannot prove sublane-aligned, and `r0 + shift`
is not, in general. So a tap loads an aligned window of `block_m + tile` rows from
`r0 + shift - rest` (`tile`: the dtype's sublane tile, 8 or 16 rows; `rest = shift % tile`,
static) and its rows are moved by `rest` with a static sublane rotation (`pltpu.roll`) of
32-bit values: the forward kernels sum the taps of one residue on the window (`tile` extra
rows of matmul, 3-6% at `block_m = 256`) and rotate each residue's sum once; the weight
gradients rotate the (zero-extended) `dz` tile down instead, once per residue.

- `forward`: grid `(N, G, Co blocks, m blocks)`, all parallel. The x block's index map
  ignores the Co and m axes, so the phases are DMA'd once per `(n, g)`; the w block is
  `[T, Ci, block_n]`. The float32 tile `[block_m, block_n]` sums one MXU matmul per tap;
  the epilogue adds bias and residual, applies the activation (`canonical.activate`) and
  stores `y` (and the pre-activation `z` only when asked).
- `weight_grad`: grid `(G, Co blocks, N, m blocks)`, the last two a reduction
  ("arbitrary"); x is DMA'd once per `(g, Co block, n)`. The float32 output block holds all
  taps and stays in VMEM across the reduction. It is computed transposed,
  `dw[t]^T += dz^T @ x_t`: `dz`'s tile is transposed once per residue and shared by its
  taps, where `x_t^T @ dz` would transpose one x window per tap. The wrapper transposes the
  small result back.
- `depthwise_forward` / `depthwise_weight_grad`: the same grids without the group axis and
  with channels on the lanes (blocked by `block_n`); elementwise products in float32 on the
  VPU instead of matmuls.

The wrappers pad what the tiles need and slice the results back to the contract's shapes:
`m` to a multiple of `block_m` (padded `dz` rows are zero, so they add nothing to `dw`),
`Co` (or `C`) to a multiple of `block_n` when it spans several blocks, and `L` so that every
window of every padded row is in bounds. `Ci` is never padded: a block spanning a whole axis is
legal at any size.

VMEM: the x block is `S * L * Ci` elements (`S * L * block_n` for depthwise), lane-padded to
128 (a 3-channel input costs as much VMEM as a 128-channel one) and double-buffered, so the
whole-image design suits feature maps up to a few MiB per example; the scoped VMEM limit is
raised to the blocks' estimated need, up to `_MAX_VMEM_BYTES`. Larger images (or very large
`Ci`, which is not split into a K loop: `block_k` is unused) would need manual halo DMAs of
row windows.

dtypes: float32 (matmuls at `Precision.HIGHEST`) and bfloat16 run natively, accumulating in
float32. float16 is not a TPU compute type: float16 inputs run in float32 and the outputs
are cast back. `block_m` is raised to the sublane tile and capped at the (tile-aligned) `m`.
On a real TPU `block_n` is raised to 128 lanes unless one block spans the whole channel
axis; interpret mode (`interpret=True`: Pallas' TPU interpreter, which runs on the CPU) runs
it as given, so that small tests still see several channel blocks.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels._indexing import as_int32
from kernels._tiling import pad_axis, round_up
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
    window = pltpu.roll(window, as_int32(window.shape[0] - rest), axis=0)
  return window[:block_m]


def _rows_down(rows, rest: int, tile: int):
  """float32 `[block_m, n]` -> `[block_m + tile, n]`: row r moved to `r + rest`, zeros around.

  Aligns a `dz` tile with `_window(...)` for a shift of residue `rest`.
  """
  padded = jnp.concatenate([rows, jnp.zeros((tile, rows.shape[1]), rows.dtype)], axis=0)
  return pltpu.roll(padded, as_int32(rest), axis=0) if rest else padded


def _add(sums: dict, key, value):
  """`sums[key] += value`, the first value starting the sum."""
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


def _forward_kernel(x_ref, w_ref, *refs, taps, block_m, tile, activation, precision,
                    flags):
  """One (n, g, Co block, m block) tile: `act(sum_t x_t @ w[t] + bias + residual)`.

  `x_ref [S, L, Ci]`, `w_ref [T, Ci, block_n]`, then (per `flags`) `b_ref [1, block_n]`
  f32, `r_ref [block_m, block_n]`, `y_ref [block_m, block_n]`, `z_ref [block_m, block_n]`.
  Taps whose shifts share a residue mod `tile` are summed on their windows, so each
  residue costs one rotation.
  """
  b_ref, r_ref, y_ref, z_ref = _split_refs(refs, *flags)
  i = pl.program_id(3)
  sums = {}  # rest -> f32 [block_m + tile, block_n]
  for t, (phase, shift) in enumerate(taps):
    x, rest = _window(x_ref, phase, shift, i, block_m, tile)
    _add(sums, rest, jnp.dot(x, w_ref[t], precision=precision,
                             preferred_element_type=jnp.float32))
  acc = sum(_rows_up(window, rest, block_m) for rest, window in sums.items())
  _epilogue(acc, b_ref, r_ref, y_ref, z_ref, activation)


def _weight_grad_kernel(x_ref, dz_ref, dwt_ref, *, taps, block_m, tile, precision):
  """One (g, Co block, n, m block) step of `dw[t]^T += dz^T @ x_t` for every tap.

  `x_ref [S, L, Ci]`, `dz_ref [block_m, block_n]`, `dwt_ref [T, block_n, Ci]` f32. The dz
  tile is shifted down by each residue (once per residue) to line up with the windows.
  """
  n, i = pl.program_id(2), pl.program_id(3)

  @pl.when(jnp.logical_and(n == 0, i == 0))
  def _init():
    dwt_ref[...] = jnp.zeros(dwt_ref.shape, jnp.float32)

  dz = dz_ref[...].astype(jnp.float32)  # [block_m, block_n]
  dz_t = {}  # rest -> [block_n, block_m + tile], the input dtype
  for t, (phase, shift) in enumerate(taps):
    x, rest = _window(x_ref, phase, shift, i, block_m, tile)
    if rest not in dz_t:
      dz_t[rest] = _rows_down(dz, rest, tile).T.astype(x.dtype)
    dwt_ref[t] += jnp.dot(dz_t[rest], x, precision=precision,
                          preferred_element_type=jnp.float32)  # [block_n, Ci]


def _depthwise_forward_kernel(x_ref, w_ref, *refs, taps, block_m, tile, activation, flags):
  """One (n, C block, m block) tile of the elementwise forward.

  `x_ref [S, L, block_c]`, `w_ref [T, block_c]`, then (per `flags`) `b_ref [1, block_c]`
  f32, `r_ref`, `y_ref`, `z_ref [block_m, block_c]`.
  """
  b_ref, r_ref, y_ref, z_ref = _split_refs(refs, *flags)
  i = pl.program_id(2)
  sums = {}  # rest -> f32 [block_m + tile, block_c]
  for t, (phase, shift) in enumerate(taps):
    x, rest = _window(x_ref, phase, shift, i, block_m, tile)
    _add(sums, rest, x.astype(jnp.float32) * w_ref[pl.ds(t, 1), :].astype(jnp.float32))
  acc = sum(_rows_up(window, rest, block_m) for rest, window in sums.items())
  _epilogue(acc, b_ref, r_ref, y_ref, z_ref, activation)


def _depthwise_weight_grad_kernel(x_ref, dz_ref, dw_ref, *, taps, block_m, tile):
  """One (C block, n, m block) step of `dw[t] += sum_r x_t * dz`.

  `x_ref [S, L, block_c]`, `dz_ref [block_m, block_c]`, `dw_ref [T, block_c]` f32.
  """
  n, i = pl.program_id(1), pl.program_id(2)

  @pl.when(jnp.logical_and(n == 0, i == 0))
  def _init():
    dw_ref[...] = jnp.zeros(dw_ref.shape, jnp.float32)

  dz = dz_ref[...].astype(jnp.float32)  # [block_m, block_c]
  shifted = {}  # rest -> f32 [block_m + tile, block_c]
  for t, (phase, shift) in enumerate(taps):
    x, rest = _window(x_ref, phase, shift, i, block_m, tile)
    if rest not in shifted:
      shifted[rest] = _rows_down(dz, rest, tile)
    dw_ref[pl.ds(t, 1), :] += jnp.sum(x.astype(jnp.float32) * shifted[rest], axis=0,
                                      keepdims=True)  # [1, block_c]


# ----------------------------------------------------------------------------------------
# Layout: tiles, padding, compiler parameters.
# ----------------------------------------------------------------------------------------


def _sublanes(dtype) -> int:
  """Mosaic's sublane tile for `dtype`: 8 rows of 32-bit values, 16 of 16-bit ones."""
  return NUM_SUBLANES * 4 // jnp.dtype(dtype).itemsize


def _row_tiles(m: int, length: int, taps, block_m: int, dtype):
  """Row tiling: (block_m, padded m, sublane tile, padded L).

  `block_m` is a multiple of the sublane tile, no longer than the (tile-aligned) rows; the
  padded `L` keeps every window `_window` reads, for every padded row, in bounds.
  """
  tile = _sublanes(dtype)
  block_m = min(max(block_m, tile), round_up(m, tile))
  m_pad = round_up(m, block_m)
  reach = max(shift - shift % tile for _, shift in taps) + tile
  return block_m, m_pad, tile, max(length, m_pad + reach)


def _lane_tiles(channels: int, block_n: int, interpret: bool) -> tuple[int, int]:
  """(block_n, padded channels): one whole-axis block if it fits, else lane-sized blocks."""
  if not interpret:
    block_n = max(block_n, NUM_LANES)
  if channels <= block_n:
    return channels, channels
  return block_n, round_up(channels, block_n)


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
  return (math.prod(lead) * round_up(rows, _sublanes(dtype)) * round_up(cols, NUM_LANES) *
          itemsize)


def _compiler_params(semantics, blocks):
  """Mosaic parameters; `blocks`: (shape, dtype) of each VMEM buffer, counted twice."""
  need = 2 * sum(_vmem_bytes(shape, dtype) for shape, dtype in blocks)
  limit = min(max(need + (8 << 20), _MIN_VMEM_BYTES), _MAX_VMEM_BYTES)
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit)


def _interpret(interpret: bool):
  return pltpu.InterpretParams() if interpret else False


def _call_forward(kernel, operands, specs, *, grid, out_shape, save_preactivation, blocks,
                  interpret):
  """Runs a forward kernel on `(x, w, bias, residual)`, the last two optional (None).

  `specs` are the BlockSpecs of x, w, bias and of an output tile (the residual's too);
  `blocks` the (shape, dtype) of the kernel's VMEM buffers besides the output tiles. Returns
  the padded `y`, or `(y, z)`.
  """
  tile_spec = specs[3]
  args, in_specs = [], []
  for operand, spec in zip(operands, specs):
    if operand is not None:
      args.append(operand)
      in_specs.append(spec)
  flags = (operands[2] is not None, operands[3] is not None, save_preactivation)
  num_out = 2 if save_preactivation else 1
  tile = (tile_spec.block_shape[-2:], out_shape.dtype)  # [block_m, block_n]
  outs = pl.pallas_call(
      functools.partial(kernel, flags=flags),
      grid=grid,
      in_specs=in_specs,
      out_specs=[tile_spec] * num_out,
      out_shape=[out_shape] * num_out,
      compiler_params=_compiler_params(("parallel",) * len(grid),
                                       blocks + [tile] * (1 + num_out)),
      interpret=_interpret(interpret),
  )(*args)
  return tuple(outs) if save_preactivation else outs[0]


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
  block_m, m_pad, tile, length = _row_tiles(m, length, taps, block_sizes.block_m, dtype)
  block_n, co_pad = _lane_tiles(co, block_sizes.block_n, interpret)
  xs = pad_axis(xs.astype(dtype), 3, length)
  w = pad_axis(w.astype(dtype), 3, co_pad)
  bias = None if bias is None else pad_axis(bias.astype(jnp.float32), 1, co_pad)[:, None, :]
  residual = pad_axis(pad_axis(_as(residual, dtype), 2, m_pad), 3, co_pad)

  specs = (pl.BlockSpec((phases, _SQ, _SQ, length, ci), lambda n, g, j, i: (0, n, g, 0, 0)),
           pl.BlockSpec((num_taps, _SQ, ci, block_n), lambda n, g, j, i: (0, g, 0, j)),
           pl.BlockSpec((_SQ, 1, block_n), lambda n, g, j, i: (g, 0, j)),  # bias [G, 1, Co]
           pl.BlockSpec((_SQ, _SQ, block_m, block_n), lambda n, g, j, i: (n, g, i, j)))
  blocks = [((phases, length, ci), dtype), ((num_taps, ci, block_n), dtype),
            ((block_m + tile, block_n), jnp.float32)]
  kernel = functools.partial(_forward_kernel, taps=taps, block_m=block_m, tile=tile,
                             activation=activation, precision=_precision(dtype))
  out = _call_forward(
      kernel, (xs, w, bias, residual), specs,
      grid=(batch, groups, co_pad // block_n, m_pad // block_m),
      out_shape=jax.ShapeDtypeStruct((batch, groups, m_pad, co_pad), dtype),
      save_preactivation=save_preactivation, blocks=blocks, interpret=interpret)
  return jax.tree.map(lambda o: o[:, :, :m, :co].astype(out_dtype), out)


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
  block_m, m_pad, tile, length = _row_tiles(m, length, taps, block_sizes.block_m, dtype)
  block_n, co_pad = _lane_tiles(co, block_sizes.block_n, interpret)
  xs = pad_axis(xs.astype(dtype), 3, length)
  dz = pad_axis(pad_axis(dz.astype(dtype), 2, m_pad), 3, co_pad)  # zero rows: no contribution

  num_taps = len(taps)
  blocks = [((phases, length, ci), dtype), ((block_m, block_n), dtype),
            ((num_taps, block_n, ci), jnp.float32)]
  dwt = pl.pallas_call(
      functools.partial(_weight_grad_kernel, taps=taps, block_m=block_m, tile=tile,
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
  block_m, m_pad, tile, length = _row_tiles(m, length, taps, block_sizes.block_m, dtype)
  block_c, c_pad = _lane_tiles(c, block_sizes.block_n, interpret)
  xs = pad_axis(pad_axis(xs.astype(dtype), 2, length), 3, c_pad)
  w = pad_axis(w.astype(dtype), 1, c_pad)
  bias = None if bias is None else pad_axis(bias.astype(jnp.float32), 0, c_pad)[None, :]
  residual = pad_axis(pad_axis(_as(residual, dtype), 1, m_pad), 2, c_pad)

  specs = (pl.BlockSpec((phases, _SQ, length, block_c), lambda n, j, i: (0, n, 0, j)),
           pl.BlockSpec((num_taps, block_c), lambda n, j, i: (0, j)),
           pl.BlockSpec((1, block_c), lambda n, j, i: (0, j)),  # bias [1, C]
           pl.BlockSpec((_SQ, block_m, block_c), lambda n, j, i: (n, i, j)))
  blocks = [((phases, length, block_c), dtype), ((num_taps, block_c), dtype),
            ((block_m + tile, block_c), jnp.float32)]
  kernel = functools.partial(_depthwise_forward_kernel, taps=taps, block_m=block_m, tile=tile,
                             activation=activation)
  out = _call_forward(
      kernel, (xs, w, bias, residual), specs,
      grid=(batch, c_pad // block_c, m_pad // block_m),
      out_shape=jax.ShapeDtypeStruct((batch, m_pad, c_pad), dtype),
      save_preactivation=save_preactivation, blocks=blocks, interpret=interpret)
  return jax.tree.map(lambda o: o[:, :m, :c].astype(out_dtype), out)


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
  block_m, m_pad, tile, length = _row_tiles(m, length, taps, block_sizes.block_m, dtype)
  block_c, c_pad = _lane_tiles(c, block_sizes.block_n, interpret)
  xs = pad_axis(pad_axis(xs.astype(dtype), 2, length), 3, c_pad)
  dz = pad_axis(pad_axis(dz.astype(dtype), 1, m_pad), 2, c_pad)  # zero rows: no contribution

  num_taps = len(taps)
  blocks = [((phases, length, block_c), dtype), ((block_m, block_c), dtype),
            ((num_taps, block_c), jnp.float32)]
  dw = pl.pallas_call(
      functools.partial(_depthwise_weight_grad_kernel, taps=taps, block_m=block_m, tile=tile),
      grid=(c_pad // block_c, batch, m_pad // block_m),
      in_specs=[pl.BlockSpec((phases, _SQ, length, block_c), lambda j, n, i: (0, n, 0, j)),
                pl.BlockSpec((_SQ, block_m, block_c), lambda j, n, i: (n, i, j))],
      out_specs=pl.BlockSpec((num_taps, block_c), lambda j, n, i: (0, j)),
      out_shape=jax.ShapeDtypeStruct((num_taps, c_pad), jnp.float32),
      compiler_params=_compiler_params(("parallel", "arbitrary", "arbitrary"), blocks),
      interpret=_interpret(interpret),
  )(xs, dz)
  return dw[:, :c]
