"""Loaders of the fetched data sets (`python -m dlopt.data fetch NAME` brings each once).

Every loader first verifies the cached files against their pinned sha256
(`dlopt.data.fetch.require`) and raises `FileNotFoundError` naming the fetch command when a
set is missing or corrupt; corrupt data is never parsed.

Example (after `python -m dlopt.data fetch all`):

  >>> from dlopt.data import load_mnist, load_text_corpus, load_ucr
  >>> x, y = load_mnist("train")                                # doctest: +SKIP
  >>> x.shape, x.dtype, y[:5]                                   # doctest: +SKIP
  ((60000, 28, 28, 1), dtype('float32'), array([5, 0, 4, 1, 9], dtype=int32))
  >>> seqs = load_ucr("JapaneseVowels", "train")               # doctest: +SKIP
  >>> seqs.x.shape, int(seqs.lengths.max()), seqs.classes[:3]   # doctest: +SKIP
  ((270, 29, 12), 26, ('1', '2', '3'))
  >>> len(load_text_corpus("canterbury"))                       # doctest: +SKIP
  1164057
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dlopt.data.fetch import require

__all__ = [
    "Sequences",
    "TEXTS",
    "UCR_SETS",
    "load_fashion_mnist",
    "load_mnist",
    "load_text",
    "load_text_corpus",
    "load_ucr",
    "read_idx",
    "read_ts",
]

UCR_SETS = ("GunPoint", "JapaneseVowels", "BasicMotions")
TEXTS = ("asyoulik", "alice29", "plrabn12", "lcet10")  # Canterbury corpus file stems
_SPLITS = {"train": "train", "test": "t10k"}  # split -> IDX file prefix
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes
_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?")  # class labels sorted by value


class Sequences(NamedTuple):
  """A sequence-classification split.

  Attributes:
    x: float32 `[N, T_max, C]`, zero past each sequence's length.
    lengths: int32 `[N]`, each in 1..T_max.
    y: int32 `[N]`, class ids in 0..K-1 indexing `classes`.
    classes: the K class labels as written in the file, sorted (numbers by value), shared by
      the train and test splits.
  """

  x: np.ndarray
  lengths: np.ndarray
  y: np.ndarray
  classes: tuple[str, ...]


def _check_split(split: str) -> None:
  if split not in _SPLITS:
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file of unsigned bytes, raw or gzipped.

  Args:
    path: the file; its magic number must be `00 00 08 NDIM`.

  Returns:
    uint8 array of the shape in the header, e.g. `[N]` labels or `[N, 28, 28]` images.

  Raises:
    ValueError: the magic number is wrong or the header's shape disagrees with the data.
  """
  data = Path(path).read_bytes()
  if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
  if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != _IDX_UBYTE:
    raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4]!r})")
  ndim = data[3]
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  values = np.frombuffer(data, np.uint8, offset=min(4 + 4 * ndim, len(data)))
  if len(data) < 4 + 4 * ndim or values.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims}, file holds {values.size} values")
  return values.reshape(dims)


def _images(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  _check_split(split)
  directory = require(name)
  prefix = _SPLITS[split]
  suffix = ".gz" if name == "fashion_mnist" else ""
  images = read_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}")  # [N, 28, 28]
  labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}")  # [N]
  if images.shape[:1] != labels.shape:
    raise ValueError(f"{name} {split}: {images.shape=} and {labels.shape=} disagree on N")
  return (images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32)


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Loads full MNIST, fetched once with `python -m dlopt.data fetch mnist`.

  Args:
    split: "train" (60,000 images) or "test" (10,000).

  Returns:
    `(images, labels)`: float32 `[N, 28, 28, 1]` in [0, 1], int32 `[N]` in 0..9.

  Raises:
    FileNotFoundError: the set is not fetched, or its files fail their sha256.
    ValueError: `split` is neither "train" nor "test".
  """
  return _images("mnist", split)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Loads Fashion-MNIST, fetched once with `python -m dlopt.data fetch fashion_mnist`.

  Args:
    split: "train" (60,000 images) or "test" (10,000).

  Returns:
    `(images, labels)`: float32 `[N, 28, 28, 1]` in [0, 1], int32 `[N]` in 0..9.

  Raises:
    FileNotFoundError: the set is not fetched, or its files fail their sha256.
    ValueError: `split` is neither "train" nor "test".
  """
  return _images("fashion_mnist", split)


def _parse_case(line: str) -> tuple[np.ndarray, str]:
  """One `.ts` data row `ch1:ch2:...:label` -> (float32 `[T, C]`, label)."""
  *channels, label = line.split(":")
  series = [np.array([0.0 if v.strip() == "?" else float(v) for v in ch.split(",")],
                     np.float32) for ch in channels]
  case = np.zeros((max(len(s) for s in series), len(series)), np.float32)  # [T, C]
  for c, s in enumerate(series):
    case[:len(s), c] = s  # a channel shorter than the others is zero-padded
  return case, label.strip()


def read_ts(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str]]:
  """Reads a labelled `.ts` file (the UCR/UEA time-series format).

  Lines starting with `#`, blank lines and the `@` header up to `@data` are skipped; each
  case is a row `ch1:ch2:...:label`, each channel comma-separated values (`?`, missing, reads
  as 0). Cases may differ in length, and so may the channels of one case.

  Args:
    path: the `.ts` file.

  Returns:
    `(cases, labels)`: one float32 `[T_i, C]` array per case and its label string.

  Raises:
    ValueError: no case after `@data`, or cases with different channel counts.
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
    case, label = _parse_case(line)
    if cases and case.shape[1] != cases[0].shape[1]:
      raise ValueError(f"{path}: case {len(cases)} has {case.shape[1]} channels, the first "
                       f"has {cases[0].shape[1]}")
    cases.append(case)
    labels.append(label)
  if not cases:
    raise ValueError(f"{path} holds no cases after @data")
  return cases, labels


def _sorted_classes(labels: set[str]) -> tuple[str, ...]:
  """Sorts labels, numbers by value ("2" before "10") and before other names."""
  def key(label: str) -> tuple:
    if _NUMBER.fullmatch(label):
      return (0, float(label), label)
    return (1, 0.0, label)
  return tuple(sorted(labels, key=key))


def _pad(cases: list[np.ndarray], labels: list[str], classes: tuple[str, ...],
         length: int) -> Sequences:
  """Zero-pads `cases` to `[N, length, C]` and maps labels to their index in `classes`."""
  x = np.zeros((len(cases), length, cases[0].shape[1]), np.float32)  # [N, T_max, C]
  for i, case in enumerate(cases):
    x[i, :len(case)] = case
  lengths = np.array([len(case) for case in cases], np.int32)
  index = {label: i for i, label in enumerate(classes)}
  return Sequences(x, lengths, np.array([index[label] for label in labels], np.int32), classes)


def load_ucr(name: str, split: str = "train") -> Sequences:
  """Loads a UCR/UEA sequence-classification set, fetched with `... fetch ucr`.

  Both splits are read so that they agree: class ids come from the sorted labels of train and
  test together, and every case is zero-padded to the longest case of either split (train and
  test share `T_max`; `lengths` tells each case's own length).

  Args:
    name: one of `UCR_SETS`: "GunPoint" (50 + 150 cases, 150 steps, 1 channel, 2 classes),
      "JapaneseVowels" (270 + 370, 7..29 steps, 12 channels, 9 classes) or "BasicMotions"
      (40 + 40, 100 steps, 6 channels, 4 classes).
    split: "train" or "test".

  Returns:
    A `Sequences`: x float32 `[N, T_max, C]`, lengths int32 `[N]`, y int32 `[N]`, classes.

  Raises:
    FileNotFoundError: the set is not fetched, or its files fail their sha256.
    ValueError: unknown `name` or `split`, or a malformed file.
  """
  if name not in UCR_SETS:
    raise ValueError(f"name must be one of {UCR_SETS}; got {name!r}")
  _check_split(split)
  directory = require("ucr")
  parsed = {part: read_ts(directory / f"{name}_{part.upper()}.ts") for part in _SPLITS}
  classes = _sorted_classes({label for _, labels in parsed.values() for label in labels})
  longest = max(len(case) for cases, _ in parsed.values() for case in cases)
  cases, labels = parsed[split]
  return _pad(cases, labels, classes, longest)


def load_text(name: str = "canterbury") -> dict[str, str]:
  """Loads the Canterbury English texts, fetched with `... fetch canterbury`.

  Args:
    name: "canterbury", the only text set.

  Returns:
    `{stem: text}` in `TEXTS` order (asyoulik, alice29, plrabn12, lcet10), `\\r` stripped;
    1,164,057 characters in all.

  Raises:
    FileNotFoundError: the set is not fetched, or its files fail their sha256.
    ValueError: `name` is not "canterbury".
  """
  if name != "canterbury":
    raise ValueError(f"name must be 'canterbury'; got {name!r}")
  directory = require("canterbury")
  return {stem: (directory / f"{stem}.txt").read_text(encoding="latin-1").replace("\r", "")
          for stem in TEXTS}


def load_text_corpus(name: str = "canterbury") -> str:
  """The texts of `load_text(name)` concatenated in `TEXTS` order, one string."""
  return "".join(load_text(name).values())
