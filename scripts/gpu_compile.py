"""Compiles every Pallas GPU kernel for sm_90a (H100/H200) on this machine, with no GPU.

Usage: python3 scripts/gpu_compile.py [flags of `python -m bench gpu-compile`]

JAX's CUDA plugin and ptxas (a few GB) go into their own venv, `.venv-gpu/`, never the
project's: it holds `jax[cuda12]` at the version of the jaxlib that `.venv/` has (or the
newest the pins allow) and nothing else; the repository is put on its path. The venv is
created on first use and reused; results go to bench/results/gpu_compile_sm90.json.
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_VENV = ROOT / ".venv-gpu"
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"


def _jax_version() -> str:
  """The jaxlib version of the project's venv, or None to take the newest allowed."""
  if PROJECT_PYTHON.exists():
    found = subprocess.run([str(PROJECT_PYTHON), "-c",
                            "from importlib import metadata; print(metadata.version('jaxlib'))"],
                           capture_output=True, text=True)
    if found.returncode == 0:
      return found.stdout.strip()
  return None


def ensure_gpu_venv() -> Path:
  """Creates `.venv-gpu/` with jax[cuda12] if needed; returns its python."""
  python = GPU_VENV / "bin" / "python"
  version = _jax_version()
  requirement = f"jax[cuda12]=={version}" if version else "jax[cuda12]>=0.10,<0.13"
  stamp = GPU_VENV / ".dlopt-installed"
  if not python.exists():
    print(f"[dlopt] creating {GPU_VENV} for the GPU compile (a few GB)", flush=True)
    venv.EnvBuilder(with_pip=True).create(GPU_VENV)
  if not stamp.exists() or stamp.read_text().strip() != requirement:
    print(f"[dlopt] installing {requirement} into {GPU_VENV}", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    requirement], check=True)
    stamp.write_text(requirement)
  return python


if __name__ == "__main__":
  python = ensure_gpu_venv()
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  sys.exit(subprocess.call([str(python), "-m", "bench", "gpu-compile", *sys.argv[1:]],
                           cwd=ROOT, env=env))
