"""The door of `fit`: every kind of training input becomes one `BatchSource`, once.

A batch source is what the loop needs of its data and nothing more:

- `len(source)`: batches per epoch (the same in every process);
- `source.batch_size`: examples per global batch;
- `source.sample()`: a batch of one example (shapes and dtypes, for init and checks);
- `source.examples()`: every example as one `(x, y)` pytree when the source holds them in
  memory (for label checks), else None;
- `source.epoch(e, start_step, rows)`: the batches of epoch `e` from `start_step` on, each
  cut to this process's `rows` of the global batch.

`dlopt.data.BatchIterator` is one as it is (over any pytree of arrays); `ProcessLocal`
(each process's own rows) is one; grain pipelines are adapted by `GrainBatches`
(`dlopt.train.grain_input`); any other re-iterable of `(x, y)` batches with `len()` is
adapted by `IterableBatches`. A source whose position is not a function of `(epoch,
step)` (an iterator's) may also have `iterator_state()` and `restore_iterator(state)`:
the loop saves that state in every checkpoint (`iterator_state`, `restore_iterator`
below). `resolve_inputs` turns `fit`'s `data`, `val_data` and
`test_data` into a source and two in-memory splits, checking them before anything is
traced.

>>> import numpy as np
>>> x, y = np.ones((10, 3), np.float32), np.arange(10) % 2
>>> source = batch_source((x, y), batch_size=4, seed=0)
>>> len(source), source.batch_size, [leaf.shape for leaf in source.sample()]
(2, 4, [(1, 3), (1,)])
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np
from jax.experimental import multihost_utils

from dlopt.data import BatchIterator, Splits, train_val_test_split
from dlopt.train.grain_input import GrainBatches, is_grain_pipeline
from dlopt.train.objective import Objective

__all__ = ["BatchSource", "Inputs", "IterableBatches", "ProcessLocal", "batch_source",
           "check_labels", "iterator_state", "resolve_inputs", "restore_iterator"]


@runtime_checkable
class BatchSource(Protocol):
  """Training batches as `fit` reads them (see the module docstring)."""

  batch_size: int

  def __len__(self) -> int: ...

  def sample(self) -> Any: ...

  def examples(self) -> Any: ...

  def epoch(self, epoch: int, start_step: int = 0,
            rows: slice | None = None) -> Iterator[Any]: ...


class IterableBatches:
  """A re-iterable of global `(x, y)` batches with `len()` as a `BatchSource`.

  Every batch must hold `batch_size` examples (the first batch's number); each process
  keeps its `rows` of each. A resumed epoch skips its first `start_step` batches (the
  iterable must yield the same batches each time it is iterated).
  """

  def __init__(self, batches):
    self.batches = batches

  def __len__(self) -> int:
    return len(self.batches)

  @property
  def batch_size(self) -> int:
    return num_examples(next(iter(self.batches))[0])

  def sample(self):
    return jax.tree.map(lambda a: np.asarray(a)[:1], next(iter(self.batches)))

  def examples(self):
    return None

  def epoch(self, epoch: int, start_step: int = 0, rows: slice | None = None):
    del epoch  # the iterable decides its own order
    size = self.batch_size
    for batch in _skip(iter(self.batches), start_step):
      if rows is None:
        yield batch
        continue
      if num_examples(batch[0]) != size:
        raise ValueError(f"data: every training batch must hold {size} examples (the first "
                         f"one's number, split over the devices); got one of "
                         f"{num_examples(batch[0])}")
      yield jax.tree.map(lambda a: np.asarray(a)[rows], batch)


class ProcessLocal:
  """Training batches this process loaded itself: its own part of every global batch.

  `fit(model, ProcessLocal(batches), val_data=..., config=...)` takes each `(x, y)` of
  `batches` (a re-iterable with `len()`, e.g. over the rows of `process_shard`) as this
  process's `batch_size / num_processes` rows of the global batch, and builds the global
  batch with `jax.make_array_from_process_local_data`, so no process ever holds the rest of
  the training data. Every process must yield as many batches per epoch, each of
  `batch_size / num_processes` examples. With one process it is a plain iterable of batches.
  """

  def __init__(self, batches):
    if not (hasattr(batches, "__iter__") and hasattr(batches, "__len__")):
      raise ValueError("ProcessLocal needs a re-iterable of (x, y) batches with len(); got "
                       f"{type(batches).__name__}")
    self.batches = batches
    self._checked_length = False

  def __len__(self) -> int:
    if not self._checked_length:  # once, when fit first asks; every process asks then
      _check_same_length_everywhere(len(self.batches))
      self._checked_length = True
    return len(self.batches)

  def __iter__(self):
    return iter(self.batches)

  @property
  def batch_size(self) -> int:
    """The global batch size: this process's rows times the number of processes."""
    return num_examples(next(iter(self.batches))[0]) * jax.process_count()

  def sample(self):
    return jax.tree.map(lambda a: np.asarray(a)[:1], next(iter(self.batches)))

  def examples(self):
    return None

  def epoch(self, epoch: int, start_step: int = 0, rows: slice | None = None):
    del epoch
    for batch in _skip(iter(self.batches), start_step):
      if rows is not None and num_examples(batch[0]) != rows.stop - rows.start:
        raise ValueError(f"data: every ProcessLocal batch must hold batch_size / "
                         f"num_processes = {rows.stop - rows.start} examples; got one of "
                         f"{num_examples(batch[0])}")
      yield batch


class Inputs(NamedTuple):
  """What `resolve_inputs` returns: the training source and the in-memory splits."""

  train: BatchSource
  val: tuple | None  # (x, y) host arrays, or None
  test: tuple | None


def batch_source(data: Any, batch_size: int, seed: int) -> BatchSource:
  """`data` as a `BatchSource`: a source as it is, `(x, y)` arrays shuffled into batches of
  `batch_size` from `seed`, a re-iterable of batches with `len()` adapted.

  Raises:
    ValueError: for anything else.
  """
  if isinstance(data, BatchSource):
    return data
  if is_grain_pipeline(data):
    return GrainBatches(data)
  if _is_pair_of_arrays(data):
    return BatchIterator(jax.tree.map(np.asarray, data), batch_size, seed=seed)
  if hasattr(data, "__iter__") and hasattr(data, "__len__"):
    return IterableBatches(data)
  raise ValueError("data must be an (x, y) tuple of arrays, a dlopt.data.Splits, a "
                   "dlopt.data.BatchIterator, a ProcessLocal, a grain pipeline, or a "
                   f"re-iterable of (x, y) batches with len(); got {type(data).__name__}")


def iterator_state(source: BatchSource) -> Any:
  """The state a checkpoint keeps of `source`'s iterator: None for a source whose
  position is `(epoch, step)` alone (arrays, re-iterables)."""
  save = getattr(source, "iterator_state", None)
  return None if save is None else save()


def restore_iterator(source: BatchSource, state: Any) -> None:
  """Puts `source`'s iterator back where `iterator_state` was taken (when it has one)."""
  restore = getattr(source, "restore_iterator", None)
  if restore is not None:
    restore(state)


def resolve_inputs(data: Any, val_data, test_data, *, batch_size: int, seed: int,
                   fractions: tuple[float, float], objective: Objective) -> Inputs:
  """`fit`'s data arguments as one training source and checked validation/test splits.

  Args:
    data: `(x, y)` arrays (split by `fractions` and `seed`, stratified for
      classification, unless `val_data`/`test_data` are given), a `dlopt.data.Splits`,
      or the training batches alone (any `batch_source` input).
    val_data, test_data: `(x, y)` arrays or None.
    batch_size: examples per training batch, for arrays.
    seed: the split's and the shuffling's seed.
    fractions: `(val_fraction, test_fraction)`.
    objective: the objective whose targets the data must fit.

  Returns:
    `Inputs(train, val, test)`; an empty split becomes None.
  """
  if isinstance(data, Splits):
    data, val_data, test_data = tuple(data.train), tuple(data.val), tuple(data.test)
  elif _is_pair_of_arrays(data):
    data = jax.tree.map(np.asarray, data)
    _check_pair(*data, "data", objective)
    if val_data is None and test_data is None:
      data, val_data, test_data = _split(*data, fractions, seed, objective)
  splits = []
  for name, split in (("val_data", val_data), ("test_data", test_data)):
    if split is not None:
      split = jax.tree.map(np.asarray, tuple(split))
      _check_pair(*split, name, objective)
    splits.append(None if split is None or num_examples(split[0]) == 0 else split)
  train = batch_source(data, batch_size, seed)
  if len(train) == 0:
    raise ValueError(f"data holds no full training batch of batch_size={batch_size}")
  return Inputs(train, *splits)


def check_labels(inputs: Inputs, outputs: jax.ShapeDtypeStruct,
                 objective: Objective) -> int | None:
  """Checks the labels against the model's output for a batch (`outputs`, its shape);
  returns the number of classes (or None for regression)."""
  if not objective.is_classification:
    return None
  if len(outputs.shape) < 2:
    raise ValueError(f"{objective.loss} needs model outputs [batch, classes] (or [batch, "
                     f"..., classes]); the model gives shape {outputs.shape}")
  num_classes = outputs.shape[-1]
  for name, split in (("data", inputs.train.examples()), ("val_data", inputs.val),
                      ("test_data", inputs.test)):
    if split is None:
      continue
    y = np.asarray(objective.labels(split[1]))
    if y.ndim == len(outputs.shape) and y.shape[-1] != num_classes:
      raise ValueError(f"{name}: one-hot labels have {y.shape[-1]} classes but the model "
                       f"outputs {num_classes}")
    if y.ndim == len(outputs.shape) - 1 and y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{name}: labels must be in [0, {num_classes}) for a model with "
                       f"{num_classes} outputs; got labels in [{y.min()}, {y.max()}]")
  return num_classes


def num_examples(tree) -> int:
  """The leading dimension of a pytree's first leaf."""
  return len(jax.tree.leaves(tree)[0])


def _skip(iterator, count: int):
  """`iterator` after its first `count` items (a resumed epoch)."""
  for _ in range(count):
    next(iterator)
  return iterator


def _check_same_length_everywhere(length: int) -> None:
  """Raises ValueError unless every process has as many training batches per epoch."""
  if jax.process_count() == 1:
    return
  lengths = np.ravel(multihost_utils.process_allgather(np.int32(length))).tolist()
  if len(set(lengths)) > 1:
    raise ValueError(f"data: every process's ProcessLocal batches must have one len(); got "
                     f"{lengths} (by process)")


def _is_array_or_tuple(value) -> bool:
  if isinstance(value, tuple):
    return len(value) > 0 and all(hasattr(a, "shape") for a in value)
  return hasattr(value, "shape")


def _is_pair_of_arrays(data) -> bool:
  """`(x, y)` where each is an array or a tuple of arrays."""
  return (isinstance(data, tuple) and len(data) == 2
          and all(_is_array_or_tuple(part) for part in data))


def _split(x, y, fractions: tuple[float, float], seed: int, objective: Objective) -> list:
  """Train/val/test parts of `(x, y)` (pytrees of arrays), stratified by class ids."""
  n = num_examples(x)
  labels = np.asarray(objective.labels(y)) if objective.is_classification else None
  if labels is not None and labels.ndim == 2 and np.issubdtype(labels.dtype, np.floating):
    labels = np.argmax(labels, axis=-1)  # one-hot rows
  stratify = labels is not None and labels.ndim == 1  # not sequence labels [N, T]
  val_fraction, test_fraction = fractions
  splits = train_val_test_split(
      np.arange(n), labels if stratify else np.zeros(n, np.int32),
      val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, stratify=stratify)
  return [jax.tree.map(lambda a, part=part: a[part.x], (x, y)) for part in splits]


def _check_pair(x, y, name: str, objective: Objective) -> None:
  """Checks `(x, y)` (each an array or a tuple of arrays) before anything is traced."""
  n = num_examples(x)
  for label, tree in (("x", x), ("y", y)):
    for leaf in jax.tree.leaves(tree):
      if leaf.ndim < 1 or len(leaf) != n:
        raise ValueError(f"{name}: x and y must have the same number of examples; got "
                         f"x shapes {jax.tree.map(np.shape, x)} and y shapes "
                         f"{jax.tree.map(np.shape, y)}")
      if label == "x" and not np.issubdtype(leaf.dtype, np.number):
        raise ValueError(f"{name}: x must be numeric; got dtype {leaf.dtype}")
      if (label == "x" and np.issubdtype(leaf.dtype, np.floating)
          and not np.all(np.isfinite(leaf))):
        raise ValueError(f"{name}: x holds NaN or infinite values")
  if objective.loss == "distillation" and not (isinstance(y, tuple) and len(y) == 2):
    raise ValueError(f"{name}: loss='distillation' needs targets (labels [N], teacher_logits "
                     f"[N, C]); got y shapes {jax.tree.map(np.shape, y)}")
  if objective.is_classification:
    labels = objective.labels(y)
    if labels.ndim == 1 and not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"{name}: labels y for cross_entropy must be integer class ids [N] or "
                       f"one-hot [N, C]; got y.dtype={labels.dtype}, y.shape={labels.shape}")
