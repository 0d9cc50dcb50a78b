"""The canonical problem every convolution kernel solves, and its plain XLA form.

A convolution `y = act(conv(x, w) + b + residual)` with any stride, padding, dilation and
groups is brought (by `kernels.conv.layout`) to a stride-1, "flat-shift" implicit GEMM:

- the zero-padded input is split into `S = stride_h * stride_w` phases (phase `(p, q)` holds
  the padded pixels `[p::stride_h, q::stride_w]`), each flattened row-major to length `L`;
- a tap `(i, j)` of the kernel reads one phase at one constant flat offset ("shift"), so the
  output, computed on a "wide" grid of `m` rows (output rows times the phase width; the
  extra columns are garbage the caller drops), is a sum of `T = kh * kw` shifted GEMMs:

      y[n, g, r, :] = act(sum_t xs[phase_t, n, g, r + shift_t, :] @ w[t, g]
                          + bias[g] + residual[n, g, r])

  accumulated in float32. No im2col matrix is ever built: a kernel reads `xs` in place.

Array layouts (`G` groups, `Ci`/`Co` input/output channels per group; nothing is padded
to block sizes: a kernel pads what it needs, and XLA fuses that into the layout copy):

- `xs`: `[S, N, G, L, Ci]`, the input dtype; `L >= m + max(shift)`, so that every read
  `r + shift_t` with `r < m` is in bounds.
- `w`: `[T, G, Ci, Co]`, the input dtype.
- `bias`: float32 `[G, Co]` or None.
- `residual`: `[N, G, m, Co]`, the input dtype, or None.
- `taps`: a static tuple of `T` `(phase, shift)` int pairs.
- output `y`: `[N, G, m, Co]`, the input dtype.

Depthwise convolutions (one input channel per group) use the elementwise variant, channels
on the last axis: `xs [S, N, L, C]`, `w [T, C]`, `bias [C]`, `residual [N, m, C]`, output
`[N, m, C]`.

Each backend (`xla` here, `gpu.py`, `tpu.py`) provides the same four functions with these
signatures; `kernels.conv.fused` ties them into a `jax.custom_vjp`:

    forward(xs, w, bias, residual, *, taps, m, activation, save_preactivation,
            block_sizes, interpret) -> y, or (y, z) when save_preactivation
    weight_grad(xs, dz, *, taps, block_sizes, interpret) -> dw float32 [T, G, Ci, Co]
    depthwise_forward(...)         same arguments, depthwise layouts
    depthwise_weight_grad(...)     -> dw float32 [T, C]

`z` is the pre-activation (`y` before `act`) in the input dtype; the backward needs it for
`gelu` and `silu` only. `weight_grad` computes
`dw[t, g] = sum_{n, r < m} xs[phase_t, n, g, r + shift_t, :]^T @ dz[n, g, r, :]` with `dz`
`[N, G, m, Co]` in the input dtype (the caller zeroes its garbage columns).
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "activate", "activation_grad", "forward", "weight_grad",
           "depthwise_forward", "depthwise_weight_grad"]

ACTIVATIONS = (None, "relu", "gelu", "silu")

_SQRT_2_OVER_PI = 0.7978845608028654


def activate(z: jax.Array, activation: str | None) -> jax.Array:
  """`activation(z)` elementwise, in `z`'s dtype; usable inside Pallas kernels.

  `gelu` is the tanh approximation (as `jax.nn.gelu`'s default); `silu` is `z * sigmoid(z)`.
  """
  if activation is None:
    return z
  if activation == "relu":
    return jnp.maximum(z, 0)
  if activation == "gelu":
    return 0.5 * z * (1 + jnp.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)))
  if activation == "silu":
    return z / (1 + jnp.exp(-z))
  raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def activation_grad(dy: jax.Array, y: jax.Array, z: jax.Array | None,
                    activation: str | None) -> jax.Array:
  """The cotangent of the pre-activation, `dy * act'(z)`, in float32.

  Args:
    dy: cotangent of the output, any float dtype.
    y: the output `act(z)`; enough for `relu` (`y > 0` iff `z > 0`) and None.
    z: the pre-activation; needed for `gelu` and `silu`, else ignored (may be None).
    activation: one of `ACTIVATIONS`.
  """
  dy = dy.astype(jnp.float32)
  if activation is None:
    return dy
  if activation == "relu":
    return jnp.where(y > 0, dy, 0.0)
  z = z.astype(jnp.float32)
  if activation == "gelu":
    inner = _SQRT_2_OVER_PI * (z + 0.044715 * z ** 3)
    t = jnp.tanh(inner)
    d_inner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)
    return dy * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * d_inner)
  if activation == "silu":
    s = jax.nn.sigmoid(z)
    return dy * (s * (1 + z * (1 - s)))
  raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def _shifted(xs, phase: int, shift: int, m: int, axis: int) -> jax.Array:
  """`xs[phase]` sliced to rows `[shift, shift + m)` along `axis` (of `xs[phase]`)."""
  return lax.slice_in_dim(xs[phase], shift, shift + m, axis=axis)


def _epilogue(acc, bias, residual, activation, dtype, save_preactivation):
  if bias is not None:
    acc = acc + bias.astype(jnp.float32)
  if residual is not None:
    acc = acc + residual.astype(jnp.float32)
  y = activate(acc, activation).astype(dtype)
  if save_preactivation:
    return y, acc.astype(dtype)
  return y


def forward(xs, w, bias, residual, *, taps, m, activation, save_preactivation=False,
            block_sizes=None, interpret=False):
  """The canonical forward in plain XLA (see the module docstring for layouts)."""
  del block_sizes, interpret
  acc = None
  for t, (phase, shift) in enumerate(taps):
    x_t = _shifted(xs, phase, shift, m, axis=2)  # [N, G, m, Ci]
    term = jnp.einsum("ngrc,gcd->ngrd", x_t, w[t], preferred_element_type=jnp.float32)
    acc = term if acc is None else acc + term  # [N, G, m, Co] float32
  return _epilogue(acc, None if bias is None else bias[None, :, None, :], residual,
                   activation, xs.dtype, save_preactivation)


def weight_grad(xs, dz, *, taps, block_sizes=None, interpret=False):
  """The canonical weight gradient in plain XLA: float32 `[T, G, Ci, Co]`."""
  del block_sizes, interpret
  m = dz.shape[2]
  return jnp.stack([
      jnp.einsum("ngrc,ngrd->gcd", _shifted(xs, phase, shift, m, axis=2), dz,
                 preferred_element_type=jnp.float32)
      for phase, shift in taps])


def depthwise_forward(xs, w, bias, residual, *, taps, m, activation,
                      save_preactivation=False, block_sizes=None, interpret=False):
  """The canonical depthwise forward in plain XLA: `[N, m, C]`."""
  del block_sizes, interpret
  acc = None
  for t, (phase, shift) in enumerate(taps):
    term = _shifted(xs, phase, shift, m, axis=1).astype(jnp.float32) * w[t].astype(
        jnp.float32)
    acc = term if acc is None else acc + term  # [N, m, C] float32
  return _epilogue(acc, bias, residual, activation, xs.dtype, save_preactivation)


def depthwise_weight_grad(xs, dz, *, taps, block_sizes=None, interpret=False):
  """The canonical depthwise weight gradient in plain XLA: float32 `[T, C]`."""
  del block_sizes, interpret
  m = dz.shape[1]
  dz = dz.astype(jnp.float32)
  return jnp.stack([
      jnp.sum(_shifted(xs, phase, shift, m, axis=1).astype(jnp.float32) * dz, axis=(0, 1))
      for phase, shift in taps])
