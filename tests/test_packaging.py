"""The distribution as users install it: one version string, the wheel's contents, and a
loud error when another package named `kernels` shadows ours."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dlopt
import kernels

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_comes_from_the_metadata():
  assert dlopt.__version__ == importlib.metadata.version("dlopt")
  source = (ROOT / "dlopt" / "__init__.py").read_text()
  assert '__version__ = "' not in source.split("PackageNotFoundError")[0]  # not written here


def test_our_kernels_carries_its_marker():
  assert kernels.__dlopt_kernels__ is True


@pytest.mark.slow
def test_a_shadowing_kernels_package_fails_loudly_naming_both(tmp_path):
  fake = tmp_path / "kernels"
  fake.mkdir()
  (fake / "__init__.py").write_text('"""Some other kernels package."""\n')
  code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import dlopt"
  done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                        text=True)
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("ImportError: the `kernels` package found at")
  assert str(fake) in last and "not dlopt's own `kernels`" in last
  assert "Hugging Face's `kernels`" in last and "pip uninstall kernels" in last


@pytest.mark.slow
def test_the_wheel_holds_both_packages_their_markers_and_the_license(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w",
                  str(tmp_path)], check=True, capture_output=True)
  wheel = next(tmp_path.glob("dlopt-*.whl"))
  names = zipfile.ZipFile(wheel).namelist()
  tops = {name.split("/")[0] for name in names}
  version = importlib.metadata.version("dlopt")
  assert tops == {"dlopt", "kernels", f"dlopt-{version}.dist-info"}
  for needed in ("dlopt/py.typed", "kernels/py.typed", "kernels/attention/__init__.py",
                 "kernels/conv/__init__.py", "dlopt/train/fit.py",
                 f"dlopt-{version}.dist-info/licenses/LICENSE"):
    assert needed in names, needed
  metadata = zipfile.ZipFile(wheel).read(f"dlopt-{version}.dist-info/METADATA").decode()
  assert "License-Expression: Apache-2.0" in metadata
  assert "Provides-Extra: data" in metadata and "Provides-Extra: tensorboard" in metadata
