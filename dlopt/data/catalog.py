"""Loaders of the fetched data sets (`python -m dlopt.data fetch NAME` brings them once).

Every loader verifies the cached files' checksums first (`dlopt.data.fetch.require`) and
raises `FileNotFoundError` naming the fetch command when a set is missing or corrupt.

>>> x, y = load_mnist("train")                                # doctest: +SKIP
>>> x.shape, x.dtype, y[:5]                                   # doctest: +SKIP
((60000, 28, 28, 1), dtype('float32'), array([5, 0, 4, 1, 9], dtype=int32))
>>> seqs = load_ucr("JapaneseVowels", "train")               # doctest: +SKIP
>>> seqs.x.shape, int(seqs.lengths.max()), seqs.classes[:3]   # doctest: +SKIP
((270, 29, 12), 26, ('1', '2', '3'))
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dlopt.data.fetch import require

__all__ = ["load_mnist", "load_fashion_mnist", "load_ucr", "load_text", "Sequences",
           "read_idx", "read_ts", "UCR_SETS", "TEXTS"]

UCR_SETS = ("GunPoint", "JapaneseVowels", "BasicMotions")
TEXTS = ("asyoulik", "alice29", "plrabn12", "lcet10")
_SPLITS = {"train": "train", "test": "t10k"}


class Sequences(NamedTuple):
  """A sequence-classification split.

  Attributes:
    x: float32 `[N, T_max, C]`, zero past each sequence's length.
    lengths: int32 `[N]`, each >= 1.
    y: int32 `[N]` class ids into `classes`.
    classes: the class labels as written in the file, sorted; `y` indexes them.
  """

  x: np.ndarray
  lengths: np.ndarray
  y: np.ndarray
  classes: tuple[str, ...]


def read_idx(path: Path) -> np.ndarray:
  """Reads an IDX file (raw or gzipped) of unsigned bytes: `[N]` or `[N, rows, cols]` uint8."""
  data = Path(path).read_bytes()
  if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
  if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
    raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4]!r})")
  ndim = data[3]
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if values.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims}, file holds {values.size} values")
  return values.reshape(dims)


def _images(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  if split not in _SPLITS:
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
  directory = require(name)
  prefix = _SPLITS[split]
  suffix = ".gz" if name == "fashion_mnist" else ""
  images = read_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}")
  labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}")
  x = (images.astype(np.float32) / 255.0)[..., None]
  return x, labels.astype(np.int32)


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """MNIST: images float32 `[N, 28, 28, 1]` in [0, 1], labels int32 `[N]` (60,000 / 10,000)."""
  return _images("mnist", split)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Fashion-MNIST: images float32 `[N, 28, 28, 1]` in [0, 1], labels int32 `[N]`."""
  return _images("fashion_mnist", split)


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
  """Reads a `.ts` file: one float32 `[length, channels]` array and one label per case.

  Lines starting with `#` and the header up to `@data` are skipped; each case is
  `ch1:ch2:...:label`, each channel comma-separated values (`?` missing, read as 0).
  """
  cases, labels = [], []
  in_data = False
  for line in Path(path).read_text().splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    if not in_data:
      in_data = line.lower() == "@data"
      continue
    *channels, label = line.split(":")
    series = [np.array([0.0 if v == "?" else float(v) for v in ch.split(",")], np.float32)
              for ch in channels]
    length = max(len(s) for s in series)
    case = np.zeros((length, len(series)), np.float32)
    for c, s in enumerate(series):
      case[:len(s), c] = s
    cases.append(case)
    labels.append(label.strip())
  if not cases:
    raise ValueError(f"{path} holds no cases after @data")
  return cases, labels


def load_ucr(name: str, split: str = "train") -> Sequences:
  """A UCR/UEA set ("GunPoint", "JapaneseVowels", "BasicMotions"), zero-padded to the longest
  case of either split (so train and test share `T_max`).

  Class ids come from the sorted labels of both splits, so train and test agree.
  """
  if name not in UCR_SETS:
    raise ValueError(f"name must be one of {UCR_SETS}; got {name!r}")
  if split not in _SPLITS:
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
  directory = require("ucr")
  parsed = {part: read_ts(directory / f"{name}_{part.upper()}.ts") for part in _SPLITS}
  classes = tuple(sorted(set(parsed["train"][1]) | set(parsed["test"][1]),
                         key=lambda c: (len(c), c) if c.isdigit() else (0, c)))
  longest = max(len(case) for part in parsed.values() for case in part[0])
  cases, labels = parsed[split]
  return _pad(cases, labels, classes, longest)


def _pad(cases: list[np.ndarray], labels: list[str], classes: tuple[str, ...],
         length: int) -> Sequences:
  lengths = np.array([len(c) for c in cases], np.int32)
  x = np.zeros((len(cases), length, cases[0].shape[1]), np.float32)
  for i, case in enumerate(cases):
    x[i, :len(case)] = case
  index = {label: i for i, label in enumerate(classes)}
  return Sequences(x, lengths, np.array([index[label] for label in labels], np.int32), classes)


def load_text(name: str = "canterbury") -> dict[str, str]:
  """The Canterbury English texts: `{stem: text}` (`\\r` stripped), in `TEXTS` order."""
  if name != "canterbury":
    raise ValueError(f"name must be 'canterbury'; got {name!r}")
  directory = require("canterbury")
  return {stem: (directory / f"{stem}.txt").read_text(encoding="latin-1").replace("\r", "")
          for stem in TEXTS}
