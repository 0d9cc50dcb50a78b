"""Creates or reuses the project's virtual environment (`.venv/` at the repository root).

Used by `scripts/train.py` and `scripts/test.py`; needs only Python >= 3.11 and pip. The
environment is (re)installed when `pyproject.toml` changes: a hash of it is kept in
`.venv/.dlopt-installed`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".dlopt-installed"


def _python() -> Path:
  return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# One set of extras for every script, so that train.py and test.py share the venv without
# reinstalling it for each other: the test tools and the benchmark peers (torch, keras).
EXTRAS = "test,bench"


def ensure_venv(extras: str = EXTRAS) -> Path:
  """Returns the venv's python, creating the venv and installing the project if needed."""
  if sys.version_info < (3, 11):
    sys.exit(f"dlopt needs Python >= 3.11; this is {sys.version.split()[0]}")
  if not _python().exists():
    print(f"[dlopt] creating virtual environment in {VENV}", flush=True)
    venv.EnvBuilder(with_pip=True).create(VENV)
  want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
  if not STAMP.exists() or STAMP.read_text().strip() != want:
    print("[dlopt] installing dlopt and its dependencies into .venv (first run only)", flush=True)
    pip = [str(_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["-e", f"{ROOT}[{extras}]"], check=True)
    STAMP.write_text(want)
  return _python()


def run_in_venv(args: list[str]) -> int:
  """Runs `python args...` inside the venv from the repository root; returns its exit code."""
  python = ensure_venv()
  return subprocess.call([str(python), *args], cwd=ROOT)
