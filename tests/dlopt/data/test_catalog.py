"""Parsing of the fetched formats (IDX, .ts, text) on small files the tests write."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from dlopt.data import catalog


def _idx(values: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, values.ndim]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
  return header + values.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx(tmp_path, compress):
  images = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
  data = _idx(images)
  path = tmp_path / "images"
  path.write_bytes(gzip.compress(data) if compress else data)
  np.testing.assert_array_equal(catalog.read_idx(path), images)


def test_read_idx_rejects_other_files(tmp_path):
  path = tmp_path / "bad"
  path.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
  with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
    catalog.read_idx(path)
  path.write_bytes(_idx(np.zeros(4, np.uint8))[:-1])
  with pytest.raises(ValueError, match="header says"):
    catalog.read_idx(path)


TS = """# a comment
@problemName Toy
@timeStamps false
@univariate false
@classLabel true b a
@data
1,2,3:4,5,6:b
7,8:9,?:a
0.5:1.5:b
"""


def test_read_ts_keeps_ragged_cases(tmp_path):
  path = tmp_path / "Toy_TRAIN.ts"
  path.write_text(TS)
  cases, labels = catalog.read_ts(path)
  assert labels == ["b", "a", "b"]
  np.testing.assert_array_equal(cases[0], [[1, 4], [2, 5], [3, 6]])
  np.testing.assert_array_equal(cases[1], [[7, 9], [8, 0]])  # "?" reads as 0
  assert cases[2].shape == (1, 2)


def test_load_ucr_pads_and_maps_labels(tmp_path, monkeypatch):
  (tmp_path / "GunPoint_TRAIN.ts").write_text(TS)
  (tmp_path / "GunPoint_TEST.ts").write_text("@data\n1,2,3,4:c\n")
  monkeypatch.setattr(catalog, "require", lambda name: tmp_path)
  train, test = catalog.load_ucr("GunPoint", "train"), catalog.load_ucr("GunPoint", "test")
  assert train.classes == test.classes == ("a", "b", "c")
  assert train.x.shape == (3, 4, 2) and test.x.shape == (1, 4, 1)  # longest of both splits
  np.testing.assert_array_equal(train.lengths, [3, 2, 1])
  np.testing.assert_array_equal(train.y, [1, 0, 1])
  assert np.all(train.x[1, 2:] == 0) and np.all(train.x[2, 1:] == 0)
  with pytest.raises(ValueError, match="name must be one of"):
    catalog.load_ucr("Cricket")


def test_load_text_strips_carriage_returns(tmp_path, monkeypatch):
  for stem in catalog.TEXTS:
    (tmp_path / f"{stem}.txt").write_bytes(b"line one\r\nline two\r\n")
  monkeypatch.setattr(catalog, "require", lambda name: tmp_path)
  texts = catalog.load_text("canterbury")
  assert list(texts) == list(catalog.TEXTS)
  assert texts["alice29"] == "line one\nline two\n"


def test_image_loaders_scale_and_shape(tmp_path, monkeypatch):
  images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
  for prefix in ("train", "t10k"):
    (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
    (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(np.array([7, 3])))
  monkeypatch.setattr(catalog, "require", lambda name: tmp_path)
  x, y = catalog.load_mnist("test")
  assert x.shape == (2, 28, 28, 1) and x.dtype == np.float32
  assert np.isclose(x.max(), 255 / 255) and list(y) == [7, 3]
  with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
    catalog.load_mnist("validation")
