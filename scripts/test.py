"""Runs the whole test suite in the project's venv.

Usage: python3 scripts/test.py [pytest flags]
"""

import sys

from _venv import run_in_venv

if __name__ == "__main__":
  sys.exit(run_in_venv(["-m", "pytest", "-n", "2", *sys.argv[1:]]))
