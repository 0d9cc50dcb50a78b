"""The Mosaic TPU convolution kernels against the float64 reference, in TPU interpret mode.

Every case calls `kernels.conv.tpu` with `interpret=True` (Pallas' TPU interpreter on the
CPU), whose out-of-bounds reads raise and whose fresh buffers hold NaNs, so a read past the
padded input or an accumulator left uninitialised fails loudly. Interpret mode compiles
slowly (about a second per call), so the problems are tiny; `SMALL` blocks still give
several row and channel blocks, and `m = 37` is a multiple of no block size.
"""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import pytest

from kernels.conv import canonical, tpu
from kernels.conv.block_sizes import BlockSizes

SMALL = BlockSizes(block_m=16, block_n=8, block_k=8)


def _forward(problem, activation, save_preactivation, *, depthwise=False,
             block_sizes=SMALL, interpret=True):
  fn = tpu.depthwise_forward if depthwise else tpu.forward
  return fn(problem["xs"], problem["w"], problem["bias"], problem["residual"],
            taps=problem["taps"], m=problem["m"], activation=activation,
            save_preactivation=save_preactivation, block_sizes=block_sizes,
            interpret=interpret)


def _weight_grad(problem, *, depthwise=False, block_sizes=SMALL, interpret=True):
  fn = tpu.depthwise_weight_grad if depthwise else tpu.weight_grad
  return fn(problem["xs"], problem["dz"], taps=problem["taps"], block_sizes=block_sizes,
            interpret=interpret)


def _check_forward(cases, problem, activation, dtype, *, depthwise=False, block_sizes=SMALL):
  """`(y, z)` with `save_preactivation` against the float64 reference."""
  y, z = _forward(problem, activation, True, depthwise=depthwise, block_sizes=block_sizes)
  want_y, want_z = cases.reference64_forward(problem, activation, depthwise,
                                             save_preactivation=True)
  assert y.dtype == dtype and z.dtype == dtype
  cases.assert_close(y, want_y, dtype, "y")
  cases.assert_close(z, want_z, dtype, "z")


def _check_weight_grad(cases, problem, dtype, *, depthwise=False, block_sizes=SMALL):
  dw = _weight_grad(problem, depthwise=depthwise, block_sizes=block_sizes)
  assert dw.dtype == jnp.float32
  cases.assert_close(dw, cases.reference64_weight_grad(problem, depthwise), dtype, "dw")


@pytest.mark.parametrize("activation", canonical.ACTIVATIONS)
def test_forward_activations(conv_cases, activation):
  # 9 taps: two share a shift residue mod 8 (summed before one rotation); 4 phases, 2 groups,
  # Co = 20 over three channel blocks of 8 (the last one padded).
  problem = conv_cases.make_canonical(0, phases=4, groups=2, co=20, kernel_taps=9)
  _check_forward(conv_cases, problem, activation, jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_forward_low_precision(conv_cases, dtype):
  problem = conv_cases.make_canonical(1, phases=4, groups=3, co=12, kernel_taps=4,
                                      dtype=dtype)
  _check_forward(conv_cases, problem, "silu", dtype)


@pytest.mark.parametrize("bias,residual", [(False, False), (True, False), (False, True)])
def test_forward_optional_operands(conv_cases, bias, residual):
  problem = conv_cases.make_canonical(2, bias=bias, residual=residual)
  y = _forward(problem, "relu", False)
  assert isinstance(y, jax.Array), "no pre-activation unless asked"
  conv_cases.assert_close(y, conv_cases.reference64_forward(problem, "relu"), jnp.float32)


@pytest.mark.parametrize("block_sizes", [SMALL, None], ids=["small", "default"])
def test_forward_block_multiples(conv_cases, block_sizes):
  # m and Co exact multiples of SMALL's blocks; with the defaults, one block each.
  problem = conv_cases.make_canonical(3, phases=4, m=32, co=16)
  _check_forward(conv_cases, problem, "gelu", jnp.float32, block_sizes=block_sizes)


@pytest.mark.parametrize("dtype,phases,groups,m,co", [
    (jnp.float32, 4, 2, 37, 20),
    (jnp.float32, 1, 1, 32, 16),  # block multiples
    (jnp.bfloat16, 4, 2, 37, 20),
    (jnp.float16, 1, 3, 21, 6),
])
def test_weight_grad(conv_cases, dtype, phases, groups, m, co):
  problem = conv_cases.make_canonical(4, phases=phases, groups=groups, m=m, co=co,
                                      kernel_taps=9, dtype=dtype)
  _check_weight_grad(conv_cases, problem, dtype)


@pytest.mark.parametrize("dtype,activation", [
    (jnp.float32, "gelu"), (jnp.bfloat16, "relu"), (jnp.float16, "silu")])
def test_depthwise_forward(conv_cases, dtype, activation):
  # C = 20 channels over three lane blocks of 8.
  problem = conv_cases.make_canonical(5, phases=4, ci=20, kernel_taps=9, depthwise=True,
                                      dtype=dtype)
  _check_forward(conv_cases, problem, activation, dtype, depthwise=True)


def test_depthwise_forward_plain(conv_cases):
  problem = conv_cases.make_canonical(6, ci=7, bias=False, residual=False, depthwise=True)
  y = _forward(problem, None, False, depthwise=True)
  assert isinstance(y, jax.Array)
  conv_cases.assert_close(y, conv_cases.reference64_forward(problem, None, True), jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_depthwise_weight_grad(conv_cases, dtype):
  problem = conv_cases.make_canonical(7, phases=4, ci=20, kernel_taps=9, depthwise=True,
                                      dtype=dtype)
  _check_weight_grad(conv_cases, problem, dtype, depthwise=True)


def test_rejects_bad_taps(conv_cases):
  problem = conv_cases.make_canonical(8, phases=1)
  problem["taps"] = ((1, 0),)  # phase 1 of 1
  with pytest.raises(ValueError, match="phase"):
    _forward(problem, None, False)


@hypothesis.settings(max_examples=4, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(m=st.integers(1, 40), ci=st.integers(1, 9), co=st.integers(1, 20),
                  phases=st.sampled_from([1, 4]), groups=st.sampled_from([1, 2]),
                  kernel_taps=st.integers(1, 5), block_m=st.sampled_from([8, 16, 32]),
                  block_n=st.sampled_from([8, 16]), depthwise=st.booleans(),
                  activation=st.sampled_from(canonical.ACTIVATIONS),
                  dtype=st.sampled_from([jnp.float32, jnp.bfloat16]), seed=st.integers(0, 99))
def test_random_problems(conv_cases, m, ci, co, phases, groups, kernel_taps, block_m,
                         block_n, depthwise, activation, dtype, seed):
  problem = conv_cases.make_canonical(seed, phases=phases, groups=groups, m=m, ci=ci, co=co,
                                      kernel_taps=kernel_taps, depthwise=depthwise,
                                      dtype=dtype)
  blocks = BlockSizes(block_m=block_m, block_n=block_n, block_k=8)
  _check_forward(conv_cases, problem, activation, dtype, depthwise=depthwise,
                 block_sizes=blocks)
  _check_weight_grad(conv_cases, problem, dtype, depthwise=depthwise, block_sizes=blocks)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_for_tpu(conv_cases, as_if_on_tpu, dtype):
  """All four kernels pass Mosaic's lowering rules (block shapes, ops) with no TPU.

  The Python half of Mosaic lowering runs anywhere once the device kind reads as a TPU;
  the device-side Mosaic compiler still needs the hardware. The blocks are the TPU defaults:
  several row blocks, `Co = C = 200` over two lane blocks, `Ci = 5` a whole-axis block.
  """

  dense = conv_cases.make_canonical(9, phases=4, groups=2, m=600, ci=5, co=200,
                                    kernel_taps=9, dtype=dtype)
  depthwise = conv_cases.make_canonical(10, phases=4, m=600, ci=200, kernel_taps=9,
                                        depthwise=True, dtype=dtype)

  def run(dense_arrays, depthwise_arrays):
    outs = []
    for arrays, problem, is_depthwise in ((dense_arrays, dense, False),
                                          (depthwise_arrays, depthwise, True)):
      problem = dict(problem, **arrays)
      outs.append(_forward(problem, "gelu", True, depthwise=is_depthwise, block_sizes=None,
                           interpret=False))
      outs.append(_weight_grad(problem, depthwise=is_depthwise, block_sizes=None,
                               interpret=False))
    return outs

  def arrays(problem):
    return {k: v for k, v in problem.items() if k not in ("taps", "m")}

  lowered = jax.jit(run).trace(arrays(dense), arrays(depthwise)).lower(
      lowering_platforms=("tpu",))
  assert lowered.as_text().count("tpu_custom_call") == 4
