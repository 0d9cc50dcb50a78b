"""Attention microbenchmark: time, TFLOP/s and compiled memory of every attention path.

    python -m bench attention                       # the accelerator sweep
    python -m bench attention --quick --cpu-target --crossover   # what a CPU can show
    python -m bench attention --tiny                # a smoke run of seconds

Paths: `kernels.attention(impl=...)` for "pallas" (accelerators only), "xla" (the
reference) and "xla_chunked" (blockwise, linear memory), and on NVIDIA GPUs cuDNN through
`jax.nn.dot_product_attention(implementation="cudnn")`. The sweep keeps the work per
point constant: `batch * seq = tokens`, so the batch shrinks as the sequence grows.

FLOPs, as the FlashAttention papers count them: the forward does two matmuls,
`4 * B * Hq * Tq * Tk * D`, halved for causal attention; the backward does five, 2.5 times
the forward, so forward+backward counts 3.5 times the forward. Softmax work is not counted.

Memory is what XLA's compiled memory analysis reports for the jitted function, temporary
plus output bytes (arguments excluded); it works on every backend, unlike the
process-cumulative peak of `Device.memory_stats()`.

Writes bench/results/attention_<backend>.json (with machine, versions, date, command and
the min/median/max over `--runs` of every time) and prints a table last. `--cpu-target` measures the CPU goal of the chunked path:
forward+backward at seq 8192 (B=1, H=4, D=64, float32) against the reference, peak memory
ratio <= 1/8 and time ratio <= 1.5. `--crossover` times both XLA paths over short
sequences to place `kernels.attention._CHUNKED_FROM_LOGITS`.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import kernels
from bench._runner import write_result
from bench._timing import measure

_DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}
_ERROR_CHARS = 300  # of an error message kept in the JSON


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int,
                    causal: bool, backward: bool) -> float:
  """FlashAttention's count: 4 B H Tq Tk D forward, halved if causal, x3.5 with backward."""
  flops = 4.0 * batch * heads * q_len * kv_len * head_dim * (0.5 if causal else 1.0)
  return flops * (3.5 if backward else 1.0)


def attention_fn(impl: str, causal: bool, **options):
  """`(q, k, v) -> out` of one path ("cudnn" is `jax.nn`'s, through `kernels.attention`);
  `options` go to `kernels.attention`."""
  return lambda q, k, v: kernels.attention(q, k, v, causal=causal, impl=impl, **options)


def forward_backward_fn(fn):
  """`(q, k, v, d_out) -> (dq, dk, dv)`: the forward and its VJP."""
  return lambda q, k, v, d_out: jax.vjp(fn, q, k, v)[1](d_out)


def run_point(impl: str, batch: int, seq: int, heads: int, head_dim: int, causal: bool,
              dtype, reps: int, kv_heads: int | None = None, window=None) -> dict:
  """Forward and forward+backward of one path at one shape; errors are recorded, not raised.

  `window` is a `local_window_size`; the FLOPs counted are then those of the band.
  """
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (batch, seq, heads, head_dim), dtype)
  k, v = (jax.random.normal(key, (batch, seq, kv_heads or heads, head_dim), dtype)
          for key in keys[1:3])
  d_out = jax.random.normal(keys[3], q.shape, dtype)
  fn = attention_fn(impl, causal, **({} if window is None else
                                     {"local_window_size": tuple(window)}))
  record = {"impl": impl, "batch": batch, "seq": seq, "heads": heads,
            "kv_heads": kv_heads or heads, "head_dim": head_dim, "causal": causal,
            "dtype": jnp.dtype(dtype).name}
  if window is not None:
    record["local_window_size"] = list(window)
  for name, f, args, backward in (("fwd", fn, (q, k, v), False),
                                  ("fwd_bwd", forward_backward_fn(fn), (q, k, v, d_out), True)):
    try:
      result = measure(f, args, reps)
    except Exception as error:  # noqa: BLE001 - an OOM or unsupported shape is a result
      record[name] = {"error": f"{type(error).__name__}: {error}"[:_ERROR_CHARS]}
      continue
    flops = attention_flops(batch, heads, seq, seq, head_dim, causal, backward)
    if window is not None:  # the band's share of the (causal) square
      flops *= min(1.0, (sum(window) + 1) / (seq * (0.5 if causal else 1.0)))
    result["tflops"] = flops / result["median_s"] / 1e12
    record[name] = result
  return record


def available_impls(backend: str) -> list[str]:
  """The paths worth timing on `backend`: Pallas only on accelerators, cuDNN on NVIDIA."""
  impls = ["xla", "xla_chunked"]
  if backend in ("gpu", "tpu"):
    impls.insert(0, "pallas")
  if backend == "gpu" and "nvidia" in jax.devices()[0].device_kind.lower():
    impls.append("cudnn")
  return impls


def sweep(args, backend: str) -> list[dict]:
  """Every path over the seq x head_dim x causal grid at constant tokens per step."""
  records = []
  for seq in args.seqs:
    batch = max(1, args.tokens // seq)
    for head_dim in args.head_dims:
      for causal in (False, True):
        for impl in args.impls or available_impls(backend):
          record = run_point(impl, batch, seq, args.heads, head_dim, causal,
                             _DTYPES[args.dtype], args.reps)
          records.append(record)
          print(_row(record), flush=True)
  return records


def cpu_target(reps: int) -> dict:
  """xla_chunked vs the reference, forward+backward at seq 8192, B=1, H=4, D=64, float32."""
  shape = dict(batch=1, seq=8192, heads=4, head_dim=64, dtype=jnp.float32, reps=reps)
  result = {"shape": {**shape, "dtype": "float32"},
            "goal": "memory ratio <= 1/8, time ratio <= 1.5"}
  for causal in (False, True):
    reference = run_point("xla", causal=causal, **shape)
    chunked = run_point("xla_chunked", causal=causal, **shape)
    entry = {"xla": reference, "xla_chunked": chunked}
    ref, chk = reference["fwd_bwd"], chunked["fwd_bwd"]
    if "error" not in ref and "error" not in chk:
      entry["memory_ratio"] = chk["memory_bytes"] / ref["memory_bytes"]
      entry["time_ratio"] = chk["median_s"] / ref["median_s"]
      entry["fwd_time_ratio"] = chunked["fwd"]["median_s"] / reference["fwd"]["median_s"]
    print(f"cpu target causal={causal}: memory ratio {entry.get('memory_ratio', float('nan')):.4f}"
          f", fwd+bwd time ratio {entry.get('time_ratio', float('nan')):.3f}", flush=True)
    result["causal" if causal else "full"] = entry
  return result


def crossover(reps: int) -> list[dict]:
  """Both XLA paths at short sequences (B=1, H=4, D=64, float32): where chunking pays."""
  records = []
  for seq in (256, 512, 1024, 1536, 2048, 3072, 4096):
    for impl in ("xla", "xla_chunked"):
      record = run_point(impl, 1, seq, 4, 64, False, jnp.float32, reps)
      records.append(record)
      print(_row(record), flush=True)
  return records


def window(reps: int, seq: int = 4096, size: int = 256) -> dict:
  """Causal attention against a causal sliding window of `size` keys (B=1, H=4, D=64,
  float32): the reference masks the same square, the chunked path skips the key blocks
  outside the band, so its time should fall with the band's share."""
  result = {"shape": dict(batch=1, seq=seq, heads=4, head_dim=64, dtype="float32"),
            "window": [size, 0]}
  for impl in ("xla", "xla_chunked"):
    causal = run_point(impl, 1, seq, 4, 64, True, jnp.float32, reps)
    banded = run_point(impl, 1, seq, 4, 64, True, jnp.float32, reps, window=(size, 0))
    entry = {"causal": causal, "window": banded}
    if "error" not in causal["fwd_bwd"] and "error" not in banded["fwd_bwd"]:
      entry["fwd_bwd_speedup"] = causal["fwd_bwd"]["median_s"] / banded["fwd_bwd"]["median_s"]
      entry["fwd_speedup"] = causal["fwd"]["median_s"] / banded["fwd"]["median_s"]
    print(f"window {size} at seq {seq}, {impl}: fwd+bwd {entry.get('fwd_bwd_speedup', 0):.2f}x, "
          f"fwd {entry.get('fwd_speedup', 0):.2f}x faster than causal", flush=True)
    result[impl] = entry
  return result


def _fmt(entry: dict, key: str, scale: float = 1.0, spec: str = ".2f") -> str:
  if "error" in entry:
    return "err"
  value = entry.get(key)
  return "-" if value is None else format(value * scale, spec)


def _row(record: dict) -> str:
  fwd, both = record["fwd"], record["fwd_bwd"]
  return (f"{record['impl']:<12} {record['batch']:>4} {record['seq']:>6} {record['head_dim']:>4} "
          f"{'y' if record['causal'] else 'n':>6} "
          f"{_fmt(fwd, 'median_s', 1e3):>10} {_fmt(fwd, 'tflops', 1, '.3f'):>8} "
          f"{_fmt(both, 'median_s', 1e3):>10} {_fmt(both, 'tflops', 1, '.3f'):>8} "
          f"{_fmt(both, 'memory_bytes', 2**-20, '.1f'):>10}")


_HEADER = (f"{'impl':<12} {'B':>4} {'seq':>6} {'D':>4} {'causal':>6} {'fwd ms':>10} "
           f"{'TFLOP/s':>8} {'f+b ms':>10} {'TFLOP/s':>8} {'f+b MiB':>10}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench attention` (besides --runs, --tiny, --out)."""
  parser.add_argument("--quick", action="store_true",
                      help="small sizes for a CPU: seqs 256..2048, 4096 tokens, 4 heads")
  parser.add_argument("--seqs", type=int, nargs="+", help="sequence lengths of the sweep")
  parser.add_argument("--head-dims", type=int, nargs="+", default=None,
                      help="head dims of the sweep (default 64 128)")
  parser.add_argument("--tokens", type=int, help="batch * seq per point (default 16384)")
  parser.add_argument("--heads", type=int, help="query heads (default 16)")
  parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                      help="dtype of the sweep (default bfloat16, tiny float32)")
  parser.add_argument("--impls", nargs="+", help="paths to time (default: all available)")
  parser.add_argument("--no-sweep", action="store_true", help="skip the sweep")
  parser.add_argument("--cpu-target", action="store_true",
                      help="xla_chunked vs xla at seq 8192, float32 (the CPU goal)")
  parser.add_argument("--crossover", action="store_true",
                      help="xla vs xla_chunked at short sequences")
  parser.add_argument("--window", action="store_true",
                      help="causal vs a causal sliding window of 256 at seq 4096 "
                           "(attention_window_<backend>.json)")


def run(args: argparse.Namespace) -> int:
  """Runs the sweep (and the CPU target, crossover) and writes attention_<backend>.json."""
  if args.tiny:
    args.seqs, args.head_dims = args.seqs or [128], args.head_dims or [32]
    args.tokens, args.heads = args.tokens or 256, args.heads or 2
    args.dtype = args.dtype or "float32"
  args.dtype = args.dtype or "bfloat16"
  args.seqs = args.seqs or ([256, 512, 1024, 2048] if args.quick
                            else [512, 1024, 2048, 4096, 8192, 16384])
  args.head_dims = args.head_dims or [64, 128]
  args.tokens = args.tokens or (4096 if args.quick else 16384)
  args.heads = args.heads or (4 if args.quick else 16)
  args.reps = args.runs = args.runs or (3 if args.quick else 5)
  backend = jax.default_backend()

  config = {key: value for key, value in vars(args).items()
            if key not in ("out", "command_line", "packages", "runs")}
  record = {"config": config,
            "flops": "4*B*Hq*Tq*Tk*D forward (x0.5 causal); fwd+bwd = 3.5x forward",
            "memory": "compiled memory_analysis(): temp + output bytes"}
  if backend == "cpu":
    record["note"] = "CPU: XLA paths only; the Pallas timings need an accelerator"
  print(_HEADER, flush=True)
  if not args.no_sweep:
    record["sweep"] = sweep(args, backend)
  if args.crossover:
    record["crossover"] = crossover(args.reps)
  if args.cpu_target:
    record["cpu_target"] = cpu_target(args.reps)
  if args.window:
    seq = 512 if args.tiny else 4096
    path = write_result(args, f"attention_window_{backend}",
                        {"config": config, "window": window(args.reps, seq, seq // 16)})
    print(f"wrote {path}")
  if args.no_sweep and not (args.crossover or args.cpu_target):
    return 0
  path = write_result(args, f"attention_{backend}", record)

  print(f"\nwrote {path}")
  print(_HEADER)
  for entry in record.get("sweep", []) + record.get("crossover", []):
    print(_row(entry))
  for name, entry in record.get("cpu_target", {}).items():
    if isinstance(entry, dict) and "time_ratio" in entry:
      print(f"cpu target {name}: memory ratio {entry['memory_ratio']:.4f}, "
            f"fwd+bwd time ratio {entry['time_ratio']:.3f}")
  return 0
