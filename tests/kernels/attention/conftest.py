"""Shared pieces of the attention tests: random inputs, the float64 reference, tolerances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.attention.reference import attention_reference

# Max abs error allowed against the float64 reference, per input dtype: forward and grads.
TOLERANCE = {
    jnp.float32: {"fwd": 2e-5, "bwd": 1e-4},
    jnp.bfloat16: {"fwd": 3e-2, "bwd": 8e-2},
    jnp.float16: {"fwd": 5e-3, "bwd": 2e-2},
}


def make_inputs(seed: int, batch: int, q_len: int, kv_len: int, q_heads: int, kv_heads: int,
                head_dim: int, dtype=jnp.float32):
  """Random normal q [B, Tq, Hq, D], k and v [B, Tk, Hkv, D] of `dtype` (never zeros)."""
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((batch, q_len, q_heads, head_dim), np.float32)
  k = rng.standard_normal((batch, kv_len, kv_heads, head_dim), np.float32)
  v = rng.standard_normal((batch, kv_len, kv_heads, head_dim), np.float32)
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def make_options(seed: int, batch: int, q_len: int, kv_len: int, q_heads: int, kind: str):
  """Mask options of one `kind`: none, causal, lengths, segments, mask, all."""
  rng = np.random.default_rng(seed + 1000)
  options = {}
  if kind in ("causal", "all"):
    options["causal"] = True
  if kind in ("lengths", "all"):
    options["q_lengths"] = jnp.asarray(rng.integers(1, q_len + 1, batch), jnp.int32)
    kv = rng.integers(1, kv_len + 1, batch)
    kv[0] = 0 if kind == "lengths" and batch > 1 else kv[0]  # one example fully masked
    options["kv_lengths"] = jnp.asarray(kv, jnp.int32)
  if kind in ("segments", "all"):
    q_seg = np.sort(rng.integers(0, 3, (batch, q_len)), axis=1)
    kv_seg = np.sort(rng.integers(0, 3, (batch, kv_len)), axis=1)
    options["segment_ids"] = (jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32))
  if kind in ("mask", "all"):
    options["mask"] = jnp.asarray(rng.random((batch, 1, q_len, kv_len)) < 0.7)
  return options


def _reference_options(options: dict) -> dict:
  """Public-API options as the reference takes them (segment pair split), as jnp arrays."""
  options = dict(options)
  segment_ids = options.pop("segment_ids", None)
  if segment_ids is not None:
    options["q_segment_ids"], options["kv_segment_ids"] = segment_ids
  return {key: (jnp.asarray(np.asarray(val)) if hasattr(val, "shape") else val)
          for key, val in options.items()}


def reference64(q, k, v, **options):
  """The reference in float64 (jax_enable_x64 scoped), as numpy float64."""
  with jax.enable_x64(True):
    q64, k64, v64 = (jnp.asarray(np.asarray(x, np.float64)) for x in (q, k, v))
    options = _reference_options(options)
    out = attention_reference(q64, k64, v64, **options)
    return np.asarray(out)


def reference64_grads(q, k, v, cotangent, **options):
  """d/d(q, k, v) of sum(reference64(q, k, v) * cotangent), float64 numpy."""
  with jax.enable_x64(True):
    q64, k64, v64, ct64 = (jnp.asarray(np.asarray(x, np.float64)) for x in (q, k, v, cotangent))
    options = _reference_options(options)
    grads = jax.grad(lambda a, b, c: jnp.sum(attention_reference(a, b, c, **options) * ct64),
                     argnums=(0, 1, 2))(q64, k64, v64)
    return tuple(np.asarray(g) for g in grads)


def reference64_full(q, k, v, cotangent, bias=None, lse_cotangent=None, **options):
  """The float64 reference: its output `[B, Tq, Hq, D]`, log-sum-exp `[B, Tq, Hq]`, and the
  gradients in q, k, v (and the bias, when given) of
  `sum(out * cotangent) + sum(lse * lse_cotangent)` (finite lse only), as numpy float64."""
  with jax.enable_x64(True):
    f64 = lambda x: None if x is None else jnp.asarray(np.asarray(x, np.float64))
    options = _reference_options(options)

    def loss(q, k, v, bias):
      out, lse = attention_reference(q, k, v, bias, return_residual=True, **options)
      total = jnp.sum(out * f64(cotangent))
      if lse_cotangent is not None:
        total += jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * f64(lse_cotangent))
      return total, (out, lse)

    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    grads, (out, lse) = jax.grad(loss, argnums, has_aux=True)(f64(q), f64(k), f64(v),
                                                              f64(bias))
    return np.asarray(out), np.asarray(lse), [np.asarray(g) for g in grads]


@pytest.fixture
def attention_cases():
  """The helpers above, as a fixture: `cases.make_inputs(...)`, `cases.TOLERANCE`, ..."""
  import types
  return types.SimpleNamespace(make_inputs=make_inputs, make_options=make_options,
                               reference64=reference64, reference64_grads=reference64_grads,
                               reference64_full=reference64_full, TOLERANCE=TOLERANCE)
