"""A `grain` pipeline as `fit`'s batch source, its iterator state kept in the checkpoint.

`fit(model, pipeline, val_data=..., ...)` takes a `grain.MapDataset`, `grain.IterDataset`
or `grain.DataLoader` whose elements are `(x, y)` batches. One iterator runs through the
whole run; an epoch is `len(pipeline)` of its batches (a finite dataset starts a new pass,
in the same order, when it ends), or `steps_per_epoch` of them for a pipeline without
`len()` (a `DataLoader` or an endless dataset): wrap it as `GrainBatches(pipeline,
steps_per_epoch=N)`. For a new order every epoch, shuffle before repeating:
`grain.MapDataset.source(rows).shuffle(seed=0).repeat().batch(64)` with
`steps_per_epoch=len(rows) // 64` (grain reshuffles each repetition).
Every checkpoint saves the iterator's state (`get_state()`), and a resumed run restores it
(`set_state`), so the batches after a resume are the ones an unbroken run would have seen.

>>> import grain, numpy as np
>>> x, y = np.ones((20, 3), np.float32), np.arange(20) % 2
>>> pipeline = (grain.MapDataset.range(20).shuffle(seed=0)
...             .map(lambda i: (x[i], y[i])).batch(4, drop_remainder=True))
>>> source = GrainBatches(pipeline)
>>> len(source), source.batch_size
(5, 4)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["GrainBatches", "is_grain_pipeline"]


def is_grain_pipeline(data: Any) -> bool:
  """Whether `data` is one of grain's datasets or data loaders."""
  return type(data).__module__.split(".")[0] == "grain"


class GrainBatches:
  """A grain pipeline of `(x, y)` batches as a `dlopt.train.BatchSource`.

  Args:
    pipeline: a `grain.MapDataset`, `grain.IterDataset` or `grain.DataLoader` yielding
      `(x, y)` batches (`x`, `y` arrays or tuples of arrays, [batch, ...]).
    steps_per_epoch: batches per epoch; default `len(pipeline)` (required without one).
    process_local: whether each process's pipeline yields its own rows of every global
      batch (grain's `ShardOptions` / `ShardByJaxProcess`), as `ProcessLocal`; default:
      the batches are global and each process keeps its rows.

  Raises:
    ValueError: without `steps_per_epoch` for a pipeline without `len()`.
  """

  def __init__(self, pipeline: Any, steps_per_epoch: int | None = None, *,
               process_local: bool = False):
    if steps_per_epoch is None:
      if not hasattr(pipeline, "__len__"):
        raise ValueError(f"a grain {type(pipeline).__name__} has no len(): pass "
                         "GrainBatches(pipeline, steps_per_epoch=N) to fit")
      steps_per_epoch = len(pipeline)
    if steps_per_epoch < 1:
      raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    self.pipeline, self.steps_per_epoch = pipeline, steps_per_epoch
    self.process_local = process_local
    self._iterator = None

  def __len__(self) -> int:
    return self.steps_per_epoch

  @property
  def batch_size(self) -> int:
    size = _num_examples(self._first_batch()[0])
    return size * jax.process_count() if self.process_local else size

  def sample(self):
    return jax.tree.map(lambda a: np.asarray(a)[:1], self._first_batch())

  def examples(self):
    return None

  def epoch(self, epoch: int, start_step: int = 0, rows: slice | None = None):
    """The rest of epoch `epoch` from the running iterator (positioned at `start_step`
    already: by the batches before it, or by `restore_iterator` on resume)."""
    del epoch
    for _ in range(start_step, self.steps_per_epoch):
      batch = self._next()
      if not (isinstance(batch, tuple) and len(batch) == 2):
        raise ValueError("data: a grain pipeline for fit must yield (x, y) batches; got "
                         f"{type(batch).__name__}")
      if rows is None:
        yield batch
      elif self.process_local:
        if _num_examples(batch[0]) != rows.stop - rows.start:
          raise ValueError(f"data: every process-local grain batch must hold batch_size / "
                           f"num_processes = {rows.stop - rows.start} examples; got "
                           f"{_num_examples(batch[0])}")
        yield batch
      else:
        yield jax.tree.map(lambda a: np.asarray(a)[rows], batch)

  def iterator_state(self) -> Any:
    """The running iterator's state, JSON-serializable (None before the first batch)."""
    if self._iterator is None:
      return None
    state = self._iterator.get_state()
    return {"bytes": state.decode()} if isinstance(state, bytes) else state

  def restore_iterator(self, state: Any) -> None:
    """Positions a fresh iterator where `iterator_state` was taken."""
    self._iterator = iter(self.pipeline)
    if state is not None:
      self._iterator.set_state(state["bytes"].encode() if "bytes" in state else state)

  def _first_batch(self):
    return next(iter(self.pipeline))

  def _next(self):
    if self._iterator is None:
      self._iterator = iter(self.pipeline)
    try:
      return next(self._iterator)
    except StopIteration:  # a finite dataset's pass ended: the next pass
      self._iterator = iter(self.pipeline)
      return next(self._iterator)


def _num_examples(tree) -> int:
  return len(jax.tree.leaves(tree)[0])

