"""Runs `python -m bench` in the project's venv, with the benchmark peers installed.

Usage: python3 scripts/bench.py COMMAND [flags]     (e.g. peers-throughput, time-to-accuracy)

The peers (PyTorch, Keras) come in the `bench` extra, installed here on first use: on an
ordinary Linux machine pip picks torch's CUDA build, several GB. The other bench commands
run in the venv as it is.
"""

import sys

from _venv import BENCH_EXTRAS, run_in_venv

if __name__ == "__main__":
  sys.exit(run_in_venv(["-m", "bench", *sys.argv[1:]], extras=BENCH_EXTRAS))
