"""The fused 2-D convolution for GPUs in Pallas with the Triton lowering.

>>> import jax.numpy as jnp
>>> from kernels.conv import gpu
>>> xs = jnp.ones((1, 2, 1, 40, 8))  # [S, N, G, L, Ci]
>>> w = jnp.ones((3, 1, 8, 16))  # [T, G, Ci, Co]
>>> y = gpu.forward(xs, w, None, None, taps=((0, 0), (0, 1), (0, 6)), m=32,
...                 activation="relu", interpret=True)
>>> y.shape, float(y[0, 0, 0, 0])  # each output sums 3 taps of 8 channels of ones
((2, 1, 32, 16), 24.0)

Each function solves the canonical flat-shift implicit GEMM of `kernels.conv.canonical`
(which defines the layouts and the semantics) with the same signature, plus `block_sizes`
and `interpret`. No im2col matrix is built: the kernels read `xs` in place.

- `forward`: a grid over (Co blocks, m blocks, groups, batch). Each program accumulates
  one float32 `[block_m, block_n]` tile in one loop over the (tap, Ci block) steps, the
  taps' phase and shift read from an int32 `[T, 2]` table, reading the rows
  `r0 + shift .. r0 + shift + block_m` of the tap's phase. Bias, residual and activation
  are applied to the tile before the single store, so the pre-activation reaches memory
  only when `save_preactivation` asks for it.
- `weight_grad`: a grid over (Co blocks, Ci blocks, taps, groups, splits). The tap is a
  grid axis, so its phase and shift reach the kernel as an int32 `[T, 2]` array read per
  program. Each program reduces `xs^T @ dz` over its share of the (batch, m block) steps;
  when the other axes give too few programs to fill a GPU, the steps are split over a
  "splits" axis whose float32 partial sums are added afterwards.
- `depthwise_forward`, `depthwise_weight_grad`: the same designs, elementwise (no `dot`),
  over blocks of `block_m` rows and `block_n` channels.

Triton's tensors must have power-of-two sizes and `dot`'s dims must be >= 16, so each block
size is shrunk to the next power of two of its dimension and raised to 16. The wrappers
then pad with zeros: Ci to a multiple of `block_k` (zero rows of `w` and columns of `xs`
add nothing), Co to a multiple of `block_n`, m to a multiple of `block_m` (the extra output
rows are computed and sliced off; the extra rows of `dz` are zero, so they add nothing to
`dw`), and `L` to `m' + max(shift)`, so that every read is in bounds (Triton does not check).
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from kernels._block_sizes import float32_dot_precision
from kernels._indexing import div, fori_loop, rem
from kernels._tiling import next_power_of_2, pad_axis, round_up
from kernels.conv.block_sizes import BlockSizes
from kernels.conv.canonical import activate

__all__ = ["forward", "weight_grad", "depthwise_forward", "depthwise_weight_grad"]

# Triton's `tl.dot` needs every dimension >= 16, and every tensor a power-of-two size.
_MIN_DIM = 16
# The weight gradients split their reduction until the grid has about this many programs
# (an H100 has 132 SMs), keeping at least `_MIN_STEPS_PER_SPLIT` steps per program.
_TARGET_PROGRAMS = 256
_MIN_STEPS_PER_SPLIT = 4


# ---------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------


def _dot(a, b, *, precision, trans_a=False):
  """`a @ b` (`a` optionally transposed), accumulated in float32.

  `precision` applies to float32 operands only (`kernels._block_sizes.float32_dot_precision`); 16-bit operands
  always take the tensor cores' native 16-bit product.
  """
  return plgpu.dot(a, b, trans_a=trans_a,
                   precision=precision if a.dtype == jnp.float32 else None)


def _epilogue(acc, bias_ref, residual_ref, out_refs, activation):
  """Adds bias and residual to the float32 `acc`, stores `act(acc)` and maybe `acc`.

  Args:
    acc: float32 `[block_m, block_c]`.
    bias_ref: float32 `[block_c]`, or None.
    residual_ref: `[block_m, block_c]`, or None.
    out_refs: `(y_ref,)` or `(y_ref, z_ref)`, each `[block_m, block_c]`.
    activation: one of `canonical.ACTIVATIONS`.
  """
  if bias_ref is not None:
    acc = acc + bias_ref[...][None, :]
  if residual_ref is not None:
    acc = acc + residual_ref[...].astype(jnp.float32)
  y_ref, *z_ref = out_refs
  y_ref[...] = activate(acc, activation).astype(y_ref.dtype)
  if z_ref:
    z_ref[0][...] = acc.astype(z_ref[0].dtype)


def _forward_kernel(tap_ref, xs_ref, w_ref, bias_ref, residual_ref, *out_refs, activation,
                    block_m, block_k, precision):
  """One `[block_m, block_n]` output tile of one (batch, group).

  One loop runs over every (tap, Ci block) step; the taps' phase and shift are read from
  `tap_ref`. A loop rather than an unrolled sequence of taps keeps the code, the compile
  time and the registers of a 7x7 kernel those of a 1x1 (unrolled, 49 taps at stride 2
  spilled in float32 and took minutes to compile), and lets Triton pipeline across taps.

  Refs: tap int32 `[T, 2]` (phase, shift), xs `[S, L', Ci']`, w `[T, Ci', block_n]`, bias
  float32 `[block_n]` or None, residual `[block_m, block_n]` or None; outputs y (and z)
  `[block_m, block_n]`.
  """
  row = pl.program_id(1) * block_m
  num_taps, ci, block_n = w_ref.shape
  k_blocks = ci // block_k

  def body(step, acc):
    t = div(step, k_blocks)
    cols = pl.ds(rem(step, k_blocks) * block_k, block_k)
    phase, shift = tap_ref[t, 0], tap_ref[t, 1]
    x = xs_ref[phase, pl.ds(row + shift, block_m), cols]  # [block_m, block_k]
    return acc + _dot(x, w_ref[t, cols, :], precision=precision)  # [block_m, block_n]

  acc = fori_loop(0, num_taps * k_blocks, body,
                  jnp.zeros((block_m, block_n), jnp.float32))
  _epilogue(acc, bias_ref, residual_ref, out_refs, activation)


def _split_steps(split, steps_per_split, num_steps):
  """The `[lower, upper)` reduction steps of the program at `split` of the splits axis."""
  lower = split * steps_per_split
  return lower, jnp.minimum(lower + steps_per_split, num_steps)


def _weight_grad_kernel(tap_ref, xs_ref, dz_ref, dw_ref, *, block_m, m_blocks, num_steps,
                        steps_per_split, precision):
  """One float32 `[block_k, block_n]` tile of `dw[t, g]`, summed over this split's steps.

  Step `i` is example `i // m_blocks`, rows `(i % m_blocks) * block_m` onwards.
  Refs: tap int32 `[2]` (phase, shift), xs `[S, N, L', block_k]`, dz `[N, m', block_n]`;
  output dw float32 `[block_k, block_n]`.
  """
  phase, shift = tap_ref[0], tap_ref[1]

  def body(step, acc):
    n = div(step, m_blocks)
    row = rem(step, m_blocks) * block_m
    x = xs_ref[phase, n, pl.ds(row + shift, block_m), :]  # [block_m, block_k]
    dz = dz_ref[n, pl.ds(row, block_m), :]  # [block_m, block_n]
    return acc + _dot(x, dz, precision=precision, trans_a=True)  # [block_k, block_n]

  lower, upper = _split_steps(pl.program_id(4), steps_per_split, num_steps)
  dw_ref[...] = fori_loop(lower, upper, body, jnp.zeros(dw_ref.shape, jnp.float32))


def _depthwise_forward_kernel(tap_ref, xs_ref, w_ref, bias_ref, residual_ref, *out_refs,
                              activation, block_m):
  """One `[block_m, block_c]` output tile of one example; a loop over the taps.

  Refs: tap int32 `[T, 2]` (phase, shift), xs `[S, L', block_c]`, w `[T, block_c]`, bias
  float32 `[block_c]` or None, residual `[block_m, block_c]` or None; outputs y (and z)
  `[block_m, block_c]`.
  """
  row = pl.program_id(1) * block_m

  def body(t, acc):
    phase, shift = tap_ref[t, 0], tap_ref[t, 1]
    x = xs_ref[phase, pl.ds(row + shift, block_m), :].astype(jnp.float32)
    return acc + x * w_ref[t, :].astype(jnp.float32)[None, :]  # [block_m, block_c]

  acc = fori_loop(0, w_ref.shape[0], body,
                  jnp.zeros((block_m, w_ref.shape[1]), jnp.float32))
  _epilogue(acc, bias_ref, residual_ref, out_refs, activation)


def _depthwise_weight_grad_kernel(tap_ref, xs_ref, dz_ref, dw_ref, *, block_m, m_blocks,
                                  num_steps, steps_per_split):
  """One float32 `[block_c]` piece of `dw[t]`, summed over this split's steps.

  Refs: tap int32 `[2]` (phase, shift), xs `[S, N, L', block_c]`, dz `[N, m', block_c]`;
  output dw float32 `[block_c]`.
  """
  phase, shift = tap_ref[0], tap_ref[1]

  def body(step, acc):
    n = div(step, m_blocks)
    row = rem(step, m_blocks) * block_m
    x = xs_ref[phase, n, pl.ds(row + shift, block_m), :].astype(jnp.float32)
    return acc + x * dz_ref[n, pl.ds(row, block_m), :].astype(jnp.float32)

  lower, upper = _split_steps(pl.program_id(2), steps_per_split, num_steps)
  acc = jnp.zeros((block_m,) + dw_ref.shape, jnp.float32)
  # Rows are summed once at the end, not per step.
  dw_ref[...] = jnp.sum(fori_loop(lower, upper, body, acc), axis=0)


# ---------------------------------------------------------------------------------------
# Wrappers.
# ---------------------------------------------------------------------------------------


def _block(requested: int, length: int) -> int:
  """`requested`, shrunk to what the dimension needs and raised to Triton's minimum of 16."""
  return max(_MIN_DIM, min(requested, next_power_of_2(length)))


def _pad_rows(xs, axis: int, taps, m_pad: int):
  """`xs` padded along its `L` axis so that reading rows `[shift, shift + m_pad)` is safe."""
  return pad_axis(xs, axis, m_pad + max(shift for _, shift in taps))


def _splits(num_programs: int, num_steps: int) -> tuple[int, int]:
  """`(splits, steps_per_split)` of a reduction of `num_steps` over `num_programs` programs."""
  wanted = min(-(-_TARGET_PROGRAMS // num_programs), num_steps // _MIN_STEPS_PER_SPLIT)
  steps_per_split = -(-num_steps // max(1, wanted))
  return -(-num_steps // steps_per_split), steps_per_split  # No split is empty.


def _compiler_params(block_sizes: BlockSizes) -> plgpu.CompilerParams:
  return plgpu.CompilerParams(num_warps=block_sizes.num_warps,
                              num_stages=block_sizes.num_stages)


_FORWARD_STATIC = ("taps", "m", "activation", "save_preactivation", "block_sizes",
                   "interpret")


@functools.partial(jax.jit, static_argnames=_FORWARD_STATIC)
def forward(xs, w, bias, residual, *, taps, m, activation, save_preactivation=False,
            block_sizes=None, interpret=False):
  """`act(sum_t xs[phase_t][..., r + shift_t, :] @ w[t] + bias + residual)`, fused.

  Args:
    xs: `[S, N, G, L, Ci]`, float32, bfloat16 or float16; `L >= m + max(shift)`.
    w: `[T, G, Ci, Co]`, `xs.dtype`.
    bias: float32 `[G, Co]`, or None.
    residual: `[N, G, m, Co]`, `xs.dtype`, or None.
    taps: static tuple of `T` `(phase, shift)` int pairs.
    m: the number of output rows (of the wide output grid).
    activation: one of `canonical.ACTIVATIONS`.
    save_preactivation: also return the pre-activation `z`.
    block_sizes: tiles and Triton options; None for `BlockSizes.default("gpu", xs.dtype)`.
    interpret: run the kernel in the Pallas interpreter (any backend).

  Returns:
    y `[N, G, m, Co]` in `xs.dtype`, or `(y, z)` with z of the same shape and dtype.
  """
  block_sizes = block_sizes or BlockSizes.default("gpu", xs.dtype)
  _, batch, groups, _, ci = xs.shape
  num_taps, co = w.shape[0], w.shape[3]
  block_m, block_n = _block(block_sizes.block_m, m), _block(block_sizes.block_n, co)
  block_k = _block(block_sizes.block_k, ci)
  m_pad, ci_pad, co_pad = round_up(m, block_m), round_up(ci, block_k), round_up(co, block_n)

  xs = _pad_rows(pad_axis(xs, 4, ci_pad), 3, taps, m_pad)  # [S, N, G, L', Ci']
  w = pad_axis(pad_axis(w, 2, ci_pad), 3, co_pad)  # [T, G, Ci', Co']
  if bias is not None:
    bias = pad_axis(bias.astype(jnp.float32), 1, co_pad)  # [G, Co']
  residual = pad_axis(pad_axis(residual, 2, m_pad), 3, co_pad)  # [N, G, m', Co']

  out_spec = pl.BlockSpec((None, None, block_m, block_n), lambda j, i, g, n: (n, g, i, j))
  num_outputs = 2 if save_preactivation else 1
  outs = pl.pallas_call(
      functools.partial(_forward_kernel, activation=activation, block_m=block_m,
                        block_k=block_k, precision=float32_dot_precision(block_sizes.float32_dot, interpret)),
      grid=(co_pad // block_n, m_pad // block_m, groups, batch),
      in_specs=[
          pl.BlockSpec((num_taps, 2), lambda j, i, g, n: (0, 0)),
          pl.BlockSpec((xs.shape[0], None, None, xs.shape[3], ci_pad),
                       lambda j, i, g, n: (0, n, g, 0, 0)),
          pl.BlockSpec((num_taps, None, ci_pad, block_n), lambda j, i, g, n: (0, g, 0, j)),
          None if bias is None else pl.BlockSpec((None, block_n), lambda j, i, g, n: (g, j)),
          None if residual is None else out_spec,
      ],
      out_specs=[out_spec] * num_outputs,
      out_shape=[jax.ShapeDtypeStruct((batch, groups, m_pad, co_pad), xs.dtype)] * num_outputs,
      compiler_params=_compiler_params(block_sizes),
      interpret=interpret,
      name="conv_forward",
  )(jnp.asarray(taps, jnp.int32), xs, w, bias, residual)
  outs = tuple(out[:, :, :m, :co] for out in outs)
  return outs if save_preactivation else outs[0]


@functools.partial(jax.jit, static_argnames=("taps", "block_sizes", "interpret"))
def weight_grad(xs, dz, *, taps, block_sizes=None, interpret=False):
  """`dw[t, g] = sum_{n, r < m} xs[phase_t, n, g, r + shift_t, :]^T @ dz[n, g, r, :]`.

  Args:
    xs: `[S, N, G, L, Ci]`, float32, bfloat16 or float16; `L >= m + max(shift)`.
    dz: `[N, G, m, Co]`, `xs.dtype`: the cotangent of the pre-activation.
    taps: static tuple of `T` `(phase, shift)` int pairs.
    block_sizes: tiles (block_k over Ci, block_n over Co, block_m rows per reduction
      step) and Triton options; None for `BlockSizes.default("gpu", xs.dtype)`.
    interpret: run the kernel in the Pallas interpreter (any backend).

  Returns:
    float32 `[T, G, Ci, Co]`.
  """
  block_sizes = block_sizes or BlockSizes.default("gpu", xs.dtype)
  _, batch, groups, _, ci = xs.shape
  m, co = dz.shape[2:]
  num_taps = len(taps)
  block_m, block_n = _block(block_sizes.block_m, m), _block(block_sizes.block_n, co)
  block_k = _block(block_sizes.block_k, ci)
  m_pad, ci_pad, co_pad = round_up(m, block_m), round_up(ci, block_k), round_up(co, block_n)

  xs = _pad_rows(pad_axis(xs, 4, ci_pad), 3, taps, m_pad)  # [S, N, G, L', Ci']
  dz = pad_axis(pad_axis(dz, 2, m_pad), 3, co_pad)  # [N, G, m', Co']; zero rows past m
  m_blocks = m_pad // block_m
  num_steps = batch * m_blocks
  grid = (co_pad // block_n, ci_pad // block_k, num_taps, groups)
  splits, steps_per_split = _splits(grid[0] * grid[1] * num_taps * groups, num_steps)

  dw = pl.pallas_call(
      functools.partial(_weight_grad_kernel, block_m=block_m, m_blocks=m_blocks,
                        num_steps=num_steps, steps_per_split=steps_per_split,
                        precision=float32_dot_precision(block_sizes.float32_dot, interpret)),
      grid=grid + (splits,),
      in_specs=[
          pl.BlockSpec((None, 2), lambda j, k, t, g, s: (t, 0)),
          pl.BlockSpec((xs.shape[0], batch, None, xs.shape[3], block_k),
                       lambda j, k, t, g, s: (0, 0, g, 0, k)),
          pl.BlockSpec((batch, None, m_pad, block_n), lambda j, k, t, g, s: (0, g, 0, j)),
      ],
      out_specs=pl.BlockSpec((None, None, None, block_k, block_n),
                             lambda j, k, t, g, s: (s, t, g, k, j)),
      out_shape=jax.ShapeDtypeStruct((splits, num_taps, groups, ci_pad, co_pad), jnp.float32),
      compiler_params=_compiler_params(block_sizes),
      interpret=interpret,
      name="conv_weight_grad",
  )(jnp.asarray(taps, jnp.int32), xs, dz)
  return jnp.sum(dw, axis=0)[:, :, :ci, :co]


@functools.partial(jax.jit, static_argnames=_FORWARD_STATIC)
def depthwise_forward(xs, w, bias, residual, *, taps, m, activation,
                      save_preactivation=False, block_sizes=None, interpret=False):
  """`act(sum_t xs[phase_t][:, r + shift_t, :] * w[t] + bias + residual)`, fused.

  Args:
    xs: `[S, N, L, C]`, float32, bfloat16 or float16; `L >= m + max(shift)`.
    w: `[T, C]`, `xs.dtype`.
    bias: float32 `[C]`, or None.
    residual: `[N, m, C]`, `xs.dtype`, or None.
    taps: static tuple of `T` `(phase, shift)` int pairs.
    m: the number of output rows (of the wide output grid).
    activation: one of `canonical.ACTIVATIONS`.
    save_preactivation: also return the pre-activation `z`.
    block_sizes: tiles (block_m rows, block_n channels) and Triton options; None for
      `BlockSizes.default("gpu", xs.dtype)`.
    interpret: run the kernel in the Pallas interpreter (any backend).

  Returns:
    y `[N, m, C]` in `xs.dtype`, or `(y, z)` with z of the same shape and dtype.
  """
  block_sizes = block_sizes or BlockSizes.default("gpu", xs.dtype)
  _, batch, _, c = xs.shape
  block_m, block_c = _block(block_sizes.block_m, m), _block(block_sizes.block_n, c)
  m_pad, c_pad = round_up(m, block_m), round_up(c, block_c)

  xs = _pad_rows(pad_axis(xs, 3, c_pad), 2, taps, m_pad)  # [S, N, L', C']
  w = pad_axis(w, 1, c_pad)  # [T, C']
  if bias is not None:
    bias = pad_axis(bias.astype(jnp.float32), 0, c_pad)  # [C']
  residual = pad_axis(pad_axis(residual, 1, m_pad), 2, c_pad)  # [N, m', C']

  out_spec = pl.BlockSpec((None, block_m, block_c), lambda j, i, n: (n, i, j))
  num_outputs = 2 if save_preactivation else 1
  outs = pl.pallas_call(
      functools.partial(_depthwise_forward_kernel, activation=activation, block_m=block_m),
      grid=(c_pad // block_c, m_pad // block_m, batch),
      in_specs=[
          pl.BlockSpec((w.shape[0], 2), lambda j, i, n: (0, 0)),
          pl.BlockSpec((xs.shape[0], None, xs.shape[2], block_c), lambda j, i, n: (0, n, 0, j)),
          pl.BlockSpec((w.shape[0], block_c), lambda j, i, n: (0, j)),
          None if bias is None else pl.BlockSpec((block_c,), lambda j, i, n: (j,)),
          None if residual is None else out_spec,
      ],
      out_specs=[out_spec] * num_outputs,
      out_shape=[jax.ShapeDtypeStruct((batch, m_pad, c_pad), xs.dtype)] * num_outputs,
      compiler_params=_compiler_params(block_sizes),
      interpret=interpret,
      name="conv_depthwise_forward",
  )(jnp.asarray(taps, jnp.int32), xs, w, bias, residual)
  outs = tuple(out[:, :m, :c] for out in outs)
  return outs if save_preactivation else outs[0]


@functools.partial(jax.jit, static_argnames=("taps", "block_sizes", "interpret"))
def depthwise_weight_grad(xs, dz, *, taps, block_sizes=None, interpret=False):
  """`dw[t] = sum_{n, r < m} xs[phase_t, n, r + shift_t, :] * dz[n, r, :]`.

  Args:
    xs: `[S, N, L, C]`, float32, bfloat16 or float16; `L >= m + max(shift)`.
    dz: `[N, m, C]`, `xs.dtype`: the cotangent of the pre-activation.
    taps: static tuple of `T` `(phase, shift)` int pairs.
    block_sizes: tiles (block_m rows per reduction step, block_n channels) and Triton
      options; None for `BlockSizes.default("gpu", xs.dtype)`.
    interpret: run the kernel in the Pallas interpreter (any backend).

  Returns:
    float32 `[T, C]`.
  """
  block_sizes = block_sizes or BlockSizes.default("gpu", xs.dtype)
  _, batch, _, c = xs.shape
  m = dz.shape[1]
  num_taps = len(taps)
  block_m, block_c = _block(block_sizes.block_m, m), _block(block_sizes.block_n, c)
  m_pad, c_pad = round_up(m, block_m), round_up(c, block_c)

  xs = _pad_rows(pad_axis(xs, 3, c_pad), 2, taps, m_pad)  # [S, N, L', C']
  dz = pad_axis(pad_axis(dz, 1, m_pad), 2, c_pad)  # [N, m', C']; zero rows past m
  m_blocks = m_pad // block_m
  num_steps = batch * m_blocks
  splits, steps_per_split = _splits(c_pad // block_c * num_taps, num_steps)

  dw = pl.pallas_call(
      functools.partial(_depthwise_weight_grad_kernel, block_m=block_m, m_blocks=m_blocks,
                        num_steps=num_steps, steps_per_split=steps_per_split),
      grid=(c_pad // block_c, num_taps, splits),
      in_specs=[
          pl.BlockSpec((None, 2), lambda j, t, s: (t, 0)),
          pl.BlockSpec((xs.shape[0], batch, xs.shape[2], block_c), lambda j, t, s: (0, 0, 0, j)),
          pl.BlockSpec((batch, m_pad, block_c), lambda j, t, s: (0, 0, j)),
      ],
      out_specs=pl.BlockSpec((None, None, block_c), lambda j, t, s: (s, t, j)),
      out_shape=jax.ShapeDtypeStruct((splits, num_taps, c_pad), jnp.float32),
      compiler_params=_compiler_params(block_sizes),
      interpret=interpret,
      name="conv_depthwise_weight_grad",
  )(jnp.asarray(taps, jnp.int32), xs, dz)
  return jnp.sum(dw, axis=0)[:, :c]
