"""The Pallas GPU (Triton) convolution kernels, in interpret mode, against float64 references.

Interpret mode is slow to compile, so the shapes are tiny; `SMALL` blocks of 16 still give
several blocks along every axis, and the default shape's m, Ci and Co are not multiples.
"""

from __future__ import annotations

import doctest

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import pytest

from kernels.conv import canonical, gpu
from kernels.conv.block_sizes import BlockSizes

SMALL = BlockSizes(16, 16, 16)
# Four phases, two groups, three examples (so the weight gradients split their reduction),
# m = 37 (3 row blocks), Ci = 20 and Co = 18 (2 blocks each).
SHAPE = dict(phases=4, groups=2, batch=3, m=37, ci=20, co=18)
LOW_PRECISION = [jnp.bfloat16, jnp.float16]


def _forward(problem, depthwise=False, block_sizes=SMALL, **options):
  fn = gpu.depthwise_forward if depthwise else gpu.forward
  return fn(problem["xs"], problem["w"], problem["bias"], problem["residual"],
            taps=problem["taps"], m=problem["m"], block_sizes=block_sizes, interpret=True,
            **options)


def _weight_grad(problem, depthwise=False, block_sizes=SMALL):
  fn = gpu.depthwise_weight_grad if depthwise else gpu.weight_grad
  return fn(problem["xs"], problem["dz"], taps=problem["taps"], block_sizes=block_sizes,
            interpret=True)


def _check_forward(cases, problem, activation, dtype, depthwise=False, **options):
  """y and z (the pre-activation) of the kernel against the float64 reference."""
  y, z = _forward(problem, depthwise, activation=activation, save_preactivation=True,
                  **options)
  want_y, want_z = cases.reference64_forward(problem, activation, depthwise,
                                             save_preactivation=True)
  assert y.dtype == z.dtype == dtype
  cases.assert_close(y, want_y, dtype, "y")
  cases.assert_close(z, want_z, dtype, "z")


def _check_weight_grad(cases, problem, dtype, depthwise=False, **options):
  dw = _weight_grad(problem, depthwise, **options)
  assert dw.dtype == jnp.float32
  cases.assert_close(dw, cases.reference64_weight_grad(problem, depthwise), dtype, "dw")


@pytest.mark.parametrize("activation", canonical.ACTIVATIONS)
def test_forward_activations(conv_cases, activation):
  problem = conv_cases.make_canonical(0, **SHAPE)
  _check_forward(conv_cases, problem, activation, jnp.float32)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_forward_low_precision(conv_cases, dtype):
  problem = conv_cases.make_canonical(1, dtype=dtype, **SHAPE)
  _check_forward(conv_cases, problem, "gelu", dtype)


@pytest.mark.parametrize("bias,residual", [(False, False), (True, False), (False, True)])
def test_forward_without_bias_or_residual(conv_cases, bias, residual):
  """One phase, one group; y alone (no pre-activation output)."""
  problem = conv_cases.make_canonical(2, bias=bias, residual=residual, batch=2, m=21, ci=9,
                                      co=7)
  y = _forward(problem, activation="relu")
  conv_cases.assert_close(y, conv_cases.reference64_forward(problem, "relu"), jnp.float32)


def test_forward_block_multiples(conv_cases):
  """m, Ci and Co whole multiples of the blocks (2 of each): only L is padded."""
  problem = conv_cases.make_canonical(3, phases=4, groups=2, batch=1, m=32, ci=32, co=32,
                                      kernel_taps=4)
  _check_forward(conv_cases, problem, "silu", jnp.float32)


def test_forward_default_blocks_under_jit(conv_cases):
  """block_sizes=None (shrunk to the small dims) inside an outer jit, 9 taps."""
  problem = conv_cases.make_canonical(4, phases=1, kernel_taps=9)
  call = jax.jit(lambda xs, w, b, r: gpu.forward(
      xs, w, b, r, taps=problem["taps"], m=problem["m"], activation="gelu",
      save_preactivation=False, block_sizes=None, interpret=True))
  y = call(problem["xs"], problem["w"], problem["bias"], problem["residual"])
  conv_cases.assert_close(y, conv_cases.reference64_forward(problem, "gelu"), jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32] + LOW_PRECISION)
def test_weight_grad(conv_cases, dtype):
  problem = conv_cases.make_canonical(5, dtype=dtype, **SHAPE)
  _check_weight_grad(conv_cases, problem, dtype)


def test_weight_grad_block_multiples_one_split(conv_cases):
  """One example of two row blocks: too few steps to split; dims are whole blocks."""
  problem = conv_cases.make_canonical(6, phases=1, batch=1, m=32, ci=32, co=16)
  _check_weight_grad(conv_cases, problem, jnp.float32)


def test_weight_grad_default_blocks(conv_cases):
  problem = conv_cases.make_canonical(7, phases=4, groups=3, m=50, ci=3, co=40)
  _check_weight_grad(conv_cases, problem, jnp.float32, block_sizes=None)


@pytest.mark.parametrize("num_programs,num_steps", [(1, 1), (3, 9), (7, 100), (300, 64),
                                                    (2, 1000)])
def test_splits_cover_the_steps_without_empty_splits(num_programs, num_steps):
  splits, per_split = gpu._splits(num_programs, num_steps)
  assert splits >= 1 and (splits - 1) * per_split < num_steps <= splits * per_split
  assert splits == 1 or per_split >= gpu._MIN_STEPS_PER_SPLIT


@pytest.mark.parametrize("dtype,activation,bias,residual", [
    (jnp.float32, "silu", True, True),
    (jnp.bfloat16, "gelu", False, True),
    (jnp.float16, "relu", True, False),
    (jnp.float32, None, False, False),
])
def test_depthwise_forward(conv_cases, dtype, activation, bias, residual):
  problem = conv_cases.make_canonical(8, phases=4, batch=2, m=37, ci=20, depthwise=True,
                                      bias=bias, residual=residual, dtype=dtype)
  _check_forward(conv_cases, problem, activation, dtype, depthwise=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_depthwise_weight_grad(conv_cases, dtype):
  problem = conv_cases.make_canonical(9, phases=4, batch=3, m=37, ci=20, depthwise=True,
                                      dtype=dtype)
  _check_weight_grad(conv_cases, problem, dtype, depthwise=True)


@hypothesis.settings(max_examples=5, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(seed=st.integers(0, 2**16), phases=st.sampled_from([1, 4]),
                  groups=st.integers(1, 3), batch=st.integers(1, 3), m=st.integers(1, 40),
                  ci=st.integers(1, 24), co=st.integers(1, 24), kernel_taps=st.integers(1, 4),
                  activation=st.sampled_from(canonical.ACTIVATIONS), bias=st.booleans(),
                  residual=st.booleans(),
                  dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]))
def test_random_problems(conv_cases, seed, phases, groups, batch, m, ci, co, kernel_taps,
                         activation, bias, residual, dtype):
  """Forward (y and z) and weight gradient of random shapes and options."""
  problem = conv_cases.make_canonical(seed, phases=phases, groups=groups, batch=batch, m=m,
                                      ci=ci, co=co, kernel_taps=kernel_taps, bias=bias,
                                      residual=residual, dtype=dtype)
  _check_forward(conv_cases, problem, activation, dtype)
  _check_weight_grad(conv_cases, problem, dtype)


def test_lowers_to_triton_for_cuda(conv_cases, as_if_on_gpu):
  """All four kernels lower to Triton custom calls for a CUDA target, without a GPU.

  The target is an abstract H100 (`as_if_on_gpu`). Default blocks, shapes large enough
  for whole 128-row tiles and a split weight gradient.
  """
  dense = conv_cases.make_canonical(10, phases=4, groups=2, batch=4, m=600, ci=40, co=70,
                                    dtype=jnp.bfloat16)
  depthwise = conv_cases.make_canonical(10, phases=4, batch=4, m=600, ci=40, depthwise=True,
                                        dtype=jnp.bfloat16)

  def both(fwd, wgrad, problem):
    def call(xs, w, bias, residual, dz):
      y = fwd(xs, w, bias, residual, taps=problem["taps"], m=problem["m"],
              activation="gelu", save_preactivation=True)
      return y, wgrad(xs, dz, taps=problem["taps"])

    args = [problem[key] for key in ("xs", "w", "bias", "residual", "dz")]
    return jax.jit(call).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

  for text in (both(gpu.forward, gpu.weight_grad, dense),
               both(gpu.depthwise_forward, gpu.depthwise_weight_grad, depthwise)):
    assert text.count("__gpu$xla.gpu.triton") == 2  # forward and weight gradient


def test_docstring_example():
  assert doctest.testmod(gpu, raise_on_error=False).failed == 0
