"""Deterministic shuffling and batching of host arrays, resumable mid-epoch.

The arrays are any pytree whose leaves share their first axis: `(x, y)`, or
`((features, lengths), (labels, teacher_logits))`; every batch has that structure.

The order of epoch `e` is a pure function of `(seed, e)`, so a training loop can
resume exactly from `(epoch, step)` with `BatchIterator.epoch(e, start_step)`.
For a plain endless iterator, iterate the object itself and save `state()`.

Example:

  >>> import numpy as np
  >>> from dlopt.data import BatchIterator
  >>> x = np.arange(10, dtype=np.float32)[:, None]
  >>> y = np.arange(10, dtype=np.int32)
  >>> it = BatchIterator((x, y), batch_size=4, seed=0)
  >>> len(it), [b[1].shape for b in it.epoch(0)]
  (2, [(4,), (4,)])
  >>> first = next(it); state = it.state(); second = next(it)
  >>> state
  {'epoch': 0, 'step': 1}
  >>> resumed = BatchIterator((x, y), batch_size=4, seed=0)
  >>> resumed.restore(state)
  >>> bool(np.array_equal(next(resumed)[1], second[1]))
  True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import operator
from typing import Any

import jax
import numpy as np

__all__ = ["BatchIterator"]

Batch = Any  # the arrays' pytree structure, each leaf [batch_size, ...]


class BatchIterator:
  """Yields shuffled minibatches of a pytree of arrays that share their length.

  It is a batch source for `dlopt.train.fit` as it is (`len()`, `batch_size`, `sample()`,
  `examples()`, `epoch(e, start_step, rows)`).

  Attributes:
    arrays: the arrays, each `[n, ...]`, as numpy arrays, in the pytree they came in.
    batch_size: examples per batch.
    seed: seed of the per-epoch permutations.
    shuffle: whether epochs are shuffled (`False` keeps the input order).
    drop_last: whether the last, partial batch of an epoch is dropped.
  """

  def __init__(
      self,
      arrays: Any,
      batch_size: int,
      *,
      seed: int = 0,
      shuffle: bool = True,
      drop_last: bool = True,
  ):
    """Checks the arguments; nothing is copied.

    Args:
      arrays: a pytree (e.g. a tuple) of one or more arrays `[n, ...]` with the same
        first-axis length n.
      batch_size: examples per batch, >= 1; with `drop_last`, at most n.
      seed: non-negative seed; epoch `e` uses
        `np.random.default_rng([seed, e]).permutation(n)`.
      shuffle: whether to shuffle each epoch.
      drop_last: whether to drop the last batch of an epoch when it is short.

    Raises:
      ValueError: no arrays, arrays of different lengths, no examples, a
        `batch_size` below 1 or (with `drop_last`) above n, or a negative seed.
    """
    arrays = jax.tree.map(np.asarray, arrays)
    paths = jax.tree_util.tree_leaves_with_path(arrays)
    if not paths:
      raise ValueError(f"arrays must hold at least one array; got {arrays!r}.")
    first_path, first = paths[0]
    for path, a in paths:
      if a.ndim == 0 or a.shape[0] != first.shape[0]:
        raise ValueError(
            "All arrays must have the same number of examples (first axis);"
            f" got arrays{jax.tree_util.keystr(first_path)}.shape={first.shape} and"
            f" arrays{jax.tree_util.keystr(path)}.shape={a.shape}."
        )
    n = first.shape[0]
    if n == 0:
      raise ValueError(f"arrays hold no examples; got shape {first.shape}.")
    batch_size = operator.index(batch_size)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if drop_last and batch_size > n:
      raise ValueError(
          f"batch_size={batch_size} is larger than the {n} examples: no full"
          " batch fits and drop_last=True would yield nothing; lower"
          " batch_size or pass drop_last=False."
      )
    seed = operator.index(seed)
    if seed < 0:
      raise ValueError(f"seed must be >= 0; got {seed}.")
    self.arrays = arrays
    self.batch_size = batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.drop_last = drop_last
    self._num_examples = n
    self._epoch = 0
    self._step = 0
    self._cached_epoch: int | None = None
    self._cached_order: np.ndarray | None = None

  @property
  def num_examples(self) -> int:
    """Number of examples n."""
    return self._num_examples

  @property
  def steps_per_epoch(self) -> int:
    """Batches per epoch: `n // batch_size`, rounded up without `drop_last`."""
    if self.drop_last:
      return self._num_examples // self.batch_size
    return -(-self._num_examples // self.batch_size)

  def __len__(self) -> int:
    return self.steps_per_epoch

  def permutation(self, epoch: int) -> np.ndarray:
    """Returns the example order of an epoch.

    Args:
      epoch: epoch index, >= 0.

    Returns:
      int64 `[n]`: `np.random.default_rng([seed, epoch]).permutation(n)`, or
      `arange(n)` without shuffling.
    """
    epoch = operator.index(epoch)
    if epoch < 0:
      raise ValueError(f"epoch must be >= 0; got {epoch}.")
    if not self.shuffle:
      return np.arange(self._num_examples)
    return np.random.default_rng([self.seed, epoch]).permutation(
        self._num_examples
    )

  def _order(self, epoch: int) -> np.ndarray:
    if self._cached_epoch != epoch:
      self._cached_order = self.permutation(epoch)
      self._cached_epoch = epoch
    return self._cached_order

  def _batch(self, order: np.ndarray, step: int, rows: slice | None = None) -> Batch:
    indices = order[step * self.batch_size : (step + 1) * self.batch_size]
    if rows is not None:
      indices = indices[rows]
    return jax.tree.map(lambda a: a[indices], self.arrays)

  def sample(self) -> Batch:
    """A batch of the first example alone (shapes and dtypes of every batch, size 1)."""
    return jax.tree.map(lambda a: a[:1], self.arrays)

  def examples(self) -> Any:
    """Every example: `arrays` itself (a batch source that holds its data in memory)."""
    return self.arrays

  def epoch(self, epoch: int, start_step: int = 0,
            rows: slice | None = None) -> Iterator[Batch]:
    """Yields the batches of one epoch, from step `start_step` on.

    Args:
      epoch: epoch index, >= 0.
      start_step: first step to yield, in [0, steps_per_epoch]; resuming at
        step k yields exactly the batches k, k + 1, ... of the full epoch.
      rows: only these rows of each batch (one process's part of a global
        batch; only they are gathered from the arrays); None for all.

    Returns:
      An iterator over batches shaped as `arrays`, each leaf a numpy array
      `[batch_size, ...]` (the last one shorter without `drop_last`).
    """
    order = self.permutation(epoch)
    start_step = operator.index(start_step)
    if not 0 <= start_step <= self.steps_per_epoch:
      raise ValueError(
          f"start_step must be in [0, {self.steps_per_epoch}]; got"
          f" {start_step}."
      )
    return (
        self._batch(order, step, rows)
        for step in range(start_step, self.steps_per_epoch)
    )

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> Batch:
    """Returns the next batch; runs forever, epoch after epoch."""
    batch = self._batch(self._order(self._epoch), self._step)
    self._step += 1
    if self._step == self.steps_per_epoch:
      self._epoch, self._step = self._epoch + 1, 0
    return batch

  def state(self) -> dict[str, int]:
    """Returns the position of the next batch, JSON-serializable.

    Returns:
      `{"epoch": int, "step": int}`, with `0 <= step < steps_per_epoch`.
    """
    return {"epoch": self._epoch, "step": self._step}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Moves to a position saved by `state()`.

    The next batch is then the one an uninterrupted iterator with the same
    arrays, batch size, seed and options would yield at that position.

    Args:
      state: `{"epoch": int >= 0, "step": int in [0, steps_per_epoch]}`.

    Raises:
      ValueError: a key is missing or a value is out of range.
    """
    try:
      epoch = operator.index(state["epoch"])
      step = operator.index(state["step"])
    except (KeyError, TypeError) as e:
      raise ValueError(
          'state must be {"epoch": int, "step": int}; got' f" {state!r}."
      ) from e
    if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
      raise ValueError(
          f"state out of range: need epoch >= 0 and 0 <= step <="
          f" {self.steps_per_epoch}; got {state!r}."
      )
    if step == self.steps_per_epoch:
      epoch, step = epoch + 1, 0
    self._epoch, self._step = epoch, step
