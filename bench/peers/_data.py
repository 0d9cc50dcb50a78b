"""The images every peer trains on, loaded once by the parent and handed over as .npy files.

`"mnist"`: the full 60,000 / 10,000 MNIST (`python -m dlopt.data fetch mnist` once);
`"mnist_subset"`: the 5,000 bundled digits, split 4,000 train / 1,000 test by a fixed
permutation (works offline). Images are float32 [N, 28, 28, 1] in [0, 1], labels int32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATASETS = ("mnist", "mnist_subset")
_SUBSET_TEST = 1000  # of the 5,000 bundled digits held out as the test set
_SEED = 0


def load(name: str) -> dict[str, np.ndarray]:
  """`{"x_train", "y_train", "x_test", "y_test"}` of data set `name` (one of `DATASETS`)."""
  from dlopt.data import load_dataset, load_mnist
  if name == "mnist":
    (x, y), (x_test, y_test) = load_dataset("mnist"), load_mnist("test")
  elif name == "mnist_subset":
    x, y = load_dataset("mnist_subset")
    order = np.random.default_rng(_SEED).permutation(len(x))
    test, train = order[:_SUBSET_TEST], order[_SUBSET_TEST:]
    x, y, x_test, y_test = x[train], y[train], x[test], y[test]
  else:
    raise ValueError(f"data must be one of {', '.join(DATASETS)}; got {name!r}")
  return {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test}


def load_or_explain(name: str) -> dict[str, np.ndarray] | None:
  """`load(name)`, or None after printing how to fetch the data set when it is missing."""
  try:
    return load(name)
  except FileNotFoundError as error:
    print(f"{error}\n(or pass --data mnist_subset for the bundled 5,000 digits)")
    return None


def first_examples(x: np.ndarray, y: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
  """`count` examples in a fixed shuffled order, the set repeated if it holds fewer."""
  order = np.random.default_rng(_SEED).permutation(len(x))
  order = np.resize(order, count)  # repeats the permutation when count > len(x)
  return x[order], y[order]


def save(directory: Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes each array to `<directory>/<name>.npy`."""
  directory.mkdir(parents=True, exist_ok=True)
  for name, array in arrays.items():
    np.save(directory / f"{name}.npy", np.ascontiguousarray(array))


def read(directory: Path) -> dict[str, np.ndarray]:
  """The arrays `save` wrote, by name."""
  return {path.stem: np.load(path) for path in sorted(Path(directory).glob("*.npy"))}
