"""Attention in 64-bit mode (`jax_enable_x64`, as scientific code often sets it).

Every path runs with the flag on, keeps float32 in float32 out, and matches the float64
reference, forward and gradients; the kernels keep their index arithmetic in int32 (program
ids are int32: an int64 loop counter or Python int meeting them was the bug) and still
lower for their hardware. Interpret mode is slow, so the shape is tiny and shared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.attention import BlockSizes

IMPLS = ("xla", "xla_chunked", "pallas_gpu", "pallas_tpu")
PALLAS = ("pallas_gpu", "pallas_tpu")
# Tiles smaller than the sequences, so that every blockwise path has several.
BLOCKS = {"xla": None, "xla_chunked": BlockSizes(8, 8, 8, 8),
          "pallas_gpu": BlockSizes(16, 16, 16, 16), "pallas_tpu": BlockSizes(16, 16, 16, 16)}
# [B, Tq, Tk, Hq, Hkv, D]: lengths that are not block multiples, Tq != Tk, GQA.
SHAPE = (1, 20, 27, 2, 1, 8)
# The options: "causal" has them all (the GPU kernels' loops then have traced bounds),
# "masks" all but causal (static bounds).
KINDS = ("causal", "masks")


def _inputs(cases, kind: str, dtype=jnp.float32):
  """q, k, v of `dtype`, the options of `kind` with int64 index arrays, and a cotangent.

  Under x64 `jnp.array([3, 5])` is int64: that is what callers pass for lengths and ids.
  """
  batch, q_len, kv_len, q_heads, kv_heads, head_dim = SHAPE
  q, k, v = cases.make_inputs(3, batch, q_len, kv_len, q_heads, kv_heads, head_dim, dtype)
  options = cases.make_options(3, batch, q_len, kv_len, q_heads, "all")
  options["causal"] = kind == "causal"
  # The newer options too: a float32 bias and a soft cap on both kinds, a bottom-right
  # window (traced loop bounds) with the causal one.
  rng = np.random.default_rng(5)
  options["bias"] = jnp.asarray(rng.standard_normal((1, q_heads, q_len, kv_len)), jnp.float32)
  options["logits_soft_cap"] = 4.0
  if kind == "causal":
    options.update(local_window_size=(9, 0), causal_alignment="bottom_right")
  options = jax.tree.map(
      lambda x: x.astype(jnp.int64) if jnp.issubdtype(getattr(x, "dtype", bool), jnp.integer)
      else x, options)
  cotangent = jnp.asarray(np.random.default_rng(4).standard_normal(q.shape), jnp.float32)
  return (q, k, v), options, cotangent


def _loss(impl, options, cotangent):
  """`(q, k, v) -> (sum(out * cotangent), out)` through `impl`."""

  def loss(q, k, v):
    out = kernels.attention(q, k, v, impl=impl, block_sizes=BLOCKS[impl], **options)
    return jnp.sum(out.astype(cotangent.dtype) * cotangent), out

  return loss


def _grads_and_out(impl, args, options, cotangent):
  return jax.jit(jax.grad(_loss(impl, options, cotangent), argnums=(0, 1, 2),
                          has_aux=True))(*args)


_REFERENCE64 = {}  # kind -> the float64 reference's grads and output (one compile each)


def _reference64(cases, kind: str):
  """d/d(q, k, v) and the output of the float64 reference for `kind`, numpy."""
  if kind not in _REFERENCE64:
    args, options, cotangent = _inputs(cases, kind)
    args64 = [jnp.asarray(x, jnp.float64) for x in (*args, cotangent)]
    options = dict(options, bias=jnp.asarray(options["bias"], jnp.float64))
    grads, out = _grads_and_out("xla", args64[:3], options, args64[3])
    _REFERENCE64[kind] = [np.asarray(g) for g in grads], np.asarray(out)
  return _REFERENCE64[kind]


@pytest.mark.parametrize("impl,kind", [("xla", "causal"), ("xla_chunked", "causal"),
                                       ("pallas_gpu", "causal"), ("pallas_gpu", "masks"),
                                       ("pallas_tpu", "causal")])
def test_matches_the_float64_reference(attention_cases, x64, impl, kind):
  assert jnp.asarray(1.0).dtype == jnp.float64  # the flag is on
  args, options, cotangent = _inputs(attention_cases, kind)
  grads, out = _grads_and_out(impl, args, options, cotangent)
  expected_grads, expected = _reference64(attention_cases, kind)
  tol = attention_cases.TOLERANCE[jnp.float32]
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=0, atol=tol["fwd"])
  for name, grad, want in zip("qkv", grads, expected_grads):
    assert grad.dtype == jnp.float32, name
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=0, atol=tol["bwd"],
                               err_msg=f"d{name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_no_64_bit_values_in_kernels_or_float32_math(find_64_bit_values, attention_cases,
                                                     x64, impl):
  """Traced only: int32 indices in every kernel and index map, float32 math everywhere."""
  for kind in KINDS:
    args, options, cotangent = _inputs(attention_cases, kind)
    found, num_kernels = find_64_bit_values(
        jax.grad(_loss(impl, options, cotangent), argnums=(0, 1, 2), has_aux=True), *args)
    assert found == [], (kind, found)
    assert num_kernels == (3 if impl in PALLAS else 0)  # forward, dq, dk/dv


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_output_and_grad_dtypes_are_the_inputs(attention_cases, x64, dtype):
  """Abstract evaluation only: what comes out of each path has the inputs' dtype."""
  args, options, cotangent = _inputs(attention_cases, "causal", dtype)
  for impl in IMPLS:
    grads, out = jax.eval_shape(jax.grad(_loss(impl, options, cotangent), argnums=(0, 1, 2),
                                         has_aux=True), *args)
    assert [x.dtype for x in (out, *grads)] == [jnp.dtype(dtype)] * 4, impl


def _lower(impl, platform, cases):
  """The Triton or Mosaic lowering of forward and backward (the bias' gradient too), with
  every option, under x64; no device needed."""
  (q, k, v), options, _ = _inputs(cases, "causal")
  bias = options.pop("bias")

  def loss(q, k, v, bias):
    out, lse = kernels.attention(q, k, v, bias, scale=0.1, impl=impl, interpret=False,
                                 block_sizes=BlockSizes(16, 16, 16, 16), return_residual=True,
                                 **options)
    return jnp.sum(out) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, k, v, bias).lower(
      lowering_platforms=(platform,)).as_text()


def test_lowers_for_cuda(attention_cases, as_if_on_gpu, x64):
  assert _lower("pallas_gpu", "cuda", attention_cases).count("__gpu$xla.gpu.triton") == 3


def test_lowers_for_tpu(attention_cases, as_if_on_tpu, x64):
  assert _lower("pallas_tpu", "tpu", attention_cases).count("tpu_custom_call") == 3
