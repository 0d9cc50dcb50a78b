"""Convolutions in 64-bit mode (`jax_enable_x64`, as scientific code often sets it).

Every implementation of `conv2d` and `causal_conv1d` runs with the flag on, keeps float32
in float32 out, and matches the float64 reference, forward and gradients; the kernels keep
their index arithmetic in int32 (program ids are int32: an int64 loop counter or Python int
meeting them was the bug) and still lower for their hardware. Interpret mode is slow, so
the shapes are tiny.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.conv import IMPLS, BlockSizes, gpu, tpu
from kernels.conv.reference import causal_conv1d_reference

DISTINCT = ("xla", "xla_implicit_gemm", "pallas_gpu", "pallas_tpu")  # "auto", "pallas" pick one
SMALL = BlockSizes(block_m=16, block_n=16, block_k=16)
CONV2D = {  # name -> (x_shape, w_shape, options, activation)
    "dense": ((2, 7, 9, 5), (3, 3, 5, 6), dict(stride=2, padding="SAME"), "gelu"),
    "depthwise": ((1, 6, 7, 4), (3, 3, 1, 4), dict(groups=4), "relu"),
}


def _blocks(impl):
  return SMALL if impl.startswith("pallas") else None


@pytest.mark.parametrize("impl,case", [(impl, "dense") for impl in DISTINCT] + [
    ("pallas_gpu", "depthwise")])
def test_conv2d_matches_the_float64_reference(conv_cases, x64, impl, case):
  """Forward and d/d(x, w, b, residual), each float32 (`check_against_reference` asserts).

  The depthwise kernels (which `causal_conv1d` also runs) get the GPU kernel, whose loops
  were the bug; the traced and lowering tests below cover every path.
  """
  assert jnp.asarray(1.0).dtype == jnp.float64  # the flag is on
  x_shape, w_shape, options, activation = CONV2D[case]
  conv_cases.check_against_reference(impl, x_shape, w_shape, activation=activation,
                                     block_sizes=_blocks(impl), seed=1, **options)


def _conv1d_problem():
  rng = np.random.default_rng(5)
  x, ct = (jnp.asarray(rng.standard_normal((2, 19, 5), np.float32)) for _ in range(2))
  w = jnp.asarray(rng.standard_normal((4, 5), np.float32))
  b = jnp.asarray(rng.standard_normal(5, np.float32))
  return (x, w, b), ct


def _conv1d_loss(impl, ct):
  def loss(x, w, b):
    out = kernels.causal_conv1d(x, w, b, activation="silu", impl=impl,
                                block_sizes=_blocks(impl))
    return jnp.sum(out.astype(ct.dtype) * ct), out

  return loss


@pytest.mark.parametrize("impl", ["pallas_gpu"])
def test_causal_conv1d_matches_the_float64_reference(conv_cases, x64, impl):
  args, ct = _conv1d_problem()
  grads, out = jax.jit(jax.grad(_conv1d_loss(impl, ct), argnums=(0, 1, 2), has_aux=True))(*args)
  args64 = [jnp.asarray(a, jnp.float64) for a in (*args, ct)]
  want_grads, want = jax.grad(
      lambda x, w, b: (jnp.sum(causal_conv1d_reference(x, w, b, activation="silu") * args64[3]),
                       causal_conv1d_reference(x, w, b, activation="silu")),
      argnums=(0, 1, 2), has_aux=True)(*args64[:3])
  assert out.dtype == jnp.float32
  conv_cases.assert_close(out, np.asarray(want), jnp.float32)
  for name, got, expected in zip(("dx", "dw", "db"), grads, want_grads):
    assert got.dtype == jnp.float32, name
    conv_cases.assert_close(got, np.asarray(expected), jnp.float32, name)


def _losses(conv_cases, impl, dtype):
  """(loss, args) pairs of each op through `impl`: dense and depthwise conv2d, conv1d."""
  pairs = []
  for x_shape, w_shape, options, activation in CONV2D.values():
    x, w, b, r, ct = conv_cases.make_conv(1, x_shape, w_shape, dtype=dtype, **options)

    def loss(x, w, b, r, ct=ct, options=options, activation=activation):
      out = kernels.conv2d(x, w, b, residual=r, activation=activation, impl=impl,
                           block_sizes=_blocks(impl), **options)
      return jnp.sum(out.astype(ct.dtype) * ct), out

    pairs.append((loss, (x, w, b, r)))
  args, ct = _conv1d_problem()
  pairs.append((_conv1d_loss(impl, ct), tuple(a.astype(dtype) for a in args)))
  return pairs


@pytest.mark.parametrize("impl", IMPLS)
def test_no_64_bit_values_in_kernels_or_float32_math(find_64_bit_values, conv_cases, x64,
                                                     impl):
  """Traced only: int32 indices in every kernel and index map, float32 math everywhere."""
  for loss, args in _losses(conv_cases, impl, jnp.float32):
    grad = jax.grad(loss, argnums=tuple(range(len(args))), has_aux=True)
    found, num_kernels = find_64_bit_values(grad, *args)
    assert found == [], found
    # Forward, input gradient and weight gradient each run a kernel on the Pallas paths.
    assert (num_kernels >= 3) == impl.startswith("pallas"), num_kernels


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_output_and_grad_dtypes_are_the_inputs(conv_cases, x64, dtype):
  """Abstract evaluation only: what comes out of each path has the inputs' dtype."""
  for impl in IMPLS:
    for loss, args in _losses(conv_cases, impl, dtype):
      grads, out = jax.eval_shape(jax.grad(loss, argnums=tuple(range(len(args))),
                                           has_aux=True), *args)
      dtypes = [x.dtype for x in (out, *grads)]
      assert dtypes == [jnp.dtype(dtype)] * len(dtypes), (impl, dtypes)


def _lower(module, platform, dense, depthwise):
  """Lowers the four canonical kernels of `module` (default blocks) for `platform`."""

  def run(dense_arrays, depthwise_arrays):
    outs = []
    for arrays, problem, is_depthwise in ((dense_arrays, dense, False),
                                          (depthwise_arrays, depthwise, True)):
      forward = module.depthwise_forward if is_depthwise else module.forward
      weight_grad = module.depthwise_weight_grad if is_depthwise else module.weight_grad
      outs.append(forward(arrays["xs"], arrays["w"], arrays["bias"], arrays["residual"],
                          taps=problem["taps"], m=problem["m"], activation="gelu",
                          save_preactivation=True, interpret=False))
      outs.append(weight_grad(arrays["xs"], arrays["dz"], taps=problem["taps"],
                              interpret=False))
    return outs

  def arrays(problem):
    return {k: v for k, v in problem.items() if k not in ("taps", "m")}

  return jax.jit(run).trace(arrays(dense), arrays(depthwise)).lower(
      lowering_platforms=(platform,)).as_text()


def test_lowers_for_cuda(conv_cases, as_if_on_gpu, x64):
  dense = conv_cases.make_canonical(10, phases=4, groups=2, batch=4, m=600, ci=40, co=70)
  depthwise = conv_cases.make_canonical(10, phases=4, batch=4, m=600, ci=40, depthwise=True)
  assert _lower(gpu, "cuda", dense, depthwise).count("__gpu$xla.gpu.triton") == 4


def test_lowers_for_tpu(conv_cases, as_if_on_tpu, x64):
  dense = conv_cases.make_canonical(9, phases=4, groups=2, m=600, ci=5, co=200, kernel_taps=9)
  depthwise = conv_cases.make_canonical(10, phases=4, m=600, ci=200, kernel_taps=9,
                                        depthwise=True)
  assert _lower(tpu, "tpu", dense, depthwise).count("tpu_custom_call") == 4
