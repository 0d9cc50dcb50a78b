"""Shared pieces of the convolution tests: random canonical problems, float64 references."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels

from kernels.conv import canonical
from kernels.conv.api import normalize_padding, pair
from kernels.conv.reference import conv2d_reference

# Max abs error allowed against the float64 reference, relative to the output's scale
# (the max abs of the float64 result), per input dtype.
TOLERANCE = {
    jnp.float32: 1e-5,
    jnp.bfloat16: 2e-2,
    jnp.float16: 3e-3,
}


def make_canonical(seed: int, *, phases: int = 1, batch: int = 2, groups: int = 1,
                   m: int = 37, ci: int = 5, co: int = 6, kernel_taps: int = 3,
                   depthwise: bool = False, bias: bool = True, residual: bool = True,
                   dtype=jnp.float32):
  """A random canonical problem (see `kernels.conv.canonical`), never zeros.

  Returns a dict with `xs`, `w`, `bias`, `residual`, `dz` (a random cotangent for
  `weight_grad`), `taps` and `m`. Taps draw random phases and shifts (shift 0 included);
  `L = m + max shift + 3`, so reads past `m + shift` exist but must not matter.
  """
  rng = np.random.default_rng(seed)
  shifts = [0] + list(rng.integers(0, 2 * m, kernel_taps - 1))
  taps = tuple((int(rng.integers(0, phases)), int(s)) for s in shifts)
  length = m + max(shifts) + 3

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)

  if depthwise:
    xs, w = normal(phases, batch, length, ci), normal(kernel_taps, ci)
    b_shape, out_shape = (ci,), (batch, m, ci)
  else:
    xs, w = normal(phases, batch, groups, length, ci), normal(kernel_taps, groups, ci, co)
    b_shape, out_shape = (groups, co), (batch, groups, m, co)
  return dict(
      xs=xs, w=w,
      bias=jnp.asarray(rng.standard_normal(b_shape, np.float32)) if bias else None,
      residual=normal(*out_shape) if residual else None,
      dz=normal(*out_shape), taps=taps, m=m)


def _as64(x):
  return None if x is None else jnp.asarray(np.asarray(x, np.float64))


def reference64_forward(problem: dict, activation=None, depthwise: bool = False,
                        save_preactivation: bool = False):
  """The canonical forward in float64 (x64 scoped): numpy `y`, or `(y, z)`."""
  fn = canonical.depthwise_forward if depthwise else canonical.forward
  with jax.enable_x64(True):
    out = fn(_as64(problem["xs"]), _as64(problem["w"]), _as64(problem["bias"]),
             _as64(problem["residual"]), taps=problem["taps"], m=problem["m"],
             activation=activation, save_preactivation=save_preactivation)
    return jax.tree.map(np.asarray, out)


def reference64_weight_grad(problem: dict, depthwise: bool = False):
  """The canonical weight gradient in float64 (x64 scoped), numpy."""
  fn = canonical.depthwise_weight_grad if depthwise else canonical.weight_grad
  with jax.enable_x64(True):
    return np.asarray(fn(_as64(problem["xs"]), _as64(problem["dz"]), taps=problem["taps"]))


def assert_close(actual, expected64, dtype, what: str = "output"):
  """`actual` within TOLERANCE[dtype] * max|expected| of the float64 `expected64`."""
  actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
  assert actual.shape == expected64.shape, (what, actual.shape, expected64.shape)
  scale = max(1.0, float(np.max(np.abs(expected64))))
  error = float(np.max(np.abs(actual - expected64))) / scale
  assert error <= TOLERANCE[dtype], f"{what}: relative max error {error:.3g} > {TOLERANCE[dtype]}"


def make_conv(seed: int, x_shape, w_shape, *, dtype=jnp.float32, bias=True, residual=True,
              **options):
  """Random `x`, `w`, `b`, `residual` and an output cotangent for one conv2d (never zeros).

  `options` are conv2d's (stride, padding, dilation, groups); the residual and cotangent get
  the output's shape. Weights are scaled by 1/sqrt(fan_in) so outputs stay O(1).
  """
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(x_shape, np.float32), dtype)
  fan_in = w_shape[0] * w_shape[1] * w_shape[2]
  w = jnp.asarray(rng.standard_normal(w_shape, np.float32) / np.sqrt(fan_in), dtype)
  b = jnp.asarray(rng.standard_normal(w_shape[3], np.float32), dtype) if bias else None
  out_shape = jax.eval_shape(lambda x, w: conv64_options_apply(x, w, options), x, w).shape
  r = jnp.asarray(rng.standard_normal(out_shape, np.float32), dtype) if residual else None
  cotangent = jnp.asarray(rng.standard_normal(out_shape, np.float32))
  return x, w, b, r, cotangent


def conv64_options_apply(x, w, options, b=None, residual=None, activation=None):
  """The reference with public-API options (ints, "SAME", ...) normalized as conv2d does."""
  options = dict(options)
  stride, dilation = pair("stride", options.pop("stride", 1)), pair(
      "dilation", options.pop("dilation", 1))
  padding = normalize_padding(options.pop("padding", "SAME"), x.shape[1:3], w.shape[:2],
                              stride, dilation)
  return conv2d_reference(x, w, b, stride=stride, padding=padding, dilation=dilation,
                          activation=activation, residual=residual, **options)


def reference64_conv(x, w, b, residual, cotangent, activation=None, **options):
  """The reference conv2d in float64 and d/d(x, w, b, residual) of `sum(out * cotangent)`.

  Returns numpy float64 `(out, (dx, dw, db, dresidual))`; None grads for None inputs.
  """
  with jax.enable_x64(True):
    args = tuple(_as64(a) for a in (x, w, b, residual))
    ct = _as64(cotangent)

    def loss(x, w, b, r):
      out = conv64_options_apply(x, w, options, b, r, activation)
      return jnp.sum(out * ct), out

    grads, out = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(*args)
    return np.asarray(out), tuple(None if g is None else np.asarray(g) for g in grads)


def check_against_reference(impl, x_shape, w_shape, *, dtype=jnp.float32,
                            activation=None, bias=True, residual=True, seed=0,
                            block_sizes=None, **options):
  """conv2d(impl=...) forward and grads (x, w, b, residual) vs the float64 reference."""
  x, w, b, r, ct = make_conv(seed, x_shape, w_shape, dtype=dtype, bias=bias,
                                   residual=residual, **options)
  expected, expected_grads = reference64_conv(x, w, b, r, ct, activation, **options)

  def loss(x, w, b, r):
    out = kernels.conv2d(x, w, b, activation=activation, residual=r, impl=impl,
                         block_sizes=block_sizes, **options)
    return jnp.sum(out.astype(jnp.float32) * ct), out

  grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(x, w, b, r)
  assert out.dtype == dtype
  assert_close(out, expected, dtype, "out")
  for name, got, want in zip(("dx", "dw", "db", "dresidual"), grads, expected_grads):
    if want is None:
      assert got is None, name
    else:
      assert got.dtype == dtype, name
      assert_close(got, want, dtype, name)


@pytest.fixture
def conv_cases():
  """The helpers above, as a fixture: `cases.make_canonical(...)`, `cases.assert_close`..."""
  return types.SimpleNamespace(make_canonical=make_canonical, make_conv=make_conv,
                               reference64_conv=reference64_conv,
                               check_against_reference=check_against_reference,
                               reference64_forward=reference64_forward,
                               reference64_weight_grad=reference64_weight_grad,
                               assert_close=assert_close, TOLERANCE=TOLERANCE)
