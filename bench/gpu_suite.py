"""Everything a lent GPU should show, in one command within a time budget.

    PYTHONPATH=. python3 -m bench gpu-suite --budget 420   # on the GPU, bare checkout
    python -m bench gpu-suite --tiny --budget 60           # off the GPU: interpret mode
    python -m bench gpu-suite --parts smoke attention      # only those parts
    python bench/gpu_suite.py                              # the same, as a script

It imports only jax, numpy, `kernels` and `bench` (no dlopt, nothing installed), and runs
four parts in order, each within its share of `--budget` seconds (shares carry over: a part
that finishes early leaves its time to the rest):

1. smoke: every Pallas GPU kernel once, compiled (`impl="pallas_gpu"`), forward and
   gradients against the XLA reference, bfloat16 and float32 (`bench._gpu_smoke`); then
   `bench.gpu_compile.check_against_device` on the sm_90a table, where available.
2. attention: TFLOP/s, forward and forward+backward, Pallas vs cuDNN
   (`jax.nn.dot_product_attention(implementation="cudnn")`) vs XLA, bfloat16, head dims
   64 and 128, causal and not, seq 1k..16k at 16k tokens per batch and hidden 2048
   (heads = 2048 / head_dim), FlashAttention's FLOP count (`bench.attention`).
3. conv: the fused Pallas convolution vs XLA's (cuDNN) convolution plus the unfused
   epilogue on ResNet-50, MobileNetV2 (depthwise) and MNIST layers and `causal_conv1d`,
   with TFLOP/s and the bandwidth achieved on the bytes moved once (`bench.conv`).
4. tests: `pytest tests/kernels` on the accelerator with what is left of the budget as its
   timeout (`--collect-only` under --tiny); its output goes to `<json stem>_tests.txt`.

Every part checks the time left before it starts (a part with less than its minimum left is
recorded as skipped), and a sweep stops starting points once its share is spent, recording
which it skipped. The JSON (`gpu_suite_<backend>.json` under --out) is rewritten after every
point and every part, so a run cut off at the limit still returns what it measured. A short
table comes last. Exits 1 if a smoke case or a test failed or a part raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__" and not __package__:  # `python bench/gpu_suite.py`, as before
  sys.path[0] = str(ROOT)
  from bench._runner import main as _main
  sys.exit(_main(["gpu-suite", *sys.argv[1:]]))

from bench._env import RESULTS  # noqa: E402
from bench._runner import write_result  # noqa: E402

DEFAULT_BUDGET_S = 420.0
TOKENS = 16384  # batch * seq of every attention point (FlashAttention-3's setup)
HIDDEN = 2048  # heads * head_dim of every attention point
COMPILE_TABLE = RESULTS / "gpu_compile_sm90.json"  # what `python -m bench gpu-compile` writes
_COMPILE_CHECK_S = 45.0  # at most, for the compile-table comparison
_ERROR_CHARS = 2000


@dataclasses.dataclass
class Context:
  """What a part gets: the flags, its own record to fill, its deadline, and `save`.

  Attributes:
    args: the parsed flags.
    entry: the part's record in the suite's JSON, filled in place.
    deadline: `time.perf_counter()` after which the part starts nothing new.
    save: rewrites the suite's JSON (call it after every point).
  """

  args: argparse.Namespace
  entry: dict
  deadline: float
  save: Callable[[], Path]

  def left(self) -> float:
    """Seconds left of this part's share."""
    return self.deadline - time.perf_counter()


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of the suite.

  Attributes:
    name: its key in the JSON's `parts`.
    run: `(Context) -> status` ("ok", "partial", "failed", "timeout").
    seconds: its planned share, full run and --tiny; the budget is split in proportion.
    min_seconds: it is skipped if less than this is left of the whole budget, full / tiny.
  """

  name: str
  run: Callable[[Context], str]
  seconds: tuple[float, float]
  min_seconds: tuple[float, float]


def sweep(ctx: Context, items: list, run_item: Callable, describe: Callable,
          key: str = "points") -> str:
  """Runs `run_item(item)` for each item while the part's share lasts.

  An item starts only if the share has at least as long left as the slowest item so far
  took; the others are listed, described, under `ctx.entry["skipped"]`.

  Returns:
    "ok" if every item ran, "partial" if the budget cut the sweep.
  """
  done = ctx.entry.setdefault(key, [])
  slowest = 0.0
  for i, item in enumerate(items):
    if ctx.left() < slowest:
      ctx.entry["skipped"] = [describe(rest) for rest in items[i:]]
      ctx.entry["skipped_reason"] = (f"budget: {max(ctx.left(), 0):.0f} s left of the part's "
                                     f"share, the slowest point took {slowest:.0f} s")
      ctx.save()
      return "partial"
    start = time.perf_counter()
    done.append(run_item(item))
    slowest = max(slowest, time.perf_counter() - start)
    ctx.save()
  return "ok"


# --- 1. smoke ------------------------------------------------------------------------------

def smoke_part(ctx: Context) -> str:
  """Every Pallas GPU kernel once against its reference; then the compile-table check."""
  from bench import _gpu_smoke

  def run_case(case):
    record = _gpu_smoke.run_case(case)
    print(f"smoke {case.name:<40} {_smoke_line(record)}", flush=True)
    return record

  status = sweep(ctx, _gpu_smoke.cases(ctx.args.tiny, ctx.args.quick), run_case,
                 lambda case: case.name, key="cases")
  ctx.entry["summary"] = _smoke_summary(ctx.entry["cases"])
  ctx.entry["compile_table"] = _gpu_smoke.compare_compile_table(
      COMPILE_TABLE, min(_COMPILE_CHECK_S, ctx.left()))
  ctx.entry["headline"] = _smoke_headline(ctx.entry)
  return "failed" if ctx.entry["summary"]["failed"] else status


def _smoke_line(record: dict) -> str:
  if "error" in record:
    return f"ERROR {record['error'][:200]}"
  worst = max(record["errors"].values(), key=lambda e: e["rel"])
  return (f"{'pass' if record['passed'] else 'FAIL'}  max rel {worst['rel']:.1e}  "
          f"compile {record['compile_s']:.1f} s")


def _smoke_summary(records: list[dict]) -> dict:
  """Passed count, failed names, and the worst relative error per dtype (fwd, bwd)."""
  worst = {}
  for record in records:
    for key, error in record.get("errors", {}).items():
      slot = worst.setdefault(record["dtype"], {"fwd": 0.0, "bwd": 0.0})
      kind = "fwd" if key == "out" else "bwd"
      slot[kind] = max(slot[kind], error["rel"])
  return {"passed": sum(r["passed"] for r in records),
          "failed": [r["name"] for r in records if not r["passed"]],
          "max_rel": worst,
          "compile_s": round(sum(r.get("compile_s", 0.0) for r in records), 1)}


def _smoke_headline(entry: dict) -> str:
  summary, ran = entry["summary"], len(entry["cases"])
  worst = ", ".join(f"{dtype} {e['fwd']:.0e}/{e['bwd']:.0e}"
                    for dtype, e in summary["max_rel"].items())
  table = entry["compile_table"]
  table_text = (f"{table.get('mismatches')} mismatches" if table["status"] == "ok"
                else f"{table['status']} ({table.get('reason') or table.get('error', '')})")
  text = (f"{summary['passed']}/{ran} passed (max rel fwd/bwd: {worst or '-'}); "
          f"compile table: {table_text}")
  return text + (f"; {len(entry['skipped'])} skipped" if entry.get("skipped") else "")


# --- 2. attention --------------------------------------------------------------------------

def attention_grid(args) -> list[dict]:
  """The attention points, the most telling first: every (head dim, causal) at 4k first."""
  if args.tiny:
    return [{"seq": 64, "head_dim": 32, "causal": True}]
  seqs = [4096, 16384, 1024] if args.quick else [4096, 16384, 1024, 8192, 2048]
  return [{"seq": seq, "head_dim": head_dim, "causal": causal}
          for seq in seqs for head_dim in (64, 128) for causal in (False, True)]


def attention_impls(backend: str) -> list[str]:
  """Pallas and XLA everywhere (Pallas interpreted off the GPU), cuDNN on NVIDIA GPUs."""
  from bench import attention
  return ["pallas", *(["cudnn"] if "cudnn" in attention.available_impls(backend) else []),
          "xla"]


def attention_part(ctx: Context) -> str:
  """Pallas vs cuDNN vs XLA attention, TFLOP/s forward and forward+backward."""
  import jax
  impls = attention_impls(jax.default_backend())
  tiny = ctx.args.tiny
  config = {"impls": impls, "dtype": "float32" if tiny else "bfloat16",
            "tokens": 128 if tiny else TOKENS, "hidden": 64 if tiny else HIDDEN,
            "reps": ctx.args.runs,
            "flops": "4*B*H*T*T*D forward (x0.5 causal); fwd+bwd = 3.5x forward"}
  ctx.entry["config"] = config
  status = sweep(ctx, attention_grid(ctx.args),
                 lambda point: _attention_point(point, config), dict)
  ctx.entry["headline"] = _attention_headline(ctx.entry["points"], impls)
  return status


def _attention_point(point: dict, config: dict) -> dict:
  """Every path at one (seq, head dim, causal), and the Pallas ratios of their TFLOP/s."""
  import jax.numpy as jnp

  from bench import attention
  seq, head_dim, causal = point["seq"], point["head_dim"], point["causal"]
  batch, heads = max(1, config["tokens"] // seq), max(1, config["hidden"] // head_dim)
  start = time.perf_counter()
  paths = {}
  for impl in config["impls"]:
    result = attention.run_point(impl, batch, seq, heads, head_dim, causal,
                                 getattr(jnp, config["dtype"]), config["reps"])
    paths[impl] = {"fwd": result["fwd"], "fwd_bwd": result["fwd_bwd"]}
  record = {**point, "batch": batch, "heads": heads, "paths": paths,
            "wall_s": round(time.perf_counter() - start, 2)}
  for other in config["impls"][1:]:
    record[f"pallas_vs_{other}"] = {mode: _ratio(paths["pallas"][mode], paths[other][mode])
                                    for mode in ("fwd", "fwd_bwd")}
  print(f"attention seq={seq:<5} D={head_dim:<3} causal={'y' if causal else 'n'} "
        + "  ".join(f"{impl} {_tflops(p['fwd'])}/{_tflops(p['fwd_bwd'])}"
                    for impl, p in paths.items()) + "  TFLOP/s fwd/f+b", flush=True)
  return record


def _ratio(mine: dict, theirs: dict) -> float | None:
  if "tflops" not in mine or "tflops" not in theirs:
    return None
  return mine["tflops"] / theirs["tflops"]


def _tflops(result: dict) -> str:
  return f"{result['tflops']:.3g}" if "tflops" in result else "err"


def _attention_headline(points: list[dict], impls: list[str]) -> str:
  """Best Pallas/<first other path> TFLOP/s ratio per head dim, forward and fwd+bwd."""
  other = "cudnn" if "cudnn" in impls else "xla"
  cells = []
  for mode in ("fwd", "fwd_bwd"):
    best = {}
    for point in points:
      ratio = point[f"pallas_vs_{other}"][mode]
      if ratio is not None:
        best[point["head_dim"]] = max(best.get(point["head_dim"], 0.0), ratio)
    cells.append(f"{mode} " + (" ".join(f"D{d} {r:.2f}x" for d, r in sorted(best.items()))
                               or "-"))
  return f"points: {len(points)}; best Pallas/{other}: " + "; ".join(cells)


# --- 3. conv -------------------------------------------------------------------------------

def conv_items(args, accelerator: bool) -> list[dict]:
  """The conv points, the most telling first: every layer in bfloat16 at batch 128 first."""
  from bench import conv
  if args.tiny:
    return [{"layer": "mnist_conv1", "batch": 4, "dtype": "float32"},
            {"causal": (2, 64, 16), "dtype": "float32"}]
  dtypes = ["bfloat16", "float32"] if accelerator else ["float32"]
  causal = [(32, 1024, 256), (8, 4096, 512)]
  items = []
  for dtype in dtypes:
    items += [{"layer": name, "batch": 128, "dtype": dtype} for name in conv.LAYERS]
    items += [{"causal": shape, "dtype": dtype} for shape in causal]
  if not args.quick:
    items += [{"layer": name, "batch": batch, "dtype": dtypes[0]}
              for batch in (32, 256) for name in conv.LAYERS]
  return items


def conv_part(ctx: Context) -> str:
  """Fused conv vs XLA conv + epilogue: time, TFLOP/s and bandwidth per layer."""
  import jax
  accelerator = jax.default_backend() in ("gpu", "tpu")
  fused_impl = "pallas" if accelerator else "xla_implicit_gemm"
  ctx.entry["config"] = {"fused_impl": fused_impl, "reps": ctx.args.runs,
                         "bytes": "arguments and results of the jitted function, once",
                         "note": None if accelerator else
                         "off an accelerator 'fused' is xla_implicit_gemm (smoke ran the kernels)"}
  status = sweep(ctx, conv_items(ctx.args, accelerator),
                 lambda item: _conv_point(item, fused_impl, ctx.args.runs), dict)
  ctx.entry["headline"] = _conv_headline(ctx.entry["points"])
  return status


def _conv_point(item: dict, fused_impl: str, reps: int) -> dict:
  import jax.numpy as jnp

  from bench import conv
  dtype = getattr(jnp, item["dtype"])
  if "causal" in item:
    batch, seq, channels = item["causal"]
    record = conv.run_causal(batch, seq, channels, 4, fused_impl, reps, dtype)
  else:
    record = conv.run_layer(item["layer"], item["batch"], dtype, fused_impl, reps)
  print(f"conv {conv._row(record)}", flush=True)
  return record


def _conv_headline(points: list[dict]) -> str:
  """Best fused/XLA speedup forward and fwd+bwd, and the fused path's best bandwidth."""
  cells = []
  for mode in ("fwd", "fwd_bwd"):
    speedups = [p[mode]["speedup"] for p in points if "speedup" in p[mode]]
    cells.append(f"{mode} {max(speedups):.2f}x" if speedups else f"{mode} -")
  rates = [p[mode]["fused"]["gbps"] for p in points for mode in ("fwd", "fwd_bwd")
           if "gbps" in p[mode]["fused"]]
  peak = f"; fused peak {max(rates):.1f} GB/s" if rates else ""
  return f"points: {len(points)}; best fused/xla: " + ", ".join(cells) + peak


# --- 4. tests ------------------------------------------------------------------------------

def tests_part(ctx: Context) -> str:
  """`pytest tests/kernels` with the time left as its timeout; output next to the JSON."""
  command = [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-x",
             "-p", "no:cacheprovider", *(["--collect-only"] if ctx.args.tiny else [])]
  timeout = max(1.0, ctx.left())
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
         # The suite's process holds most of the GPU's memory already.
         "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  ctx.entry.update(command=" ".join(["python3", *command[1:]]), timeout_s=round(timeout, 1))
  try:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    output, returncode = done.stdout + done.stderr, done.returncode
  except subprocess.TimeoutExpired as expired:
    output, returncode = _text(expired.stdout) + _text(expired.stderr), None
  path = ctx.args.out / f"{ctx.args.suite_name}_tests.txt"
  path.write_text(output)
  lines = output.strip().splitlines()
  last = lines[-1] if lines else ""
  summary = last if returncode is not None else f"timed out after {timeout:.0f} s: {last}"
  ctx.entry.update(returncode=returncode, summary=summary[:500], output=path.name,
                   headline=summary[:120])
  print(f"tests: {summary}", flush=True)
  if returncode is None:
    return "timeout"
  return "ok" if returncode == 0 else "failed"


def _text(output) -> str:
  if output is None:
    return ""
  return output.decode(errors="replace") if isinstance(output, bytes) else output


PARTS = (
    Part("smoke", smoke_part, seconds=(60, 28), min_seconds=(10, 2)),
    Part("attention", attention_part, seconds=(170, 10), min_seconds=(20, 2)),
    Part("conv", conv_part, seconds=(90, 14), min_seconds=(10, 2)),
    Part("tests", tests_part, seconds=(100, 8), min_seconds=(20, 5)),
)


# --- the suite -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench gpu-suite` (besides --runs, --tiny, --out)."""
  parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                      help=f"seconds for the whole suite (default {DEFAULT_BUDGET_S:.0f}); "
                           "parts and points that do not fit are recorded as skipped")
  parser.add_argument("--quick", action="store_true",
                      help="fewer points: seqs 4k, 16k, 1k; conv layers at batch 128 only")
  parser.add_argument("--parts", nargs="+", choices=[part.name for part in PARTS],
                      default=None, help="only these parts (default all)")
  parser.add_argument("--skip-tests", action="store_true", help="leave out the tests part")


def run(args: argparse.Namespace) -> int:
  """Runs the parts in order within `--budget`; writes the JSON after every part and point."""
  start = time.perf_counter()
  import jax
  backend = jax.default_backend()
  args.suite_name = f"gpu_suite_{backend}"
  record = {"benchmark": "gpu_suite", "status": "running", "budget_s": args.budget,
            "elapsed_s": 0.0, "backend": backend, "interpret": backend != "gpu",
            "parts": {part.name: {"status": "pending"} for part in PARTS}}

  def save() -> Path:
    record["elapsed_s"] = round(time.perf_counter() - start, 1)
    return write_result(args, args.suite_name, record)

  chosen = [part for part in PARTS if _chosen(part, args, record["parts"][part.name])]
  save()
  for i, part in enumerate(chosen):
    left = args.budget - (time.perf_counter() - start)
    _run_part(part, chosen[i:], left, args, record["parts"][part.name], save)
  record["status"] = "done"
  path = save()
  print(f"\nwrote {path}\n")
  print(summary_table(record))
  failed = any(p["status"] in ("failed", "error") for p in record["parts"].values())
  return 1 if failed else 0


def _chosen(part: Part, args, entry: dict) -> bool:
  """Whether `part` runs under the flags; if not, `entry` says why."""
  if args.parts is not None and part.name not in args.parts:
    entry.update(status="skipped", reason="not in --parts")
    return False
  if part.name == "tests" and args.skip_tests:
    entry.update(status="skipped", reason="--skip-tests")
    return False
  return True


def _run_part(part: Part, remaining: list[Part], left: float, args, entry: dict,
              save: Callable[[], Path]) -> None:
  """Runs one part in its share of `left` seconds, or records it as skipped."""
  tiny = int(bool(args.tiny))
  if left < part.min_seconds[tiny]:
    entry.update(status="skipped", reason=f"budget: {max(left, 0):.0f} s left, the part "
                                          f"needs at least {part.min_seconds[tiny]:.0f} s")
    save()
    return
  share = left * part.seconds[tiny] / sum(p.seconds[tiny] for p in remaining)
  entry.update(status="running", share_s=round(share, 1))
  save()
  start = time.perf_counter()
  try:
    entry["status"] = part.run(Context(args, entry, start + share, save))
  except Exception as error:  # noqa: BLE001 - one broken part must not lose the others
    entry.update(status="error", error=f"{type(error).__name__}: {error}"[:_ERROR_CHARS],
                 traceback=traceback.format_exc()[-_ERROR_CHARS:])
    print(f"{part.name}: {entry['error']}", file=sys.stderr, flush=True)
  entry["wall_s"] = round(time.perf_counter() - start, 1)
  save()


def summary_table(record: dict) -> str:
  """Each part's status, wall seconds and headline, one line each."""
  lines = [f"{'part':<10} {'status':<8} {'wall s':>7}  headline"]
  for name, entry in record["parts"].items():
    headline = entry.get("headline") or entry.get("reason") or entry.get("error", "")
    wall = f"{entry['wall_s']:.1f}" if "wall_s" in entry else "-"
    lines.append(f"{name:<10} {entry['status']:<8} {wall:>7}  {headline}")
  return "\n".join(lines)
