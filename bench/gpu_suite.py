"""Everything a lent GPU should show, in one command: correctness first, then speed.

    python bench/gpu_suite.py            # on the GPU machine, from the repository root
    python bench/gpu_suite.py --quick    # fewer points (passed to both benchmarks)

1. The kernel tests (`tests/kernels`) on the accelerator: `impl="pallas_gpu"` compiles the
   Triton kernels for real there (interpret mode is only used off the GPU); the results go
   to bench/results/gpu_tests.txt.
2. `bench/attention.py`: Pallas vs XLA vs cuDNN, forward and forward+backward, TFLOP/s
   and memory, seq 512..16k, head dims 64 and 128, causal and not, bf16; JSON under
   bench/results/attention_gpu.json.
3. `bench/conv.py`: the fused Pallas convolution vs XLA's (cuDNN) convolution plus the
   unfused epilogue on ResNet-50 and MNIST CNN layers, batch 32..256, bf16 and f32, and
   the MNIST CNN's training step per conv_impl; JSON under bench/results/conv_gpu.json and
   a table printed last.

Exits non-zero if the tests fail (the timings still run, so a partial picture comes back).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> int:
  RESULTS.mkdir(parents=True, exist_ok=True)
  tests = subprocess.run([sys.executable, "-m", "pytest", "tests/kernels", "-q", "-x",
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
  (RESULTS / "gpu_tests.txt").write_text(tests.stdout[-20000:] + tests.stderr[-5000:])
  print(tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-2000:])
  codes = [subprocess.run([sys.executable, script, *sys.argv[1:]], cwd=ROOT).returncode
           for script in ("bench/attention.py", "bench/conv.py")]
  return tests.returncode or max(codes)


if __name__ == "__main__":
  sys.exit(main())
