"""Parsing of the fetched formats (IDX, .ts, text) on small files the tests write."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from dlopt.data import catalog, fetch


def _idx(values: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, values.ndim]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
  return header + values.astype(np.uint8).tobytes()


@pytest.fixture
def cached(tmp_path, monkeypatch):
  """Makes the loaders read `tmp_path` as the verified directory of every set."""
  monkeypatch.setattr(catalog, "require", lambda name: tmp_path)
  return tmp_path


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx(tmp_path, compress):
  images = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
  data = _idx(images)
  path = tmp_path / "images"
  path.write_bytes(gzip.compress(data) if compress else data)
  np.testing.assert_array_equal(catalog.read_idx(path), images)


def test_read_idx_rejects_other_files(tmp_path):
  path = tmp_path / "bad"
  path.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")  # float32 type code
  with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
    catalog.read_idx(path)
  path.write_bytes(b"PK\x03\x04")
  with pytest.raises(ValueError, match="not an IDX file"):
    catalog.read_idx(path)
  path.write_bytes(_idx(np.zeros(4, np.uint8))[:-1])
  with pytest.raises(ValueError, match="header says"):
    catalog.read_idx(path)
  path.write_bytes(b"\x00\x00\x08\x03\x00\x00")  # header cut short
  with pytest.raises(ValueError, match="header says"):
    catalog.read_idx(path)


TS = """# a comment
#
@problemName Toy
@timeStamps false
@univariate false
@classLabel true b a 10

@data
1,2,3:4,5,6:b
7,8:9,?:a
0.5:1.5:b
1:2,3:10
"""


def test_read_ts_keeps_ragged_cases(tmp_path):
  path = tmp_path / "Toy_TRAIN.ts"
  path.write_text(TS)
  cases, labels = catalog.read_ts(path)
  assert labels == ["b", "a", "b", "10"]
  np.testing.assert_array_equal(cases[0], [[1, 4], [2, 5], [3, 6]])
  np.testing.assert_array_equal(cases[1], [[7, 9], [8, 0]])  # "?" reads as 0
  assert cases[2].shape == (1, 2) and cases[2].dtype == np.float32
  np.testing.assert_array_equal(cases[3], [[1, 2], [0, 3]])  # ragged channels: zero-padded


def test_read_ts_rejects_bad_files(tmp_path):
  path = tmp_path / "bad.ts"
  path.write_text("@problemName x\n1,2,3:a\n")
  with pytest.raises(ValueError, match="no cases after @data"):
    catalog.read_ts(path)
  path.write_text("@data\n1,2:3,4:a\n1,2:b\n")
  with pytest.raises(ValueError, match="case 1 has 1 channels, the first has 2"):
    catalog.read_ts(path)


def test_load_ucr_pads_and_maps_labels(cached):
  (cached / "GunPoint_TRAIN.ts").write_text(TS)
  (cached / "GunPoint_TEST.ts").write_text("@data\n1,2,3,4,5:1,1,1,1,1:c\n9:9:2\n")
  train, test = catalog.load_ucr("GunPoint", "train"), catalog.load_ucr("GunPoint", "test")
  assert train.classes == test.classes == ("2", "10", "a", "b", "c")  # numbers by value
  assert train.x.shape == (4, 5, 2) and test.x.shape == (2, 5, 2)  # longest of both splits
  assert train.x.dtype == np.float32 and train.lengths.dtype == train.y.dtype == np.int32
  np.testing.assert_array_equal(train.lengths, [3, 2, 1, 2])
  np.testing.assert_array_equal(train.y, [3, 2, 3, 1])
  np.testing.assert_array_equal(test.y, [4, 0])
  np.testing.assert_array_equal(train.x[0, :3], [[1, 4], [2, 5], [3, 6]])
  for case, length in zip(train.x, train.lengths):
    assert np.all(case[length:] == 0)


def test_load_ucr_rejects_unknown_names(cached):
  with pytest.raises(ValueError, match="name must be one of"):
    catalog.load_ucr("Cricket")
  with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
    catalog.load_ucr("GunPoint", "val")


def test_load_text_strips_carriage_returns(cached):
  for i, stem in enumerate(catalog.TEXTS):
    (cached / f"{stem}.txt").write_bytes(f"text {i}\r\nline two\r\n".encode())
  texts = catalog.load_text("canterbury")
  assert list(texts) == list(catalog.TEXTS)
  assert texts["alice29"] == "text 1\nline two\n"
  assert catalog.load_text_corpus() == "".join(f"text {i}\nline two\n" for i in range(4))
  with pytest.raises(ValueError, match="name must be 'canterbury'"):
    catalog.load_text("shakespeare")


@pytest.mark.parametrize("load, suffix", [(catalog.load_mnist, ""),
                                          (catalog.load_fashion_mnist, ".gz")])
def test_image_loaders_scale_and_shape(cached, load, suffix):
  images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
  write = gzip.compress if suffix else bytes
  for prefix in ("train", "t10k"):
    (cached / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(write(_idx(images)))
    (cached / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(write(_idx(np.array([7, 3]))))
  x, y = load("test")
  assert x.shape == (2, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
  np.testing.assert_allclose(x[..., 0], images / 255.0)
  assert list(y) == [7, 3]
  with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
    load("validation")


def test_image_loaders_check_counts_agree(cached):
  (cached / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((2, 28, 28))))
  (cached / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(3)))
  with pytest.raises(ValueError, match="disagree on N"):
    catalog.load_mnist("train")


def _real(name: str) -> None:
  if fetch.status(name) != "valid":
    pytest.skip(f"{name} not fetched here (python -m dlopt.data fetch {name})")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "ucr", "canterbury"])
def test_real_sets_when_cached(name):
  """Checks the real data where this machine has fetched it (skipped otherwise)."""
  _real(name)
  if name in ("mnist", "fashion_mnist"):
    load = catalog.load_mnist if name == "mnist" else catalog.load_fashion_mnist
    (x, y), (x_test, y_test) = load("train"), load("test")
    assert x.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y_test)) == set(range(10))
    assert list(y[:5]) == ([5, 0, 4, 1, 9] if name == "mnist" else [9, 0, 0, 3, 0])
  elif name == "ucr":
    expected = {"GunPoint": (50, 150, 150, 1, 2), "JapaneseVowels": (270, 370, 29, 12, 9),
                "BasicMotions": (40, 40, 100, 6, 4)}
    for ucr_name, (n_train, n_test, t_max, channels, k) in expected.items():
      train, test = catalog.load_ucr(ucr_name, "train"), catalog.load_ucr(ucr_name, "test")
      assert train.x.shape == (n_train, t_max, channels) and len(test.y) == n_test
      assert len(train.classes) == k and set(train.y) == set(range(k))
    assert catalog.load_ucr("JapaneseVowels", "train").lengths.min() == 7  # ragged
  else:
    texts = catalog.load_text()
    assert sum(map(len, texts.values())) == 1_164_057
    assert "\r" not in catalog.load_text_corpus() and "Alice" in texts["alice29"]
