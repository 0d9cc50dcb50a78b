"""Runs the default trainer (examples/mnist_cnn.py) in the project's venv.

Usage: python3 scripts/train.py [flags of examples/mnist_cnn.py]
"""

import sys

from _venv import run_in_venv

if __name__ == "__main__":
  sys.exit(run_in_venv(["examples/mnist_cnn.py", *sys.argv[1:]]))
