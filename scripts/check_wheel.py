"""Builds dlopt's wheel, installs it into a scratch venv outside the repository, and from a
directory outside it imports dlopt and kernels and trains one tiny epoch (CI runs this).

Usage: python3 scripts/check_wheel.py [--keep]

Only the wheel and its declared (core) dependencies go into the scratch venv, so this also
proves that the core install is enough for `fit` without a workdir.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SMOKE = """
import importlib.metadata, pathlib, sys
import numpy as np
import dlopt, kernels
from dlopt.models import MLP
from dlopt.train import FitConfig, fit
assert "site-packages" in dlopt.__file__ and "site-packages" in kernels.__file__, dlopt.__file__
assert dlopt.__version__ == importlib.metadata.version("dlopt"), dlopt.__version__
for package in (dlopt, kernels):
  assert (pathlib.Path(package.__file__).parent / "py.typed").exists(), package
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 8)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int32)
result = fit(MLP(widths=(16,), num_outputs=2), (x, y),
             config=FitConfig(epochs=1, batch_size=32, progress=False, plot=False))
print("[dlopt] wheel", dlopt.__version__, "trained", int(result.state.step), "steps; test accuracy",
      round(result.test_metrics["accuracy"], 3))
"""


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
  args = parser.parse_args(argv)
  scratch = Path(tempfile.mkdtemp(prefix="dlopt-wheel-"))
  try:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(scratch / "dist")], check=True)
    wheel = next((scratch / "dist").glob("dlopt-*.whl"))
    venv.EnvBuilder(with_pip=True).create(scratch / "venv")
    python = scratch / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True)
    subprocess.run([str(python), "-c", SMOKE], check=True, cwd=scratch)
  except subprocess.CalledProcessError as error:
    print(f"[dlopt] wheel check failed: {error}", file=sys.stderr)
    return 1
  finally:
    if not args.keep:
      shutil.rmtree(scratch, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
