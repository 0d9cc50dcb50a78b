"""The gpu-suite's first part: every Pallas GPU kernel once, compiled, against its reference.

    from bench import _gpu_smoke
    record = _gpu_smoke.run_case(_gpu_smoke.cases(tiny=True)[0])
    record["passed"], record["errors"]["out"]["rel"]

Each case runs one op forward and the gradients of `sum(out * cotangent)` for every array
input, once through `impl="pallas_gpu"` (compiled by Triton on a GPU, interpret mode
elsewhere) and once through the XLA reference (`kernels.attention.attention_reference`,
`kernels.conv.conv2d_reference`, `causal_conv1d_reference`) on float32 copies of the same
inputs at HIGHEST matmul precision. Per output it records the max abs error and the
relative error `||out - ref|| / ||ref||`; a case passes when every output is finite and
every relative error is within `TOLERANCE[dtype]`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import kernels

__all__ = ["TOLERANCE", "Case", "cases", "run_case", "compare_compile_table"]

# Relative error ||out - ref|| / ||ref|| allowed per input dtype: forward output, gradients.
# bfloat16 rounds every output (2^-9 relative) and the probabilities before the second
# matmul; float32 runs on the tensor cores as tf32x3 (about 1e-6) on the GPU, exact when
# interpreted.
TOLERANCE = {"bfloat16": {"fwd": 2e-2, "bwd": 4e-2}, "float32": {"fwd": 1e-4, "bwd": 5e-4}}
_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
_ERROR_CHARS = 500
_MIN_COMPILE_CHECK_S = 5.0  # the table comparison is not started with less left


@dataclasses.dataclass(frozen=True)
class Case:
  """One op at one shape and dtype.

  Attributes:
    name: unique, for the JSON and the printed line.
    op: "attention", "conv2d" or "causal_conv1d".
    dtype: "bfloat16" or "float32".
    shape: attention `(B, Tq, Tk, Hq, Hkv, D)`; conv2d `(N, H, W, Cin, Cout, K)`;
      causal_conv1d `(B, T, C, K)`.
    options: attention: causal, kv_lengths, segments, bias, bottom_right (bools), window
      (a `(left, right)` pair), soft_cap (a float); conv2d: stride, groups, residual; as
      `(key, value)` pairs.
  """

  name: str
  op: str
  dtype: str
  shape: tuple[int, ...]
  options: tuple[tuple[str, object], ...] = ()

  def to_json(self) -> dict:
    return {"name": self.name, "op": self.op, "dtype": self.dtype, "shape": list(self.shape),
            "options": dict(self.options)}


def _attention(name, dtype, shape, **options):
  return Case(name, "attention", dtype, shape, tuple(sorted(options.items())))


def _conv(name, dtype, shape, **options):
  return Case(name, "conv2d", dtype, shape, tuple(sorted(options.items())))


def cases(tiny: bool = False, quick: bool = False) -> list[Case]:
  """The smoke cases, the most telling first (a budget cut drops the tail).

  Args:
    tiny: a handful of tiny shapes, for interpret mode on a CPU.
    quick: the full list without the float32 repeats of conv layers.
  """
  if tiny:  # each kernel once, both dtypes: about 5 s a case when interpreted
    return [
        _attention("attn_f32_gqa_causal_lengths_segments", "float32", (2, 40, 40, 4, 2, 32),
                   causal=True, kv_lengths=True, segments=True),
        _attention("attn_f32_window_softcap_bias_bottom_right", "float32",
                   (2, 24, 56, 4, 2, 32), causal=True, bottom_right=True, window=(20, 0),
                   soft_cap=5.0, bias=True),
        _conv("conv3x3_s2_bias_relu_residual_bf16", "bfloat16", (2, 9, 9, 8, 16, 3),
              stride=2, residual=True),
        _conv("depthwise3x3_f32", "float32", (2, 8, 8, 8, 8, 3), groups=8),
        Case("causal_conv1d_bf16", "causal_conv1d", "bfloat16", (2, 33, 8, 4)),
    ]
  attention = [
      _attention("attn_bf16_d64", "bfloat16", (2, 1024, 1024, 8, 8, 64)),
      _attention("attn_bf16_d128_causal", "bfloat16", (2, 1000, 1000, 8, 8, 128), causal=True),
      _attention("attn_bf16_d64_causal", "bfloat16", (2, 1024, 1024, 8, 8, 64), causal=True),
      _attention("attn_bf16_d128", "bfloat16", (2, 1000, 1000, 8, 8, 128)),
      _attention("attn_f32_d64_causal", "float32", (1, 512, 512, 4, 4, 64), causal=True),
      _attention("attn_f32_d128_tq_ne_tk", "float32", (1, 300, 700, 4, 4, 128)),
      _attention("attn_bf16_gqa_causal", "bfloat16", (2, 1024, 1024, 16, 4, 128),
                 causal=True),
      _attention("attn_bf16_kv_lengths", "bfloat16", (4, 777, 777, 8, 2, 64),
                 kv_lengths=True),
      _attention("attn_bf16_segments_causal", "bfloat16", (2, 1024, 1024, 8, 8, 64),
                 causal=True, segments=True),
      _attention("attn_f32_gqa_causal_lengths_segments", "float32", (2, 600, 600, 8, 2, 64),
                 causal=True, kv_lengths=True, segments=True),
      _attention("attn_bf16_window_causal", "bfloat16", (2, 2048, 2048, 8, 8, 64),
                 causal=True, window=(256, 0)),
      _attention("attn_bf16_softcap_bias", "bfloat16", (2, 1024, 1024, 8, 8, 128),
                 soft_cap=30.0, bias=True),
      _attention("attn_bf16_bottom_right_gqa", "bfloat16", (2, 256, 1024, 8, 2, 64),
                 causal=True, bottom_right=True),
      _attention("attn_f32_window_softcap_bias", "float32", (1, 700, 700, 4, 4, 128),
                 window=(128, 32), soft_cap=20.0, bias=True),
  ]
  conv = []
  for dtype in ("bfloat16", "float32"):
    suffix = "bf16" if dtype == "bfloat16" else "f32"
    conv += [
        _conv(f"conv3x3_s1_bias_relu_residual_{suffix}", dtype, (8, 56, 56, 64, 64, 3),
              residual=True),
        _conv(f"conv3x3_s2_bias_relu_residual_{suffix}", dtype, (8, 56, 56, 64, 128, 3),
              stride=2, residual=True),
        _conv(f"conv1x1_bias_relu_{suffix}", dtype, (8, 28, 28, 256, 64, 1)),
        _conv(f"depthwise3x3_bias_relu_{suffix}", dtype, (8, 56, 56, 144, 144, 3),
              groups=144),
        Case(f"causal_conv1d_k4_silu_{suffix}", "causal_conv1d", dtype, (4, 1000, 256, 4)),
    ]
  if quick:
    conv = [case for case in conv if case.dtype == "bfloat16"] + conv[-1:]
  # Interleaved so that a cut keeps some of each op.
  return [*attention[:4], *conv[:5], *attention[4:], *conv[5:]]


def _normal(rng, shape, dtype, scale=1.0):
  return jnp.asarray(rng.standard_normal(shape, np.float32) * scale, dtype)


def make(case: Case, seed: int = 0):
  """`(apply, arrays)`: `apply(impl, *arrays) -> out` and its random differentiable inputs."""
  rng = np.random.default_rng(seed)
  dtype, options = _DTYPES[case.dtype], dict(case.options)
  if case.op == "attention":
    batch, q_len, kv_len, q_heads, kv_heads, head_dim = case.shape
    arrays = (_normal(rng, (batch, q_len, q_heads, head_dim), dtype),
              *(_normal(rng, (batch, kv_len, kv_heads, head_dim), dtype) for _ in "kv"))
    static = {"causal": bool(options.get("causal"))}
    if options.get("kv_lengths"):
      static["kv_lengths"] = jnp.asarray(rng.integers(kv_len // 2, kv_len + 1, batch),
                                         jnp.int32)
    if options.get("segments"):
      static["segment_ids"] = jnp.asarray(np.sort(rng.integers(0, 3, (batch, q_len)), 1),
                                          jnp.int32)
    if options.get("window"):
      static["local_window_size"] = tuple(options["window"])
    if options.get("soft_cap"):
      static["logits_soft_cap"] = float(options["soft_cap"])
    if options.get("bottom_right"):
      static["causal_alignment"] = "bottom_right"
    if options.get("bias"):  # differentiated, like q, k, v
      arrays += (_normal(rng, (1, q_heads, q_len, kv_len), dtype),)
    return (lambda impl, q, k, v, bias=None: kernels.attention(q, k, v, bias, impl=impl,
                                                               **static)), arrays
  if case.op == "conv2d":
    n, h, w, cin, cout, kernel = case.shape
    stride, groups = options.get("stride", 1), options.get("groups", 1)
    fan_in = kernel * kernel * cin // groups
    arrays = (_normal(rng, (n, h, w, cin), dtype),
              _normal(rng, (kernel, kernel, cin // groups, cout), dtype, fan_in ** -0.5),
              _normal(rng, (cout,), dtype))
    if options.get("residual"):
      out_hw = (-(-h // stride), -(-w // stride))
      arrays += (_normal(rng, (n, *out_hw, cout), dtype),)
    return (lambda impl, x, w, b, r=None: kernels.conv2d(
        x, w, b, stride=stride, groups=groups, activation="relu", residual=r,
        impl=impl)), arrays
  batch, seq, channels, kernel = case.shape
  arrays = (_normal(rng, (batch, seq, channels), dtype),
            _normal(rng, (kernel, channels), dtype, kernel ** -0.5),
            _normal(rng, (channels,), dtype))
  return (lambda impl, x, w, b: kernels.causal_conv1d(x, w, b, activation="silu",
                                                      impl=impl)), arrays


def value_and_grads(apply, impl: str):
  """`(*arrays, cotangent) -> (out, grads)`: grads of `sum(out * cotangent)` for each array."""

  def fn(*args):
    *arrays, cotangent = args

    def loss(*arrays):
      out = apply(impl, *arrays)
      return jnp.sum(out.astype(jnp.float32) * cotangent), out

    argnums = tuple(range(len(arrays)))
    (_, out), grads = jax.value_and_grad(loss, argnums, has_aux=True)(*arrays)
    return out, grads

  return fn


def _error(value, reference) -> dict:
  """Max abs and relative (Frobenius) error of `value` against `reference`, and finiteness."""
  value = jnp.asarray(value, jnp.float32)
  diff = value - reference
  norm = float(jnp.linalg.norm(reference))
  max_abs = float(jnp.max(jnp.abs(diff)))
  rel = float(jnp.linalg.norm(diff)) / norm if norm else max_abs
  return {"max_abs": max_abs, "rel": rel, "finite": bool(jnp.all(jnp.isfinite(value)))}


def run_case(case: Case) -> dict:
  """Compiles and runs one case through the kernel and the reference; never raises.

  Returns:
    `case.to_json()` plus `interpret`, `compile_s` (the kernel's forward and backward, one
    jit), `run_s` (its first run), `errors` (`{"out" | "d<input>": {"max_abs", "rel",
    "finite"}}`), `tolerance` and `passed`; or `error` and `passed: False`.
  """
  record = {**case.to_json(), "interpret": jax.default_backend() != "gpu"}
  try:
    apply, arrays = make(case)
    out_shape = jax.eval_shape(lambda *a: apply("xla", *a), *arrays)
    cotangent = _normal(np.random.default_rng(1), out_shape.shape, jnp.float32)
    start = time.perf_counter()
    compiled = jax.jit(value_and_grads(apply, "pallas_gpu")).lower(*arrays, cotangent).compile()
    record["compile_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    out, grads = jax.block_until_ready(compiled(*arrays, cotangent))
    record["run_s"] = round(time.perf_counter() - start, 4)
    with jax.default_matmul_precision("highest"):
      ref_out, ref_grads = jax.jit(value_and_grads(apply, "xla"))(
          *(a.astype(jnp.float32) for a in arrays), cotangent)
  except Exception as error:  # noqa: BLE001 - a kernel that fails to compile is a result
    return {**record, "error": f"{type(error).__name__}: {error}"[:_ERROR_CHARS],
            "passed": False}
  names = ("q", "k", "v", "bias") if case.op == "attention" else ("x", "w", "b", "residual")
  errors = {"out": _error(out, ref_out)}
  errors.update({f"d{name}": _error(g, r) for name, g, r in zip(names, grads, ref_grads)})
  tolerance = TOLERANCE[case.dtype]
  passed = all(e["finite"] and e["rel"] <= tolerance["fwd" if key == "out" else "bwd"]
               for key, e in errors.items())
  return {**record, "errors": errors, "tolerance": tolerance, "passed": passed}


def compare_compile_table(table: Path, budget_s: float) -> dict:
  """`bench.gpu_compile.check_against_device` on the sm_90a table, where it can run.

  Args:
    table: the JSON of `python -m bench gpu-compile` (bench/results/gpu_compile_sm90.json).
    budget_s: seconds it may take (passed on where the function takes `budget_seconds`).

  Returns:
    `{"status": "ok", ...its result}`, or a status of "not available" (no such module or
    function), "skipped" (no GPU, no table, or under 5 s left) or "error", with the reason.
  """
  if jax.default_backend() != "gpu":
    return {"status": "skipped", "reason": "needs a GPU"}
  try:
    from bench import gpu_compile
    check = gpu_compile.check_against_device
  except (ImportError, AttributeError) as error:
    return {"status": "not available", "reason": f"{type(error).__name__}: {error}"}
  if not table.exists():
    return {"status": "skipped",
            "reason": f"no table {table.name} (python -m bench gpu-compile writes it)"}
  if budget_s < _MIN_COMPILE_CHECK_S:
    return {"status": "skipped", "reason": f"budget: {max(budget_s, 0):.0f} s left"}
  kwargs = ({"budget_seconds": budget_s}
            if "budget_seconds" in inspect.signature(check).parameters else {})
  try:
    return {"status": "ok", **check(json.loads(table.read_text()), **kwargs)}
  except Exception as error:  # noqa: BLE001 - a failed comparison is a result
    return {"status": "error", "error": f"{type(error).__name__}: {error}"[:_ERROR_CHARS]}
