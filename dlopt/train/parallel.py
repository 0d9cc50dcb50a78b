"""Placement: how the steps use the devices of every process. One strategy per kind.

`placement(parallel)` turns `FitConfig.parallel` into a strategy, and `fit` only calls its
methods (`local_rows`, `prepare_model`, `place_state`, `train_step`, `eval_step`, `copy`):

- `DataParallel`, `jax.jit` over a one-axis (`data`) device mesh, in one of three modes:
  - "none": a mesh of one device (the first); the same code path as the others.
  - "mesh": the plain `train_step` with the batch sharded along `data` and the state
    replicated. The loss is the global batch's mean, so XLA inserts the gradient
    all-reduce, and batch norm computes the global batch's statistics: no collective is
    written by hand.
  - "fsdp": as "mesh", with every large leaf of the state (parameters, optimizer state,
    EMA) sharded along `data` (ZeRO-3 through sharding annotations: XLA all-gathers each
    parameter where it is used and reduces its gradient onto the shards).
- `PmapParallel` ("pmap"): `jax.pmap` of `train_step(..., axis_name="data")`, the
  per-device step that averages gradients and metrics with `lax.pmean`. It owns what only
  per-device steps need: models sync batch norm through their `norm_axis_name` (set by
  `prepare_model`), other stateful models are refused, and batches are reshaped per
  device. The state goes in unmapped (replicated) and comes out the same; evaluation runs
  through the mesh path. `jax.pmap` is in maintenance mode in current JAX: this strategy
  is kept working, and "mesh" is the one to prefer.

Every process passes only its own rows of each global batch (`local_rows`); the global
array is built with `jax.make_array_from_process_local_data`.

>>> strategy = placement("fsdp")                             # doctest: +SKIP
>>> state = strategy.place_state(state)                      # doctest: +SKIP
>>> step = strategy.train_step(state, Objective())           # doctest: +SKIP
>>> rows = strategy.local_rows(len(y))   # (x, y): a global batch # doctest: +SKIP
>>> state, metrics = step(state, (x[rows], y[rows]))         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlopt.train.config import PARALLEL_MODES
from dlopt.train.distributed import initialize as initialize_distributed
from dlopt.train.objective import Objective
from dlopt.train.state import TrainState
from dlopt.train.steps import eval_step, train_step

__all__ = ["DATA_AXIS", "FSDP_MIN_SIZE", "DataParallel", "Placement", "PmapParallel",
           "fsdp_spec", "make_mesh", "placement", "process_shard", "resolve_mode",
           "sync_batch_norm"]

DATA_AXIS = "data"
FSDP_MIN_SIZE = 2 ** 10  # elements; smaller leaves stay replicated under fsdp


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


def process_shard(num_examples: int) -> slice:
  """This process's contiguous block of `num_examples` rows (all of them for one process):
  process `p` of `P` gets `[p * n // P, (p + 1) * n // P)`. Load only these rows, then
  hand `fit` your batches of them wrapped in `dlopt.train.ProcessLocal`. Joins the processes first
  (`initialize_distributed`), so it may come before any other JAX call."""
  if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
    raise ValueError(f"num_examples must be an integer >= 0; got {num_examples!r}")
  initialize_distributed()
  p, count = jax.process_index(), jax.process_count()
  return slice(p * num_examples // count, (p + 1) * num_examples // count)


def sync_batch_norm(model: nn.Module) -> nn.Module:
  """`model` with batch statistics averaged over `data` in per-device (pmap) steps: a clone
  with `norm_axis_name="data"` when the model has that field, else `model` itself."""
  if "norm_axis_name" in {field.name for field in dataclasses.fields(model)}:
    return model.clone(norm_axis_name=DATA_AXIS)
  return model


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A one-axis (`data`) mesh over every device, each process's devices side by side.

  The order is `jax.pmap`'s, so the two modes share one mesh, and process `p` holds the
  `p`-th contiguous block of every batch sharded along `data`. `num_devices=1` gives the
  mesh of the first device alone (one process only).
  """
  if num_devices == 1:
    devices = jax.devices()[:1]
  elif jax.process_count() == 1:
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




class Placement(Protocol):
  """What `fit` asks of a placement strategy (`DataParallel`, `PmapParallel`)."""

  num_devices: int

  def local_rows(self, batch_size: int) -> slice: ...

  def prepare_model(self, model: nn.Module) -> nn.Module: ...

  def place_state(self, state: TrainState) -> TrainState: ...

  def train_step(self, state: TrainState, objective: Objective, *, ema_decay=None,
                 augment=None, compiler_options=None) -> Callable: ...

  def eval_step(self, state: TrainState, objective: Objective, *, num_classes=None,
                compiler_options=None) -> Callable: ...

  def copy(self, tree: Any) -> Any: ...


def placement(parallel: str) -> DataParallel:
  """The strategy that `FitConfig.parallel` names, over every device of every process.

  Raises:
    ValueError: for "none" when several processes have joined (each would train alone).
  """
  mode = resolve_mode(parallel)
  if mode == "none" and jax.process_count() > 1:
    raise ValueError(f"parallel='none' trains on one device, but {jax.process_count()} "
                     "processes have joined; use parallel='mesh', 'fsdp' or 'pmap'")
  if mode == "pmap":
    return PmapParallel.create("pmap")
  return DataParallel.create(mode)


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """Training with `jax.jit` over `mesh` in one mode ("none", "mesh" or "fsdp").

  Attributes:
    mode: "none" (a one-device mesh), "mesh" or "fsdp" (see the module docstring).
    mesh: the device mesh, one axis named `data`.
    min_shard_size: under "fsdp", leaves of fewer elements stay replicated.
  """

  mode: str
  mesh: Mesh
  min_shard_size: int = FSDP_MIN_SIZE

  _MODES = ("none", "mesh", "fsdp")

  def __post_init__(self):
    if self.mode not in self._MODES:
      raise ValueError(f"{type(self).__name__}.mode must be one of {', '.join(self._MODES)}; "
                       f"got {self.mode!r}")
    if self.mesh.axis_names != (DATA_AXIS,):
      raise ValueError(f"{type(self).__name__}.mesh must have the one axis {DATA_AXIS!r}; got "
                       f"{self.mesh.axis_names}")

  @classmethod
  def create(cls, mode: str, min_shard_size: int = FSDP_MIN_SIZE) -> DataParallel:
    """The strategy over every device (`make_mesh()`), or the first alone for "none"."""
    return cls(mode, make_mesh(1 if mode == "none" else None), min_shard_size)

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

  def prepare_model(self, model: nn.Module) -> nn.Module:
    """The model as this strategy runs it: unchanged under jit."""
    return model

  def state_shardings(self, state: TrainState) -> TrainState:
    """The `NamedSharding` of every leaf of `state`: replicated, or per `fsdp_spec`."""
    def sharding(leaf):
      if self.mode != "fsdp":
        return self.replicated
      return NamedSharding(self.mesh, fsdp_spec(np.shape(leaf), self.num_devices,
                                                self.min_shard_size))
    return jax.tree.map(sharding, state)

  def place_state(self, state: TrainState) -> TrainState:
    """`state` (the same value in every process) laid out over the mesh."""
    def place(leaf, sharding):
      value = np.asarray(leaf)
      return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
    return jax.tree.map(place, state, self.state_shardings(state))

  def copy(self, tree: Any) -> Any:
    """A copy of `tree` (e.g. the best parameters) in the same layout, safe from the
    donating train step."""
    return jax.tree.map(jnp.copy, tree)

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
      if jax.process_count() == 1:  # the same array, without the multi-process bookkeeping
        return jax.device_put(leaf, self.batch_sharding)
      return jax.make_array_from_process_local_data(self.batch_sharding, leaf, global_shape)
    return jax.tree.map(make, local_batch)

  def train_step(self, state: TrainState, objective: Objective, *,
                 ema_decay: float | None = None, augment=None,
                 compiler_options: dict | None = None) -> Callable:
    """The `train_step` over the mesh, the state donated.

    Args:
      state: a state placed by `place_state` (its layout is the step's).
      objective, ema_decay, augment: as `dlopt.train.train_step`.
      compiler_options: XLA options for `jax.jit`.

    Returns:
      `step(state, local_batch) -> (state, metrics)`, `local_batch` being this process's
      `local_rows` of the global batch (host arrays); metrics are replicated scalars.
    """
    shardings = self.state_shardings(state)
    bound = functools.partial(train_step, objective=objective, ema_decay=ema_decay,
                              augment=augment)
    jitted = jax.jit(bound, in_shardings=(shardings, self.batch_sharding),
                     out_shardings=(shardings, self.replicated), donate_argnums=0,
                     compiler_options=compiler_options)
    return lambda state, local_batch: jitted(state, self.global_batch(local_batch))

  def eval_step(self, state: TrainState, objective: Objective, *,
                num_classes: int | None = None,
                compiler_options: dict | None = None) -> Callable:
    """The `eval_step` over the mesh, jitted with `compiler_options`.

    Returns:
      `step(state, batch, weights) -> sums`, `batch` and `weights` [B] being the whole
      eval batch (the same in every process; B divisible by `num_devices`).
    """
    jitted = jax.jit(functools.partial(eval_step, objective=objective, num_classes=num_classes),
                     in_shardings=(self.state_shardings(state), self.batch_sharding,
                                   self.batch_sharding),
                     out_shardings=self.replicated, compiler_options=compiler_options)

    def step(state, batch, weights):
      rows = self.local_rows(len(weights))
      local = jax.tree.map(lambda a: np.asarray(a)[rows], (batch, weights))
      return jitted(state, *self.global_batch(local))
    return step


@dataclasses.dataclass(frozen=True)
class PmapParallel(DataParallel):
  """Training with per-device `jax.pmap` steps over every device (mode "pmap").

  The state is replicated over the mesh as under "mesh"; only the train step differs.
  """

  _MODES = ("pmap",)

  def prepare_model(self, model: nn.Module) -> nn.Module:
    """`model` with batch norm averaged over the devices (`sync_batch_norm`)."""
    return sync_batch_norm(model)

  def place_state(self, state: TrainState) -> TrainState:
    """The replicated state; refuses model state that the per-device copies would not
    keep in sync (a stateful model without `norm_axis_name`).

    Raises:
      ValueError: for such a model.
    """
    model = getattr(state.apply_fn, "__self__", None)
    if state.model_state and getattr(model, "norm_axis_name", None) != DATA_AXIS:
      raise ValueError(
          f"parallel='pmap' runs one copy of the model per device, and "
          f"{type(model).__name__} keeps state ({', '.join(state.model_state)}) that the "
          "copies would not keep in sync (it has no norm_axis_name field); use "
          "parallel='mesh'")
    return super().place_state(state)

  def train_step(self, state: TrainState, objective: Objective, *,
                 ema_decay: float | None = None, augment=None,
                 compiler_options: dict | None = None) -> Callable:
    """`jax.pmap` of `train_step(..., axis_name="data")`, the state donated (XLA options
    are not passed: pmap takes none). Same contract as `DataParallel.train_step`."""
    del state, compiler_options
    bound = functools.partial(train_step, objective=objective, ema_decay=ema_decay,
                              augment=augment, axis_name=DATA_AXIS)
    pmapped = jax.pmap(bound, axis_name=DATA_AXIS, in_axes=(None, 0), out_axes=None,
                       donate_argnums=0)
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

  def _global_replica(self, leaf: jax.Array) -> jax.Array:
    """A replicated array of this process's devices as the replicated global array."""
    return jax.make_array_from_single_device_arrays(
        leaf.shape, self.replicated, [shard.data for shard in leaf.addressable_shards])
