"""Runs the default trainer (examples/mnist_cnn.py) in the project's venv.

Usage: python3 scripts/train.py [flags of examples/mnist_cnn.py]

It installs dlopt with the `data` and `plot` extras only (no test tools, no benchmark
peers).
"""

import sys

from _venv import TRAIN_EXTRAS, run_in_venv

if __name__ == "__main__":
  sys.exit(run_in_venv(["examples/mnist_cnn.py", *sys.argv[1:]], extras=TRAIN_EXTRAS))
