"""Every option on every path, forward and gradients, against the one float64 reference.

One test body, run per path by a subclass that names the path and the options it
supports (tokamax's `AttentionTestBase(supports_*)`); an option a path lacks must be refused
with a clear error instead. The Pallas paths run in interpret mode on the CPU, so the shape
is tiny and shared (compiles are reused), with tiles smaller than the sequences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.attention import IMPLEMENTATIONS, BlockSizes
from kernels.attention.api import OPTIONS
from kernels.attention.cudnn import attention_cudnn

# [B, Tq, Tk, Hq, Hkv, D]: lengths that are not block multiples, GQA.
SHAPE = (2, 29, 40, 4, 2, 16)
TOLERANCE = {jnp.float32: {"fwd": 2e-5, "bwd": 1e-4},
             jnp.bfloat16: {"fwd": 3e-2, "bwd": 1e-1}}


def _case(name: str, rng, q_len: int, kv_len: int) -> dict:
  """The options of one case (a fresh bias or mask drawn from `rng`)."""
  batch, _, _, q_heads, _, _ = SHAPE
  bias = jnp.asarray(rng.standard_normal((1, q_heads, q_len, kv_len)), jnp.float32)
  cases = {
      "window": dict(local_window_size=(5, 3)),
      "window_left_causal": dict(local_window_size=(7, 2), causal=True),
      "window_left_only": dict(local_window_size=(6, 0)),
      "soft_cap": dict(logits_soft_cap=1.5, scale=0.75),
      "bias": dict(bias=bias),
      "bias_per_example": dict(bias=jnp.asarray(
          rng.standard_normal((batch, 1, q_len, kv_len)), jnp.bfloat16)),
      "bias_soft_cap_causal": dict(bias=bias, logits_soft_cap=2.0, causal=True),
      "bottom_right_causal": dict(causal=True, causal_alignment="bottom_right"),
      "bottom_right_window": dict(local_window_size=(4, 1), causal_alignment="bottom_right"),
      "residual": dict(return_residual=True, causal=True),
      "everything": dict(
          bias=bias, causal=True, causal_alignment="bottom_right", local_window_size=(11, 0),
          logits_soft_cap=3.0, return_residual=True,
          q_lengths=jnp.asarray([q_len - 3, q_len], jnp.int32),
          kv_lengths=jnp.asarray([kv_len, kv_len - 9], jnp.int32),
          segment_ids=(jnp.asarray(np.sort(rng.integers(0, 2, (batch, q_len))), jnp.int32),
                       jnp.asarray(np.sort(rng.integers(0, 2, (batch, kv_len))), jnp.int32)),
          mask=jnp.asarray(rng.random((batch, 1, q_len, kv_len)) < 0.8)),
  }
  return cases[name]


CASES = ("window", "window_left_causal", "window_left_only", "soft_cap", "bias",
         "bias_per_example", "bias_soft_cap_causal", "bottom_right_causal",
         "bottom_right_window", "residual", "everything")


def _used(options: dict, q_len: int, kv_len: int) -> set:
  """The capability names (`api.OPTIONS`) a case needs."""
  used = {name for name in ("bias", "mask", "causal", "local_window_size", "logits_soft_cap",
                            "segment_ids", "return_residual") if options.get(name) is not None
          and options.get(name) is not False}
  if options.get("q_lengths") is not None or options.get("kv_lengths") is not None:
    used.add("lengths")
  if options.get("causal_alignment") == "bottom_right" and q_len != kv_len:
    used.add("bottom_right")
  return used


class AttentionPathTests:
  """The shared body; a subclass sets the path and what it supports."""

  IMPL: str = ""
  BLOCKS: BlockSizes | None = None
  DTYPE = jnp.float32
  SUPPORTS = frozenset(OPTIONS)
  LSE_GRADIENT = True  # whether the log-sum-exp passes gradients

  def attend(self, q, k, v, **options):
    """The path under test, called as users call it."""
    return kernels.attention(q, k, v, impl=self.IMPL, block_sizes=self.BLOCKS, **options)

  def refuse(self, q, k, v, missing: set, **options):
    """Asserts that the path refuses options it lacks, naming them."""
    with pytest.raises(ValueError, match="does not support"):
      self.attend(q, k, v, **options)

  @pytest.mark.parametrize("case", CASES)
  def test_option(self, attention_cases, case):
    batch, q_len, kv_len, q_heads, kv_heads, head_dim = SHAPE
    rng = np.random.default_rng(CASES.index(case))
    if case == "bottom_right_causal":
      q_len, kv_len = 40, 29  # Tq > Tk: the first rows see no key at all
    q, k, v = attention_cases.make_inputs(CASES.index(case), batch, q_len, kv_len, q_heads,
                                          kv_heads, head_dim, self.DTYPE)
    options = _case(case, rng, q_len, kv_len)
    missing = _used(options, q_len, kv_len) - self.SUPPORTS
    if self.DTYPE == jnp.float32 and "float32" not in self.SUPPORTS:
      missing.add("float32")
    if missing:
      self.refuse(q, k, v, missing, **options)
      return
    cotangent = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    lse_cotangent = jnp.asarray(rng.standard_normal((batch, q_len, q_heads)), jnp.float32)
    residual = options.get("return_residual", False)
    bias = options.pop("bias", None)

    def loss(q, k, v, bias):
      result = self.attend(q, k, v, bias=bias, **options)
      out, lse = result if residual else (result, None)
      total = jnp.sum(out.astype(jnp.float32) * cotangent)
      if residual:
        total += jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * lse_cotangent)
      return total, (out, lse)

    argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
    grads, (out, lse) = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))(q, k, v, bias)
    reference_options = {key: val for key, val in options.items() if key != "return_residual"}
    want_out, want_lse, want_grads = attention_cases.reference64_full(
        q, k, v, cotangent, bias=bias,
        lse_cotangent=lse_cotangent if residual and self.LSE_GRADIENT else None,
        **reference_options)
    tol = TOLERANCE[self.DTYPE]
    assert out.dtype == q.dtype and out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out, np.float64), want_out, rtol=0, atol=tol["fwd"])
    if residual:
      assert lse.dtype == jnp.float32 and lse.shape == (batch, q_len, q_heads)
      lse = np.asarray(lse, np.float64)
      np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(want_lse))
      finite = np.isfinite(want_lse)
      np.testing.assert_allclose(lse[finite], want_lse[finite], rtol=0, atol=tol["fwd"])
    inputs = (q, k, v, bias)
    for name, grad, x, want in zip(("dq", "dk", "dv", "dbias"), grads, inputs, want_grads):
      assert grad.shape == x.shape and grad.dtype == x.dtype, name
      # A bfloat16 bias takes its gradient rounded to bfloat16 (8 bits of mantissa).
      rtol = 1e-2 if x.dtype == jnp.bfloat16 else 0
      np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=rtol,
                                 atol=tol["bwd"], err_msg=name)


class TestXla(AttentionPathTests):
  IMPL = "xla"


class TestXlaChunked(AttentionPathTests):
  IMPL = "xla_chunked"
  BLOCKS = BlockSizes(8, 16, 16, 8)


class TestPallasGpu(AttentionPathTests):
  IMPL = "pallas_gpu"
  BLOCKS = BlockSizes(16, 16, 16, 16)
  SUPPORTS = IMPLEMENTATIONS["pallas_gpu"].supports


class TestPallasTpu(AttentionPathTests):
  IMPL = "pallas_tpu"
  BLOCKS = BlockSizes(16, 16, 16, 16)
  SUPPORTS = IMPLEMENTATIONS["pallas_tpu"].supports


class TestCudnnMapping(AttentionPathTests):
  """impl="cudnn"'s argument mapping, run through `jax.nn`'s XLA path (no GPU here).

  What the registry says cuDNN lacks must be refused on a GPU: its `check` is asked as if
  on one.
  """

  IMPL = "cudnn"
  DTYPE = jnp.bfloat16
  LSE_GRADIENT = False  # jax.nn's residual is an output only
  SUPPORTS = IMPLEMENTATIONS["cudnn"].supports

  def attend(self, q, k, v, bias=None, mask=None, causal=False, local_window_size=None,
             q_lengths=None, kv_lengths=None, scale=None, return_residual=False, **rest):
    assert not rest, rest
    window = ((local_window_size,) * 2 if isinstance(local_window_size, int)
              else local_window_size)
    return attention_cudnn(q, k, v, bias, mask, causal=causal, local_window_size=window,
                           q_lengths=q_lengths, kv_lengths=kv_lengths,
                           scale=q.shape[-1] ** -0.5 if scale is None else scale,
                           return_residual=return_residual, implementation="xla")

  def refuse(self, q, k, v, missing, **options):
    with pytest.raises(ValueError, match="does not support .*" + sorted(missing)[0][:6]):
      IMPLEMENTATIONS["cudnn"].check(missing, "gpu")


def test_cudnn_off_a_gpu_says_where_it_runs():
  q = k = v = jnp.ones((1, 8, 2, 16), jnp.bfloat16)
  with pytest.raises(ValueError, match="impl='cudnn' runs only on gpu"):
    kernels.attention(q, k, v, impl="cudnn")


def test_cudnn_refuses_a_right_window_without_causal():
  q = k = v = jnp.ones((1, 8, 2, 16), jnp.bfloat16)
  with pytest.raises(ValueError, match="right == 0 unless causal"):
    attention_cudnn(q, k, v, None, None, causal=False, local_window_size=(2, 2),
                    q_lengths=None, kv_lengths=None, scale=0.25)
