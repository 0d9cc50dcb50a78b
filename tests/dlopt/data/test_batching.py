"""Tests for dlopt.data.batching."""

import itertools
import json

import numpy as np
import pytest

from dlopt.data import BatchIterator


def _arrays(n=23):
  x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  y = np.arange(n, dtype=np.int32)
  return x, y


def _ids(batches):
  return [b[1].tolist() for b in batches]


def test_same_seed_same_batches_and_other_seed_other_order():
  a = _ids(BatchIterator(_arrays(), 4, seed=7).epoch(0))
  b = _ids(BatchIterator(_arrays(), 4, seed=7).epoch(0))
  c = _ids(BatchIterator(_arrays(), 4, seed=8).epoch(0))
  assert a == b
  assert a != c


def test_epochs_differ_and_permutation_is_pure():
  it = BatchIterator(_arrays(), 4, seed=0)
  assert not np.array_equal(it.permutation(0), it.permutation(1))
  np.testing.assert_array_equal(
      it.permutation(3), np.random.default_rng([0, 3]).permutation(23)
  )


def test_batches_gather_all_arrays_with_the_same_indices():
  it = BatchIterator(_arrays(), 5, seed=1)
  for x, y in it.epoch(2):
    assert x.shape == (5, 3) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 0], y.astype(np.float32))


def test_rows_are_each_process_part_of_the_same_batches():
  it = BatchIterator(_arrays(24), 6, seed=3)
  whole = _ids(it.epoch(1, start_step=1))
  parts = [_ids(it.epoch(1, start_step=1, rows=slice(i, i + 3))) for i in (0, 3)]
  assert [a + b for a, b in zip(*parts)] == whole
  assert all(len(batch) == 3 for batch in parts[0])


def test_every_example_exactly_once_without_drop_last():
  it = BatchIterator(_arrays(), 5, seed=0, drop_last=False)
  assert it.steps_per_epoch == len(it) == 5
  batches = _ids(it.epoch(0))
  assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
  assert sorted(itertools.chain(*batches)) == list(range(23))


def test_drop_last_drops_the_remainder():
  it = BatchIterator(_arrays(), 5, seed=0)
  assert it.steps_per_epoch == len(it) == 4
  batches = _ids(it.epoch(0))
  assert [len(b) for b in batches] == [5, 5, 5, 5]
  dropped = set(range(23)) - set(itertools.chain(*batches))
  assert dropped == set(it.permutation(0)[20:].tolist())


def test_no_shuffle_keeps_input_order():
  it = BatchIterator(_arrays(10), 4, shuffle=False, drop_last=False)
  assert _ids(it.epoch(5)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("start_step", [0, 1, 3, 4])
def test_epoch_from_start_step_is_the_tail_of_the_epoch(start_step):
  it = BatchIterator(_arrays(), 5, seed=2)
  full = _ids(it.epoch(1))
  assert _ids(it.epoch(1, start_step=start_step)) == full[start_step:]


def test_start_step_out_of_range():
  it = BatchIterator(_arrays(), 5)
  with pytest.raises(ValueError, match="start_step"):
    it.epoch(0, start_step=5)


def test_stateful_iteration_runs_across_epochs():
  it = BatchIterator(_arrays(), 5, seed=4)
  stream = _ids(itertools.islice(it, 10))
  assert stream == _ids(it.epoch(0)) + _ids(it.epoch(1)) + _ids(it.epoch(2))[:2]
  assert it.state() == {"epoch": 2, "step": 2}


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("interrupt_at", [0, 3, 4, 7, 9])
def test_restore_continues_exactly(drop_last, interrupt_at):
  steps = BatchIterator(_arrays(), 5, drop_last=drop_last).steps_per_epoch
  total = int(2.5 * steps)
  make = lambda: BatchIterator(_arrays(), 5, seed=9, drop_last=drop_last)
  uninterrupted = _ids(itertools.islice(make(), total))
  first = make()
  head = _ids(itertools.islice(first, interrupt_at))
  saved = json.loads(json.dumps(first.state()))
  resumed = make()
  resumed.restore(saved)
  tail = _ids(itertools.islice(resumed, total - interrupt_at))
  assert head + tail == uninterrupted


def test_restore_at_end_of_epoch_rolls_over():
  it = BatchIterator(_arrays(), 5, seed=0)
  it.restore({"epoch": 1, "step": it.steps_per_epoch})
  assert it.state() == {"epoch": 2, "step": 0}
  assert _ids([next(it)]) == _ids(it.epoch(2))[:1]


@pytest.mark.parametrize(
    "state",
    [
        {"epoch": 0},
        {"epoch": -1, "step": 0},
        {"epoch": 0, "step": 5},
        {"epoch": 0.5, "step": 0},
    ],
)
def test_restore_rejects_bad_states(state):
  with pytest.raises(ValueError, match="state"):
    BatchIterator(_arrays(), 5).restore(state)


def test_batch_size_below_one_is_named():
  with pytest.raises(ValueError, match=r"batch_size must be >= 1; got 0"):
    BatchIterator(_arrays(), 0)


def test_batch_size_above_n_with_drop_last_is_named():
  with pytest.raises(ValueError, match=r"batch_size=24 .*no full batch"):
    BatchIterator(_arrays(), 24)
  assert _ids(BatchIterator(_arrays(), 24, drop_last=False).epoch(0)) != []


def test_mismatched_lengths_name_both_shapes():
  with pytest.raises(
      ValueError,
      match=r"arrays\[0\].shape=\(23, 3\) and arrays\[1\].shape=\(22,\)",
  ):
    BatchIterator((np.zeros((23, 3)), np.zeros(22)), 4)
