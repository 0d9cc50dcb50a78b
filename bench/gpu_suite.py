"""Everything a lent GPU should show, in one command: correctness first, then speed.

    python -m bench gpu-suite            # on the GPU machine, from the repository root
    python -m bench gpu-suite --quick    # fewer points (passed to both benchmarks)
    python bench/gpu_suite.py            # the same, as a script
    python -m bench gpu-suite --tiny     # a smoke run: collects the tests, tiny benchmarks

1. The kernel tests (`tests/kernels`) on the accelerator: `impl="pallas_gpu"` compiles the
   Triton kernels for real there (interpret mode is only used off the GPU); the pytest
   output goes to gpu_tests.txt next to the JSON.
2. `python -m bench attention`: Pallas vs XLA vs cuDNN, forward and forward+backward,
   TFLOP/s and memory, seq 512..16k, head dims 64 and 128, causal and not, bf16; JSON
   attention_<backend>.json.
3. `python -m bench conv`: the fused Pallas convolution vs XLA's (cuDNN) convolution plus
   the unfused epilogue on ResNet-50 and MNIST CNN layers, batch 32..256, bf16 and f32, and
   the MNIST CNN's training step per conv_impl; JSON conv_<backend>.json.

Writes gpu_suite_<backend>.json (the test summary, each part's exit code and wall time)
and prints a short table last. Exits non-zero if the tests fail (the timings still run, so
a partial picture comes back).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__" and not __package__:  # `python bench/gpu_suite.py`, as before
  sys.path[0] = str(ROOT)
  from bench._runner import main as _main
  sys.exit(_main(["gpu-suite", *sys.argv[1:]]))

from bench._runner import spread, write_result  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench gpu-suite` (besides --runs, --tiny, --out)."""
  parser.add_argument("--quick", action="store_true", help="fewer points in both benchmarks")
  # --runs, --tiny and --out are passed on to both benchmarks.
  parser.add_argument("--skip-tests", action="store_true", help="only the benchmarks")


def _timed(command: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
  start = time.perf_counter()
  done = subprocess.run(command, cwd=ROOT, **kwargs)
  return done, time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
  """Runs the kernel tests, then the attention and conv benchmarks; writes the summary."""
  import jax
  backend = jax.default_backend()
  args.out.mkdir(parents=True, exist_ok=True)
  parts = {}
  tests_code = 0
  if not args.skip_tests:
    # --tiny collects the tests without running them: the interpreted kernels take minutes.
    pytest = [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-x",
              "-p", "no:cacheprovider", *(["--collect-only"] if args.tiny else [])]
    tests, seconds = _timed(pytest, capture_output=True, text=True)
    (args.out / "gpu_tests.txt").write_text(tests.stdout[-20000:] + tests.stderr[-5000:])
    lines = tests.stdout.strip().splitlines()
    summary = lines[-1] if lines else tests.stderr[-2000:]
    print(summary, flush=True)
    tests_code = tests.returncode
    parts["tests"] = {"command": " ".join(pytest[1:]), "returncode": tests_code,
                      "summary": summary, "wall_seconds": spread([seconds])}
  passed = [*(["--quick"] if args.quick else []), *(["--tiny"] if args.tiny else []),
            "--out", str(args.out), *(["--runs", str(args.runs)] if args.runs else [])]
  for name in ("attention", "conv"):
    done, seconds = _timed([sys.executable, "-m", "bench", name, *passed])
    parts[name] = {"command": " ".join(["python", "-m", "bench", name, *passed]),
                   "returncode": done.returncode, "wall_seconds": spread([seconds]),
                   "result": f"{name}_{backend}.json"}
  args.runs = 1  # the suite ran once; --runs went to the benchmarks
  path = write_result(args, f"gpu_suite_{backend}", {"benchmark": "gpu_suite",
                                                     "parts": parts})
  print(f"\nwrote {path}\n\n{'part':<10} {'exit':>4} {'wall s':>8}  result")
  for name, part in parts.items():
    print(f"{name:<10} {part['returncode']:>4} {part['wall_seconds']['median']:>8.1f}  "
          f"{part.get('summary') or _headline(args.out / part['result'])}")
  return tests_code or max(part["returncode"] for part in parts.values())


def _headline(path: Path) -> str:
  """One line on a benchmark's result file: how many points it holds and how many failed."""
  if not path.exists():
    return f"{path.name} missing"
  record = json.loads(path.read_text())
  points = record.get("sweep", []) + record.get("records", [])
  errors = sum("error" in json.dumps(point) for point in points)
  return f"{path.name}: {len(points)} points, {errors} with errors"
