"""One `jax.custom_vjp` over every blockwise backend of attention.

A backend is a module with `forward` and `backward` as `kernels.attention.spec` states them;
this module saves what the backward pass needs (the inputs, the output and the log-sum-exp),
folds the log-sum-exp's cotangent into `delta`, asks for the bias gradient only where the
bias is differentiated, and sums it down to the bias' broadcast shape.
"""

from __future__ import annotations

import functools
import importlib

import jax
from jax import custom_derivatives
import jax.numpy as jnp

from kernels.attention.spec import Masks, Spec

__all__ = ["BACKENDS", "blockwise_attention"]

# impl name -> the module that implements the contract of `kernels.attention.spec`.
BACKENDS = {"xla_chunked": "kernels.attention.chunked", "pallas_gpu": "kernels.attention.gpu",
            "pallas_tpu": "kernels.attention.tpu"}


def _ops(backend: str):
  return importlib.import_module(BACKENDS[backend])


def blockwise_attention(q, k, v, bias, masks: Masks, spec: Spec, backend: str):
  """Attention through `backend`'s kernels, differentiable in `q`, `k`, `v` and `bias`.

  Args:
    q: `[B, Tq, Hq, D]`; k, v: `[B, Tk, Hkv, D]`; one float dtype.
    bias: None or float `[B or 1, Hq or 1, Tq, Tk]`.
    masks: the `Masks`.
    spec: the static `Spec`.
    backend: a key of `BACKENDS`.

  Returns:
    `(out [B, Tq, Hq, D] in q.dtype, lse float32 [B, Hq, Tq])`: rows with nothing to
    attend, and rows past `q_lengths`, have `out = 0` and `lse = -inf`.
  """
  out, lse = _attend(q, k, v, bias, masks, spec, backend)
  if masks.q_lengths is not None:  # padding rows: zero, so their cotangents are zero too
    rows = jnp.arange(q.shape[1], dtype=jnp.int32)
    valid = rows[None, :] < masks.q_lengths[:, None]  # [B, Tq]
    out = jnp.where(valid[:, :, None, None], out, jnp.zeros((), out.dtype))
    lse = jnp.where(valid[:, None, :], lse, -jnp.inf)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attend(q, k, v, bias, masks, spec, backend):
  return _ops(backend).forward(q, k, v, bias, masks, spec)


def _value(x):
  return x.value if isinstance(x, custom_derivatives.CustomVJPPrimal) else x


def _attend_fwd(q, k, v, bias, masks, spec, backend):
  # symbolic_zeros=True: every array input arrives wrapped, saying whether it is
  # differentiated (a None bias arrives as None).
  bias_grad = bool(getattr(bias, "perturbed", False))
  q, k, v, bias, masks = jax.tree.map(
      _value, (q, k, v, bias, masks),
      is_leaf=lambda x: isinstance(x, custom_derivatives.CustomVJPPrimal))
  out, lse = _ops(backend).forward(q, k, v, bias, masks, spec)
  return (out, lse), (q, k, v, bias, masks, out, lse, bias_grad)


def _is_zero(x) -> bool:
  return isinstance(x, custom_derivatives.SymbolicZero)


def _attend_bwd(spec, backend, residuals, cotangents):
  q, k, v, bias, masks, out, lse, bias_grad = residuals
  d_out, d_lse = cotangents
  if _is_zero(d_out):
    d_out = jnp.zeros(out.shape, out.dtype)
  # delta_i = rowsum(dO_i * O_i) (FlashAttention-2, Algorithm 2, line 4), less d lse_i:
  # d lse_i / d s_ij = p_ij, so the log-sum-exp's cotangent enters as p_ij * d_lse_i.
  compute = jnp.promote_types(out.dtype, jnp.float32)  # float64 for float64 inputs
  delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(compute), out.astype(compute))
  if not _is_zero(d_lse):  # [B, Hq, Tq]
    delta = delta - jnp.where(jnp.isfinite(lse), d_lse.astype(compute), 0.0)
  dq, dk, dv, dbias = _ops(backend).backward(q, k, v, bias, masks, spec, out, lse,
                                             d_out.astype(q.dtype), delta, bias_grad)
  if dbias is not None:
    axes = tuple(axis for axis in range(2) if bias.shape[axis] == 1 and dbias.shape[axis] > 1)
    dbias = jnp.sum(dbias, axis=axes, keepdims=True).astype(bias.dtype)
  return dq, dk, dv, dbias, None


_attend.defvjp(_attend_fwd, _attend_bwd, symbolic_zeros=True)
