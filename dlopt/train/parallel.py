"""Data parallelism over every device of every process: mesh, shardings, batches, steps.

One `DataParallel` holds the device mesh (one axis, `data`, over `jax.devices()`, the
devices of each process side by side) and the mode:

- "mesh": `jax.jit` of the plain `train_step` with the batch sharded along `data` and the
  state replicated. The loss is the global batch's mean, so XLA inserts the gradient
  all-reduce, and batch norm computes the global batch's statistics: no collective is
  written by hand.
- "fsdp": as "mesh", with every large leaf of the state (parameters, optimizer state, EMA)
  sharded along `data` (ZeRO-3 through sharding annotations: XLA all-gathers each parameter
  where it is used and reduces its gradient onto the shards; each device updates its shard).
- "pmap": `jax.pmap` of `train_step(..., axis_name="data")`, the per-device step that
  averages gradients and metrics with `lax.pmean` (models sync batch norm through their
  `norm_axis_name`). The state goes in unmapped (`in_axes=None`: replicated, no leading
  device axis) and comes out the same; evaluation runs through the mesh path.

Every process passes only its own rows of each global batch (`local_rows`); the global
array is built with `jax.make_array_from_process_local_data`.

>>> par = DataParallel.create("fsdp")                     # doctest: +SKIP
>>> shardings = par.state_shardings(state)                # doctest: +SKIP
>>> state = par.place_state(state, shardings)             # doctest: +SKIP
>>> step = par.train_step(shardings, Objective())         # doctest: +SKIP
>>> rows = par.local_rows(len(y))   # (x, y): a global batch # doctest: +SKIP
>>> state, metrics = step(state, (x[rows], y[rows]))      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlopt.train.config import PARALLEL_MODES
from dlopt.train.distributed import initialize as initialize_distributed
from dlopt.train.objective import Objective
from dlopt.train.state import TrainState
from dlopt.train.steps import eval_step, train_step

__all__ = ["DATA_AXIS", "FSDP_MIN_SIZE", "MODES", "DataParallel", "ProcessLocal", "data_parallel",
           "fsdp_spec", "make_mesh", "process_shard", "resolve_mode", "sync_batch_norm"]

DATA_AXIS = "data"
FSDP_MIN_SIZE = 2 ** 10  # elements; smaller leaves stay replicated under fsdp
MODES = tuple(mode for mode in PARALLEL_MODES if mode not in ("auto", "none"))  # multi-device


def resolve_mode(parallel: str, device_count: int | None = None) -> str:
  """The mode `FitConfig.parallel` names: "auto" is "mesh" on several devices, else "none".

  Args:
    parallel: "auto", "none", "pmap", "mesh" or "fsdp".
    device_count: the number of devices; default `jax.device_count()` (all processes).

  Returns:
    "none", "pmap", "mesh" or "fsdp".
  """
  if parallel not in PARALLEL_MODES:
    raise ValueError(f"parallel must be one of {', '.join(PARALLEL_MODES)}; got {parallel!r}")
  if parallel != "auto":
    return parallel
  device_count = jax.device_count() if device_count is None else device_count
  return "mesh" if device_count > 1 else "none"


def data_parallel(parallel: str) -> DataParallel | None:
  """The `DataParallel` that `FitConfig.parallel` names over every device, or None for one.

  Raises:
    ValueError: for "none" when several processes have joined (each would train alone).
  """
  mode = resolve_mode(parallel)
  if mode == "none":
    if jax.process_count() > 1:
      raise ValueError(f"parallel='none' trains on one device, but {jax.process_count()} "
                       "processes have joined; use parallel='mesh', 'fsdp' or 'pmap'")
    return None
  return DataParallel.create(mode)


def process_shard(num_examples: int) -> slice:
  """This process's contiguous block of `num_examples` rows (all of them for one process):
  process `p` of `P` gets `[p * n // P, (p + 1) * n // P)`. Load only these rows, then
  hand `fit` your batches of them wrapped in `ProcessLocal`. Joins the processes first
  (`initialize_distributed`), so it may come before any other JAX call."""
  if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
    raise ValueError(f"num_examples must be an integer >= 0; got {num_examples!r}")
  initialize_distributed()
  p, count = jax.process_index(), jax.process_count()
  return slice(p * num_examples // count, (p + 1) * num_examples // count)


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

  def __len__(self) -> int:
    return len(self.batches)

  def __iter__(self):
    return iter(self.batches)


def sync_batch_norm(model: nn.Module) -> nn.Module:
  """`model` with batch statistics averaged over `data` in per-device (pmap) steps: a clone
  with `norm_axis_name="data"` when the model has that field, else `model` itself."""
  if "norm_axis_name" in {field.name for field in dataclasses.fields(model)}:
    return model.clone(norm_axis_name=DATA_AXIS)
  return model


def make_mesh() -> Mesh:
  """A one-axis (`data`) mesh over every device, each process's devices side by side.

  The order is `jax.pmap`'s, so the two modes share one mesh, and process `p` holds the
  `p`-th contiguous block of every batch sharded along `data`.
  """
  if jax.process_count() == 1:
    devices = jax.devices()
  else:
    devices = [d for p in range(jax.process_count()) for d in jax.local_devices(process_index=p)]
  return Mesh(np.array(devices), (DATA_AXIS,))


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """How FSDP lays out one array: split along its largest axis that `num_shards` divides.

  Args:
    shape: the array's shape.
    num_shards: the size of the `data` axis.
    min_size: arrays of fewer elements stay replicated (sharding them saves little memory
      and costs a gather each).

  Returns:
    `P()` (replicated) or a `PartitionSpec` naming `data` on one axis.
  """
  if math.prod(shape) < min_size or num_shards == 1:
    return P()
  divisible = [axis for axis, size in enumerate(shape) if size % num_shards == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda a: (shape[a], -a))  # the largest; the first on ties
  return P(*([None] * axis), DATA_AXIS)


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """Data-parallel training over `mesh` in one mode.

  Attributes:
    mode: "pmap", "mesh" or "fsdp" (see the module docstring).
    mesh: the device mesh, one axis named `data`.
    min_shard_size: under "fsdp", leaves of fewer elements stay replicated.
  """

  mode: str
  mesh: Mesh
  min_shard_size: int = FSDP_MIN_SIZE

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"DataParallel.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
    if self.mesh.axis_names != (DATA_AXIS,):
      raise ValueError(f"DataParallel.mesh must have the one axis {DATA_AXIS!r}; got "
                       f"{self.mesh.axis_names}")

  @classmethod
  def create(cls, mode: str, min_shard_size: int = FSDP_MIN_SIZE) -> DataParallel:
    """`DataParallel` over every device (`make_mesh()`)."""
    return cls(mode, make_mesh(), min_shard_size)

  @property
  def num_devices(self) -> int:
    """Devices in the mesh, over all processes."""
    return self.mesh.size

  @property
  def replicated(self) -> NamedSharding:
    """The sharding of a value every device holds whole."""
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    """The sharding of batches: rows split along `data`."""
    return NamedSharding(self.mesh, P(DATA_AXIS))

  def check_batch_size(self, batch_size: int, name: str = "batch_size") -> None:
    """Raises ValueError unless `batch_size` (a global batch) splits evenly over the devices."""
    if batch_size % self.num_devices:
      raise ValueError(
          f"{name}={batch_size} does not divide evenly over the {self.num_devices} devices "
          f"of parallel={self.mode!r} ({jax.process_count()} process(es)); use a multiple "
          f"of {self.num_devices}")

  def local_rows(self, batch_size: int) -> slice:
    """This process's rows of a global batch: `[p * B / P, (p + 1) * B / P)`."""
    self.check_batch_size(batch_size)
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)

  def state_shardings(self, state: TrainState) -> TrainState:
    """The `NamedSharding` of every leaf of `state`: replicated, or per `fsdp_spec`."""
    def sharding(leaf):
      if self.mode != "fsdp":
        return self.replicated
      return NamedSharding(self.mesh, fsdp_spec(np.shape(leaf), self.num_devices,
                                                self.min_shard_size))
    return jax.tree.map(sharding, state)

  def place_state(self, state: TrainState, shardings: TrainState) -> TrainState:
    """`state` (the same value in every process) laid out as `shardings` over the mesh."""
    def place(leaf, sharding):
      value = np.asarray(leaf)
      return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
    return jax.tree.map(place, state, shardings)

  def global_batch(self, local_batch: Any) -> Any:
    """The global batch, sharded along `data`, from every process's `local_rows` of it.

    Args:
      local_batch: a pytree of host arrays [B / num_processes, ...].

    Returns:
      The same pytree of global `jax.Array`s [B, ...].
    """
    def make(leaf):
      leaf = np.asarray(leaf)
      global_shape = (leaf.shape[0] * jax.process_count(),) + leaf.shape[1:]
      self.check_batch_size(global_shape[0], "the batch size")
      return jax.make_array_from_process_local_data(self.batch_sharding, leaf, global_shape)
    return jax.tree.map(make, local_batch)

  def train_step(self, shardings: TrainState, objective: Objective,
                 ema_decay: float | None = None, augment=None,
                 compiler_options: dict | None = None) -> Callable:
    """The data-parallel `train_step`, the state donated.

    Args:
      shardings: the state's shardings (`state_shardings`).
      objective, ema_decay, augment: as `dlopt.train.train_step`.
      compiler_options: XLA options for `jax.jit` (not used by "pmap").

    Returns:
      `step(state, local_batch) -> (state, metrics)`, `local_batch` being this process's
      `local_rows` of the global batch (host arrays); metrics are replicated scalars.
    """
    bound = functools.partial(train_step, objective=objective, ema_decay=ema_decay,
                              augment=augment)
    if self.mode != "pmap":
      jitted = jax.jit(bound, in_shardings=(shardings, self.batch_sharding),
                       out_shardings=(shardings, self.replicated), donate_argnums=0,
                       compiler_options=compiler_options)
      return lambda state, local_batch: jitted(state, self.global_batch(local_batch))

    pmapped = jax.pmap(functools.partial(bound, axis_name=DATA_AXIS), axis_name=DATA_AXIS,
                       in_axes=(None, 0), out_axes=None, donate_argnums=0)
    local_devices = self.mesh.local_mesh.size

    def step(state, local_batch):
      def per_device(leaf):  # [b, ...] -> [local devices, b / local devices, ...]
        leaf = np.asarray(leaf)
        self.check_batch_size(leaf.shape[0] * jax.process_count(), "the batch size")
        return leaf.reshape((local_devices, -1) + leaf.shape[1:])
      state, metrics = pmapped(state, jax.tree.map(per_device, local_batch))
      if jax.process_count() > 1:  # pmap hands back this process's part: make it global
        state = jax.tree.map(self._global_replica, state)
      return state, metrics
    return step

  def eval_step(self, shardings: TrainState, objective: Objective,
                num_classes: int | None = None,
                compiler_options: dict | None = None) -> Callable:
    """The data-parallel `eval_step` (every mode evaluates through the mesh), jitted with
    `compiler_options`.

    Returns:
      `step(state, batch, weights) -> sums`, `batch` and `weights` [B] being the whole
      eval batch (the same in every process; B divisible by `num_devices`).
    """
    jitted = jax.jit(functools.partial(eval_step, objective=objective, num_classes=num_classes),
                     in_shardings=(shardings, self.batch_sharding, self.batch_sharding),
                     out_shardings=self.replicated, compiler_options=compiler_options)

    def step(state, batch, weights):
      rows = self.local_rows(len(weights))
      local = jax.tree.map(lambda a: np.asarray(a)[rows], (batch, weights))
      return jitted(state, *self.global_batch(local))
    return step

  def _global_replica(self, leaf: jax.Array) -> jax.Array:
    """A replicated array of this process's devices as the replicated global array."""
    return jax.make_array_from_single_device_arrays(
        leaf.shape, self.replicated, [shard.data for shard in leaf.addressable_shards])
