"""The reference against direct loops, and the `xla_implicit_gemm` path against the reference.

`xla_implicit_gemm` runs the whole fused machinery (phase layout, custom_vjp, transposed-conv input
gradient, implicit-GEMM weight gradient) with the canonical ops written in XLA, so these
tests check everything but the Pallas kernels themselves.
"""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.conv.reference import causal_conv1d_reference, conv2d_reference

ACTIVATIONS = (None, "relu", "gelu", "silu")


def _direct_conv(x, w, b, stride, padding, dilation, groups):
  """Convolution by its definition, in numpy float64 loops."""
  (sh, sw), (dh, dw), ((pt, pb), (pl, pr)) = stride, dilation, padding
  x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, hp, wp, cin = x.shape
  kh, kw, ci, cout = w.shape
  co = cout // groups
  out_h, out_w = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
  out = np.zeros((n, out_h, out_w, cout))
  for oh in range(out_h):
    for ow in range(out_w):
      for i in range(kh):
        for j in range(kw):
          pixel = x[:, oh * sh + i * dh, ow * sw + j * dw]  # [N, Cin]
          for g in range(groups):
            out[:, oh, ow, g * co:(g + 1) * co] += (
                pixel[:, g * ci:(g + 1) * ci] @ w[i, j, :, g * co:(g + 1) * co])
  return out + b


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    ((1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 1), ((0, 2), (3, 0)), (1, 2), 2),
    ((2, 2), ((1, 0), (0, 1)), (2, 1), 4),
])
def test_reference_matches_direct_loops(stride, padding, dilation, groups):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 8, 4))
  w = rng.standard_normal((3, 2, 4 // groups, 8))
  b = rng.standard_normal(8)
  with jax.enable_x64(True):
    out = conv2d_reference(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), stride=stride,
                           padding=padding, dilation=dilation, groups=groups)
  np.testing.assert_allclose(np.asarray(out), _direct_conv(x, w, b, stride, padding, dilation,
                                                           groups), atol=1e-12)


def test_causal_reference_matches_direct_loops():
  rng = np.random.default_rng(1)
  x, w, b = rng.standard_normal((2, 9, 3)), rng.standard_normal((4, 3)), rng.standard_normal(3)
  expected = np.zeros_like(x)
  for t in range(9):
    for k in range(4):
      if t - 3 + k >= 0:
        expected[:, t] += x[:, t - 3 + k] * w[k]
  with jax.enable_x64(True):
    out = causal_conv1d_reference(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
  np.testing.assert_allclose(np.asarray(out), expected + b, atol=1e-12)


GEOMETRIES = [  # (x_shape, w_shape, options)
    ((2, 9, 11, 4), (3, 3, 4, 6), dict(stride=1, padding="SAME")),
    ((2, 9, 11, 4), (3, 3, 4, 6), dict(stride=2, padding="SAME")),
    ((1, 10, 10, 3), (7, 7, 3, 5), dict(stride=2, padding=3)),
    ((2, 8, 9, 4), (1, 7, 4, 6), dict(stride=(2, 1), padding="VALID")),
    ((2, 8, 9, 4), (1, 1, 4, 8), dict(stride=2, padding="VALID")),
    ((2, 9, 11, 4), (3, 2, 2, 6), dict(stride=2, padding=((2, 0), (1, 3)), dilation=2,
                                       groups=2)),
    ((2, 9, 11, 4), (3, 3, 1, 8), dict(stride=2, padding="SAME", groups=4)),  # depthwise x2
    ((2, 9, 11, 4), (5, 5, 1, 4), dict(padding="SAME", groups=4)),  # depthwise
    ((2, 9, 11, 1), (3, 3, 1, 5), dict(padding=1)),  # one input channel
    ((1, 6, 7, 2), (3, 3, 2, 3), dict(padding=((5, 4), (0, 6)))),  # padding > kernel
]


@pytest.mark.parametrize("x_shape,w_shape,options", GEOMETRIES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gemm_geometries(conv_cases, x_shape, w_shape, options, activation):
  conv_cases.check_against_reference("xla_implicit_gemm", x_shape, w_shape, activation=activation,
                          **options)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("geometry", [0, 1, 6])
def test_gemm_low_precision(conv_cases, dtype, geometry):
  x_shape, w_shape, options = GEOMETRIES[geometry]
  conv_cases.check_against_reference("xla_implicit_gemm", x_shape, w_shape, dtype=dtype,
                          activation="gelu", **options)


@pytest.mark.parametrize("bias,residual", [(False, False), (True, False), (False, True)])
def test_gemm_optional_inputs(conv_cases, bias, residual):
  conv_cases.check_against_reference("xla_implicit_gemm", (2, 7, 7, 3), (3, 3, 3, 4), bias=bias,
                          residual=residual, activation="relu", stride=2)


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(size=st.integers(1, 9), kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
                  stride=st.integers(1, 3), dilation=st.integers(1, 2),
                  padding=st.sampled_from(["SAME", "VALID", 0, 2, ((1, 0), (0, 2))]),
                  groups=st.sampled_from([1, 2, 3]), depthwise=st.booleans(),
                  activation=st.sampled_from(ACTIVATIONS), seed=st.integers(0, 99))
def test_gemm_random_options(conv_cases, size, kernel, stride, dilation, padding, groups,
                             depthwise, activation, seed):
  cin = groups if depthwise else 2 * groups
  extent = [dilation * (k - 1) + 1 for k in kernel]
  hypothesis.assume(padding != "VALID" or min(size - e for e in extent) >= 0)
  if isinstance(padding, int):
    hypothesis.assume(min(size + 2 * padding - e for e in extent) >= 0)
  if isinstance(padding, tuple):
    hypothesis.assume(size + 1 >= extent[0] and size + 2 >= extent[1])
  w_shape = (*kernel, cin // groups, groups * (1 if depthwise else 2))
  conv_cases.check_against_reference("xla_implicit_gemm", (2, size, size + 1, cin), w_shape,
                          activation=activation, seed=seed, stride=stride, padding=padding,
                          dilation=dilation, groups=groups)


@pytest.mark.parametrize("impl", ["xla", "xla_implicit_gemm", "auto"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_causal_conv1d(conv_cases, impl, activation):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 13, 6), np.float32))
  w = jnp.asarray(rng.standard_normal((4, 6), np.float32))
  b = jnp.asarray(rng.standard_normal(6, np.float32))
  ct = jnp.asarray(rng.standard_normal((2, 13, 6), np.float32))
  with jax.enable_x64(True):
    args64 = [jnp.asarray(np.asarray(a, np.float64)) for a in (x, w, b)]
    loss64 = lambda x, w, b: jnp.sum(causal_conv1d_reference(x, w, b, activation=activation)
                                     * jnp.asarray(np.asarray(ct, np.float64)))
    expected = np.asarray(causal_conv1d_reference(*args64, activation=activation))
    expected_grads = [np.asarray(g) for g in jax.grad(loss64, argnums=(0, 1, 2))(*args64)]
  loss = lambda x, w, b: jnp.sum(kernels.causal_conv1d(x, w, b, activation=activation,
                                                       impl=impl) * ct)
  conv_cases.assert_close(kernels.causal_conv1d(x, w, b, activation=activation, impl=impl),
                          expected, jnp.float32)
  for got, want in zip(jax.grad(loss, argnums=(0, 1, 2))(x, w, b), expected_grads):
    conv_cases.assert_close(got, want, jnp.float32, "grad")


def test_causal_conv1d_sees_no_future():
  x = jax.random.normal(jax.random.key(0), (1, 10, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3))
  changed = x.at[:, 6:].set(5.0)
  for impl in ("xla", "xla_implicit_gemm"):
    a, b = (kernels.causal_conv1d(v, w, impl=impl) for v in (x, changed))
    np.testing.assert_array_equal(np.asarray(a[:, :6]), np.asarray(b[:, :6]))
    assert not np.allclose(np.asarray(a[:, 6:]), np.asarray(b[:, 6:]))
