"""`kernels.attention`: argument validation, `impl="auto"` dispatch, jit."""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.attention import AUTO_TABLE, BlockSizes, GpuBlockSizes
from kernels.attention import api

_module = importlib.import_module("kernels.attention")  # `kernels.attention` is the function

B, TQ, TK, HQ, HKV, D = 2, 12, 10, 4, 2, 8


def _qkv(dtype=jnp.float32, q_len=TQ, kv_len=TK):
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (B, q_len, HQ, D), dtype)
  k = jax.random.normal(keys[1], (B, kv_len, HKV, D), dtype)
  v = jax.random.normal(keys[2], (B, kv_len, HKV, D), dtype)
  return q, k, v


def _ids(length, dtype=jnp.int32):
  return jnp.zeros((B, length), dtype)


def _replace(q, k, v, name, value):
  arrays = {"q": q, "k": k, "v": v}
  arrays[name] = value
  return arrays["q"], arrays["k"], arrays["v"]


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_rejects_bad_ndim(name):
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=rf"{name}.shape="):
    kernels.attention(*_replace(q, k, v, name, jnp.zeros((B, TQ, D))))


def test_rejects_non_array():
  _, k, v = _qkv()
  with pytest.raises(ValueError, match=r"q\.shape=list"):
    kernels.attention([[1.0]], k, v)


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_rejects_integer_dtype(name):
  q, k, v = _qkv()
  bad = _replace(q, k, v, name, jnp.ones(dict(q=q, k=k, v=v)[name].shape, jnp.int32))
  with pytest.raises(ValueError, match=rf"{name}\.dtype must be"):
    kernels.attention(*bad)


def test_rejects_dtype_mismatch():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=r"k\.dtype=.*bfloat16"):
    kernels.attention(q, k.astype(jnp.bfloat16), v)


@pytest.mark.parametrize("k_shape, v_shape, pattern", [
    ((B, TK, HKV, D), (B, TK + 1, HKV, D), r"k and v .*v\.shape="),
    ((B + 1, TK, HKV, D), (B + 1, TK, HKV, D), r"batch.*k\.shape="),
    ((B, TK, HKV, D + 1), (B, TK, HKV, D + 1), r"head_dim.*k\.shape="),
    ((B, TK, 3, D), (B, TK, 3, D), r"q_heads must be a multiple of kv_heads.*k\.shape="),
    ((B, 0, HKV, D), (B, 0, HKV, D), r"non-empty.*k\.shape="),
])
def test_rejects_inconsistent_shapes(k_shape, v_shape, pattern):
  q, _, _ = _qkv()
  with pytest.raises(ValueError, match=pattern):
    kernels.attention(q, jnp.zeros(k_shape), jnp.zeros(v_shape))


def test_rejects_non_bool_causal():
  with pytest.raises(ValueError, match="causal"):
    kernels.attention(*_qkv(), causal=1)


@pytest.mark.parametrize("scale", [-0.5, 0.0, float("inf"), float("nan"), "0.1"])
def test_rejects_bad_scale(scale):
  with pytest.raises(ValueError, match="scale"):
    kernels.attention(*_qkv(), scale=scale)


def test_rejects_unknown_impl():
  with pytest.raises(ValueError, match="impl.*'triton'"):
    kernels.attention(*_qkv(), impl="triton")


def test_rejects_bad_block_sizes_type():
  with pytest.raises(ValueError, match="block_sizes.*dict"):
    kernels.attention(*_qkv(), block_sizes={"block_q": 16})


@pytest.mark.parametrize("impl", ["pallas", "pallas_gpu", "pallas_tpu"])
def test_rejects_float64_on_pallas(impl):
  with jax.enable_x64(True):
    q, k, v = _qkv(jnp.float64)
    with pytest.raises(ValueError, match=f"impl='{impl}.*' does not support float64"):
      kernels.attention(q, k, v, impl=impl)


@pytest.mark.parametrize("name", ["q_lengths", "kv_lengths"])
@pytest.mark.parametrize("value", [
    jnp.ones((B + 1,), jnp.int32), jnp.ones((B, 1), jnp.int32), jnp.ones((B,), jnp.float32),
    [3, 4]], ids=["batch", "ndim", "float", "list"])
def test_rejects_bad_lengths(name, value):
  with pytest.raises(ValueError, match=name):
    kernels.attention(*_qkv(), **{name: value})


@pytest.mark.parametrize("mask, pattern", [
    (jnp.ones((TQ, TK), jnp.int32), "mask must be a bool array"),
    (np.ones((TQ, TK), np.float32), "mask must be a bool array"),
    ([[True]], "mask must be a bool array"),
    (jnp.ones((TK,), bool), r"mask\.shape=\(10,\)"),
    (jnp.ones((1, 1, 1, TQ, TK), bool), r"mask\.shape="),
    (jnp.ones((TK, TQ), bool), r"mask.*\[2, 4, 12, 10\].*mask\.shape=\(10, 12\)"),
    (jnp.ones((B, 3, TQ, TK), bool), r"mask\.shape=\(2, 3, 12, 10\)"),
])
def test_rejects_bad_mask(mask, pattern):
  with pytest.raises(ValueError, match=pattern):
    kernels.attention(*_qkv(), mask=mask)


@pytest.mark.parametrize("segment_ids, pattern", [
    (_ids(TQ), "single segment_ids array needs q_len == kv_len"),
    ((_ids(TQ), _ids(TK), _ids(TK)), "segment_ids must be an array .* or a pair"),
    ((_ids(TK), _ids(TK)), r"q_segment_ids must be an integer array of shape \(2, 12\)"),
    ((_ids(TQ), _ids(TQ)), r"kv_segment_ids must be an integer array of shape \(2, 10\)"),
    ((_ids(TQ, jnp.float32), _ids(TK)), "q_segment_ids.*float32"),
    ((_ids(TQ), _ids(TK, jnp.float32)), "kv_segment_ids.*float32"),
])
def test_rejects_bad_segment_ids(segment_ids, pattern):
  with pytest.raises(ValueError, match=pattern):
    kernels.attention(*_qkv(), segment_ids=segment_ids)


def test_rejects_single_segment_ids_of_wrong_shape():
  q, k, v = _qkv(kv_len=TQ)
  with pytest.raises(ValueError, match="q_segment_ids"):
    kernels.attention(q, k, v, segment_ids=_ids(TQ + 1))


@pytest.mark.parametrize("field, value", [
    ("block_q", 12), ("block_k", 4), ("block_q_bwd", 0), ("block_k_bwd", 16.0)])
def test_block_sizes_validation(field, value):
  with pytest.raises(ValueError, match=f"BlockSizes.{field}"):
    BlockSizes(**{field: value})


@pytest.mark.parametrize("field, value", [("num_warps", 0), ("num_stages", "2"),
                                          ("float32_dot", "fast"), ("block_q", 12)])
def test_gpu_block_sizes_validation(field, value):
  with pytest.raises(ValueError, match=f"BlockSizes.{field}"):
    GpuBlockSizes(**{field: value})


def test_triton_options_live_only_on_the_gpu_config():
  with pytest.raises(TypeError, match="num_warps"):
    BlockSizes(num_warps=4)
  assert isinstance(BlockSizes.default("gpu", 64), GpuBlockSizes)
  assert type(BlockSizes.default("tpu", 64)) is BlockSizes


@pytest.mark.parametrize("backend, head_dim, dtype, block_q", [
    ("tpu", 64, jnp.bfloat16, 256), ("tpu", 256, jnp.bfloat16, 128),
    ("tpu", 64, jnp.float32, 128), ("cpu", 64, jnp.float32, 512),
    ("cpu", 256, jnp.float32, 256), ("gpu", 256, jnp.bfloat16, 64)])
def test_block_size_heuristic_per_head_dim_and_dtype(backend, head_dim, dtype, block_q):
  assert BlockSizes.default(backend, head_dim, dtype).block_q == block_q


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("head_dim", [64, 256])
def test_block_size_defaults_are_valid(backend, head_dim):
  assert isinstance(BlockSizes.default(backend, head_dim), BlockSizes)


def test_auto_on_cpu_is_the_reference_below_the_crossover():
  assert jax.default_backend() == "cpu"
  q, k, v = _qkv()
  options = dict(causal=True, kv_lengths=jnp.asarray([7, 10], jnp.int32))
  np.testing.assert_array_equal(kernels.attention(q, k, v, **options),
                                kernels.attention(q, k, v, impl="xla", **options))


def test_auto_on_cpu_is_chunked_above_the_crossover(monkeypatch):
  table = dict(AUTO_TABLE, cpu=AUTO_TABLE["cpu"]._replace(
      steps=((TQ * TK, "xla"), (None, "xla_chunked"))))
  monkeypatch.setattr(api, "AUTO_TABLE", table)
  q, k, v = _qkv()
  blocks = BlockSizes(block_q=8, block_k=8, block_q_bwd=8, block_k_bwd=8)
  out = kernels.attention(q, k, v, causal=True, block_sizes=blocks)
  np.testing.assert_array_equal(
      out, kernels.attention(q, k, v, causal=True, impl="xla_chunked", block_sizes=blocks))
  np.testing.assert_allclose(out, kernels.attention(q, k, v, causal=True, impl="xla"),
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["auto", "xla", "xla_chunked"])
def test_jit_matches_eager(impl):
  q, k, v = _qkv()
  mask = jnp.asarray(np.random.default_rng(0).random((B, 1, TQ, TK)) < 0.8)
  options = dict(mask=mask, q_lengths=jnp.asarray([12, 9], jnp.int32),
                 kv_lengths=jnp.asarray([10, 6], jnp.int32),
                 segment_ids=(_ids(TQ), _ids(TK)))
  fn = functools.partial(kernels.attention, causal=True, scale=0.3, impl=impl)
  eager = fn(q, k, v, **options)
  jitted = jax.jit(fn)(q, k, v, **options)
  np.testing.assert_allclose(jitted, eager, atol=1e-6, rtol=0)
  np.testing.assert_allclose(eager, kernels.attention(q, k, v, causal=True, scale=0.3,
                                                      impl="xla", **options), atol=1e-5, rtol=0)


def test_accepts_2d_and_3d_masks_and_numpy_lengths():
  q, k, v = _qkv()
  mask = np.random.default_rng(1).random((TQ, TK)) < 0.8
  for m in (mask, mask[None]):
    out = kernels.attention(q, k, v, mask=jnp.asarray(m), kv_lengths=np.array([10, 5]))
    expected = kernels.attention(q, k, v, mask=jnp.asarray(mask)[None, None],
                                 kv_lengths=jnp.asarray([10, 5], jnp.int32))
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


def test_auto_table_is_what_its_json_measured():
  """The CPU crossover in AUTO_TABLE is the first sequence from which the chunked path's
  forward+backward beats the reference decisively (1.5x: the JSON has 3 reps a point, and
  at 256 the two are 1.3x apart) at every length measured, in the JSON it names."""
  source, steps = AUTO_TABLE["cpu"]
  measured = json.loads((Path(__file__).parents[3] / source).read_text())["crossover"]
  times = {(row["impl"], row["seq"]): row["fwd_bwd"]["median_s"] for row in measured}
  seqs = sorted({seq for _, seq in times})
  faster = [seq for seq in seqs if 1.5 * times["xla_chunked", seq] < times["xla", seq]]
  assert faster and all(seq in faster for seq in seqs if seq >= faster[0])
  assert steps == ((faster[0] ** 2, "xla"), (None, "xla_chunked"))


def test_auto_off_the_cpu_uses_the_last_measured_table():
  assert api._resolve("auto", "gpu", 10) == "xla"
  assert api._resolve("auto", "gpu", 4096 ** 2) == "xla_chunked"
  assert api._resolve("pallas", "gpu", 10) == "pallas_gpu"


@pytest.mark.parametrize("options, pattern", [
    (dict(local_window_size=-1), "local_window_size must be"),
    (dict(local_window_size=(1, 2, 3)), "local_window_size must be"),
    (dict(local_window_size=(1.0, 2)), "local_window_size must be"),
    (dict(logits_soft_cap=0.0), "logits_soft_cap must be"),
    (dict(logits_soft_cap=float("inf")), "logits_soft_cap must be"),
    (dict(causal_alignment="bottom"), "causal_alignment must be one of"),
    (dict(return_residual=1), "return_residual must be a bool"),
    (dict(interpret="yes"), "interpret must be a bool"),
    (dict(bias=jnp.ones((B, HQ, TQ, TK), jnp.int32)), "bias must be a float array"),
    (dict(bias=jnp.ones((B, 3, TQ, TK))), r"bias must be broadcastable.*bias\.shape=\(2, 3"),
    (dict(bias=jnp.ones((TK, TQ))), r"bias\.shape=\(10, 12\)"),
    (dict(causal=True, is_causal=False), "causal and is_causal name the same option"),
    (dict(impl="xla", implementation="cudnn"), "impl and implementation"),
    (dict(kv_lengths=jnp.ones(B, jnp.int32), key_value_seq_lengths=jnp.ones(B, jnp.int32)),
     "kv_lengths and key_value_seq_lengths"),
])
def test_rejects_bad_new_options(options, pattern):
  with pytest.raises(ValueError, match=pattern):
    kernels.attention(*_qkv(), **options)


def test_jax_nn_names_are_aliases():
  q, k, v = _qkv()
  lengths = jnp.asarray([9, 4], jnp.int32)
  ours = kernels.attention(q, k, v, causal=True, q_lengths=lengths, kv_lengths=lengths[::-1],
                           impl="xla")
  theirs = kernels.attention(q, k, v, is_causal=True, query_seq_lengths=lengths,
                             key_value_seq_lengths=lengths[::-1], implementation="xla")
  np.testing.assert_array_equal(ours, theirs)


def test_matches_jax_nn_on_what_both_define():
  """Bias, mask, window and causal as `jax.nn.dot_product_attention` defines them (no
  fully masked rows, where the two differ by design)."""
  q, k, v = _qkv()
  rng = np.random.default_rng(2)
  bias = jnp.asarray(rng.standard_normal((1, HQ, TQ, TK)), jnp.float32)
  mask = jnp.asarray(rng.random((B, 1, TQ, TK)) < 0.9).at[..., 0].set(True)
  options = dict(is_causal=True, local_window_size=(4, 2), scale=0.4)
  ours, lse = kernels.attention(q, k, v, bias, mask, return_residual=True, **options)
  theirs, their_lse = jax.nn.dot_product_attention(q, k, v, bias, mask, return_residual=True,
                                                   **options)
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
  np.testing.assert_allclose(lse, their_lse, atol=1e-5, rtol=0)


def test_numpy_scalars_are_numbers_and_ints():
  q, k, v = _qkv()
  ours = kernels.attention(q, k, v, local_window_size=(np.int64(3), np.int32(1)),
                           logits_soft_cap=np.float32(2.0), scale=np.float32(0.5), impl="xla")
  np.testing.assert_array_equal(ours, kernels.attention(q, k, v, local_window_size=(3, 1),
                                                        logits_soft_cap=2.0, scale=0.5,
                                                        impl="xla"))
