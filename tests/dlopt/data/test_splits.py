"""Tests for dlopt.data.splits."""

import numpy as np
import pytest

from dlopt.data import Split, Splits, train_val_test_split


def _data(n=1000, num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  y = np.sort(rng.integers(0, num_classes, size=n)).astype(np.int32)
  x = np.stack([np.arange(n), y], axis=1).astype(np.float32)
  return x, y


def _ids(part):
  return part.x[:, 0].astype(np.int64)


@pytest.mark.parametrize("stratify", [True, False])
def test_parts_are_disjoint_and_cover_the_input(stratify):
  x, y = _data()
  splits = train_val_test_split(
      x, y, val_fraction=0.15, test_fraction=0.2, stratify=stratify
  )
  assert isinstance(splits, Splits)
  assert all(isinstance(p, Split) for p in splits)
  ids = np.concatenate([_ids(p) for p in splits])
  np.testing.assert_array_equal(np.sort(ids), np.arange(len(x)))
  assert [len(p.x) for p in splits] == [650, 150, 200]
  for part in splits:
    np.testing.assert_array_equal(part.y, y[_ids(part)])
    assert part.x.dtype == x.dtype and part.y.dtype == y.dtype


def test_deterministic_per_seed_and_differs_across_seeds():
  x, y = _data()
  a = train_val_test_split(x, y, seed=3)
  b = train_val_test_split(x, y, seed=3)
  c = train_val_test_split(x, y, seed=4)
  for pa, pb in zip(a, b):
    np.testing.assert_array_equal(pa.x, pb.x)
    np.testing.assert_array_equal(pa.y, pb.y)
  assert not np.array_equal(np.sort(_ids(a.test)), np.sort(_ids(c.test)))


def test_stratified_mnist_like_split_is_exact_per_class():
  y = np.repeat(np.arange(10, dtype=np.int32), 500)
  x = np.arange(5000, dtype=np.float32)[:, None]
  splits = train_val_test_split(x, y, val_fraction=0.1, test_fraction=0.1)
  np.testing.assert_array_equal(np.bincount(splits.train.y), np.full(10, 400))
  np.testing.assert_array_equal(np.bincount(splits.val.y), np.full(10, 50))
  np.testing.assert_array_equal(np.bincount(splits.test.y), np.full(10, 50))


def test_stratified_proportions_per_class_on_unbalanced_classes():
  y = np.repeat(np.arange(4), [500, 300, 150, 53]).astype(np.int64)
  x = np.arange(len(y))[:, None]
  counts = np.bincount(y)
  splits = train_val_test_split(
      x, y, val_fraction=0.2, test_fraction=0.3, seed=1
  )
  assert [len(p.y) for p in splits] == [501, 201, 301]
  for part, fraction in zip(splits, [0.5, 0.2, 0.3]):
    per_class = np.bincount(part.y, minlength=4)
    assert np.all(np.abs(per_class - fraction * counts) <= 1.0), per_class


def test_unstratified_split_is_not_proportional_by_construction():
  y = np.repeat(np.arange(2), [900, 100])
  x = np.arange(1000)[:, None]
  counts = set()
  for seed in range(5):
    test = train_val_test_split(
        x, y, val_fraction=0.0, test_fraction=0.5, seed=seed, stratify=False
    ).test
    counts.add(tuple(np.bincount(test.y, minlength=2)))
  assert len(counts) > 1


def test_parts_come_shuffled():
  x, y = _data()
  train = train_val_test_split(x, y).train
  assert not np.all(np.diff(train.y) >= 0)


def test_float_targets_use_a_plain_split():
  x = np.arange(200, dtype=np.float32)[:, None]
  y = np.linspace(0.0, 1.0, 200)
  splits = train_val_test_split(x, y, val_fraction=0.25, test_fraction=0.25)
  assert [len(p.y) for p in splits] == [100, 50, 50]
  np.testing.assert_array_equal(splits.test.y, y[_ids(splits.test)])


def test_empty_val_and_test():
  x, y = _data(n=20)
  splits = train_val_test_split(x, y, val_fraction=0.0, test_fraction=0.0)
  assert splits.val.x.shape == (0, 2) and splits.test.y.shape == (0,)
  assert len(splits.train.x) == 20


def test_mismatched_lengths_name_x_and_y():
  x = np.zeros((5000, 28, 28, 1), np.float32)
  y = np.zeros((4999,), np.int32)
  with pytest.raises(
      ValueError,
      match=r"x and y must have the same number of examples; got"
      r" x.shape=\(5000, 28, 28, 1\) and y.shape=\(4999,\)",
  ):
    train_val_test_split(x, y)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"val_fraction": -0.1}, "val_fraction must be in"),
        ({"test_fraction": 1.5}, "test_fraction must be in"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            r"val_fraction \+ test_fraction",
        ),
    ],
)
def test_bad_fractions_are_named(kwargs, match):
  x, y = _data(n=10)
  with pytest.raises(ValueError, match=match):
    train_val_test_split(x, y, **kwargs)


def test_no_training_example_left():
  x, y = _data(n=2)
  with pytest.raises(ValueError, match="no training example"):
    train_val_test_split(x, y, val_fraction=0.45, test_fraction=0.45)
