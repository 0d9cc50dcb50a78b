"""The `fit` loop: split, shuffle, train, validate, stop early, checkpoint, resume, log, plot.

>>> from dlopt.data import load_digits
>>> from dlopt.models import MLP
>>> from dlopt.optim import OptimizerConfig
>>> from dlopt.train import FitConfig, fit
>>> x, y = load_digits()
>>> result = fit(MLP(widths=(64, 64), num_outputs=10), (x, y),
...              optimizer=OptimizerConfig("adamw", 3e-3, schedule="warmup_cosine",
...                                        warmup_steps=20, weight_decay=1e-4),
...              config=FitConfig(epochs=5, progress=False))   # doctest: +SKIP
>>> result.test_metrics["accuracy"]                               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from dlopt.data import BatchIterator, Splits, train_val_test_split
from dlopt.optim import OptimizerConfig, make_optimizer, make_schedule, num_updates
from dlopt.train.callbacks import (EarlyStopping, append_metric_log, plot_curves,
                                   write_metric_log)
from dlopt.train.checkpoint import Checkpointer
from dlopt.train.config import FitConfig
from dlopt.train.distributed import initialize as initialize_distributed
from dlopt.train.evaluate import evaluate
from dlopt.train.interrupt import StopRequest, stop_on_interrupt
from dlopt.train.objective import Objective
from dlopt.train.parallel import DataParallel, ProcessLocal, data_parallel, sync_batch_norm
from dlopt.train.state import TrainState, create_train_state
from dlopt.train.steps import make_eval_step, make_train_step, model_args
from dlopt.train.xla_options import compiler_options_for

__all__ = ["fit", "FitResult", "NonFiniteLossError"]

# Fields that may change between a run and its resumption without changing its result
# (`parallel` only by the order of float reductions, and pmap's per-device dropout streams).
_RESUME_MAY_DIFFER = ("progress", "plot", "log_every", "parallel")


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss or gradient norm stops being finite."""


class FitResult(NamedTuple):
  """What `fit` returns.

  Attributes:
    state: the final `TrainState` (the best epoch's parameters if `restore_best` applied).
    history: one dict per epoch: train and validation metrics, learning rate, time.
    test_metrics: metrics on the test split (None without one).
    workdir: the run directory, or None.
  """

  state: TrainState
  history: list[dict]
  test_metrics: dict | None
  workdir: Path | None


def fit(model: nn.Module, data: Any, *, optimizer: OptimizerConfig = OptimizerConfig(),
        config: FitConfig = FitConfig(), val_data: tuple | None = None,
        test_data: tuple | None = None, workdir: str | Path | None = None,
        resume: bool = False, augment=None, init_variables: dict | None = None,
        post_transform: optax.GradientTransformation | None = None) -> FitResult:
  """Trains `model` on `data`.

  Args:
    model: a Flax Linen module taking `(x, *, train)`, returning logits [B, C]
      (cross-entropy) or predictions (mse).
    data: `(x, y)` numpy arrays (split into train/val/test by `config`'s fractions and
      seed, stratified for classification); a `dlopt.data.Splits`; or the training batches
      alone as a `dlopt.data.BatchIterator` or any re-iterable with `len()` yielding
      `(x, y)` batches, with `val_data` / `test_data` given apart. `x` may be a tuple of
      arrays, the model's positional inputs (e.g. `(features, lengths)`); `y` may be a
      tuple too (`(labels, teacher_logits)` for loss="distillation").
    optimizer: the optimizer, schedule, weight decay, clipping, accumulation and EMA.
    config: the loop's settings.
    val_data: `(x, y)` arrays for validation, when `data` holds training data only.
    test_data: `(x, y)` arrays for the final test, when `data` holds training data only.
    workdir: the run directory for `config.json`, `metrics.jsonl`, `curves.png`,
      `checkpoints/` and `final_metrics.json`; None keeps nothing on disk.
    resume: continue from the newest checkpoint in `workdir` (bit-exact on the same
      machine). Without it, a `workdir` that already holds checkpoints is an error, so
      that nothing saved is overwritten.
    augment: None, or a jittable `(key, x) -> x` run on the device on every training
      batch (e.g. `functools.partial(dlopt.data.augment, config=AugmentConfig(...))`).
    init_variables: start from these variables (`{"params": ..., "batch_stats": ...}`,
      e.g. a trained model to fine-tune) instead of a fresh initialization.
    post_transform: an optax transformation chained after the optimizer (e.g.
      `dlopt.compress.keep_masked(masks)`, so that pruned weights stay zero).

  Several devices and processes (`config.parallel`): every process calls `fit` with the
  same arguments (`dlopt.train.initialize_distributed` joins them first, from the
  environment); each reads only its own rows of each global batch, all save and restore
  checkpoints together (a run may resume on another number of devices or processes), and
  only process 0 writes logs, plots and the progress bar.

  Returns:
    A `FitResult`.

  Raises:
    ValueError: on bad data shapes, labels, configs, a `batch_size` that does not divide
      over the devices, or a workdir/resume conflict.
    NonFiniteLossError: when the loss becomes NaN or infinite; the error names the step,
      and checkpoints saved before it are kept.
  """
  if not isinstance(optimizer, OptimizerConfig):
    raise ValueError(f"optimizer must be a dlopt.optim.OptimizerConfig; got {type(optimizer)}")
  if not isinstance(config, FitConfig):
    raise ValueError(f"config must be a dlopt.train.FitConfig; got {type(config)}")
  objective = Objective(config.loss, config.label_smoothing, config.l1, config.l2,
                        config.distill_temperature, config.distill_alpha)
  initialize_distributed()  # joins the other processes when the environment names them
  par = data_parallel(config.parallel)
  train, val, test = _resolve_data(data, val_data, test_data, config, objective)
  # This process's rows of each global batch; checks that the batch splits over the devices.
  rows = None if par is None else par.local_rows(_train_batch_size(train, config))
  if isinstance(train, ProcessLocal):
    _check_same_length_everywhere(train)
  steps_per_epoch = len(train)
  total_steps = config.epochs * steps_per_epoch
  tx = make_optimizer(optimizer, total_steps=total_steps)
  if post_transform is not None:
    tx = optax.chain(tx, post_transform)
  schedule = make_schedule(optimizer, num_updates(optimizer, total_steps))
  sample_x = _sample_inputs(train)
  run_model = sync_batch_norm(model) if par is not None and par.mode == "pmap" else model
  try:
    state = create_train_state(run_model, tx, sample_x, seed=config.seed,
                               ema=optimizer.ema_decay is not None)
  except ValueError as error:
    shapes = jax.tree.map(lambda leaf: leaf.shape[1:], sample_x)
    raise ValueError(f"the model does not take the training inputs (one example of shape "
                     f"{shapes}): {error}") from error
  if init_variables is not None:
    state = _with_variables(state, init_variables)
  # One trace of the forward pass gives the output's shape and what it computes (convolves?).
  forward, out = jax.make_jaxpr(
      lambda v, x: state.apply_fn(v, *model_args(x), train=False), return_shape=True)(
          {"params": state.params, **state.model_state}, sample_x)
  num_classes = _check_model_outputs(out, train, val, test, objective)
  options = compiler_options_for(forward)
  if par is None:
    train_step = make_train_step(objective, optimizer.ema_decay, augment, options)
    eval_step = make_eval_step(objective, num_classes, options)
  else:
    if par.mode == "pmap" and state.model_state and run_model is model:
      raise ValueError(
          f"parallel='pmap' runs one copy of the model per device, and "
          f"{type(model).__name__} keeps state ({', '.join(state.model_state)}) that the "
          "copies would not keep in sync (it has no norm_axis_name field); use "
          "parallel='mesh'")
    shardings = par.state_shardings(state)
    state = par.place_state(state, shardings)
    train_step = par.train_step(shardings, objective, optimizer.ema_decay, augment, options)
    eval_step = par.eval_step(shardings, objective, num_classes, options)
  run = _Run(config, objective, eval_step, schedule, optimizer, par, rows)
  keeps_best = config.patience is not None and config.restore_best and val is not None

  start_epoch, start_step, partial_sums, best = 0, 0, None, None
  checkpointer = None
  if workdir is not None:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(workdir / "checkpoints", config.keep_last_n)
  try:
    if checkpointer is not None:
      _check_saved_config(workdir, model, config, optimizer, resume, checkpointer)
      if resume and checkpointer.latest_step() is not None:
        # The restored arrays take the template's shardings: any device count resumes.
        best_template = _best_tree(state, par) if keeps_best else None
        state, meta, best = checkpointer.restore(state, best_template)
        start_epoch, start_step = meta["epoch"], meta["step_in_epoch"]
        partial_sums = meta["partial_sums"]
        run.history = meta["history"]
        run.early = EarlyStopping(**meta["early_stopping"])
        if run.primary:
          write_metric_log(run.history, workdir / "metrics.jsonl")
      elif run.primary:
        (workdir / "metrics.jsonl").unlink(missing_ok=True)

    with stop_on_interrupt() as stop:
      state, best = _train(state, best, train, val, train_step, run, checkpointer, workdir,
                           start_epoch, start_step, partial_sums, keeps_best, stop)
    if keeps_best and best is not None:
      state = state.replace(**best)
    test_metrics = run.evaluate(state, test) if test is not None else None
    if checkpointer is not None:
      if checkpointer.latest_step() != int(state.step):
        _save(checkpointer, state, run.meta(config.epochs, 0, None), best)
      if run.primary:
        _write_final(workdir, run, test_metrics, int(state.step))
  finally:
    if checkpointer is not None:
      checkpointer.close()
  return FitResult(state, run.history, test_metrics, workdir)


@dataclasses.dataclass
class _Run:
  """The host-side record of one run: history, early stopping, evaluation."""

  config: FitConfig
  objective: Objective
  eval_step: Any
  schedule: Any
  optimizer: OptimizerConfig
  par: DataParallel | None = None
  rows: slice | None = None  # this process's rows of each training batch; None: all
  history: list = dataclasses.field(default_factory=list)
  early: EarlyStopping = EarlyStopping()

  @property
  def primary(self) -> bool:
    """Whether this process writes logs, plots and the progress bar (process 0)."""
    return jax.process_index() == 0

  def evaluate(self, state, split) -> dict:
    x, y = split
    return evaluate(state, x, y, eval_step=self.eval_step, batch_size=self.config.eval_batch_size,
                    is_classification=self.objective.is_classification,
                    multiple_of=1 if self.par is None else self.par.num_devices)

  def meta(self, epoch: int, step_in_epoch: int, partial_sums) -> dict:
    return {"epoch": epoch, "step_in_epoch": step_in_epoch, "partial_sums": partial_sums,
            "history": self.history, "early_stopping": self.early._asdict()}


def _train(state, best, train, val, train_step, run: _Run, checkpointer, workdir,
           start_epoch, start_step, partial_sums, keeps_best, stop: StopRequest):
  """The epoch loop; returns the final state and the best parameters (or None).

  On Ctrl-C (`stop.requested`) it saves a checkpoint at the current step and raises
  `KeyboardInterrupt`; with several processes, at the first step where metrics are
  flushed after any process was asked, all together.
  """
  config = run.config
  if run.early.should_stop(config.patience):  # resumed after an early stop: nothing to do
    return state, best
  step = int(state.step)
  steps_per_epoch = len(train)
  for epoch in range(start_epoch, config.epochs):
    sums = dict(partial_sums or {})
    partial_sums = None
    pending: list[tuple[int, dict]] = []
    epoch_start = time.perf_counter()
    bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}",
               disable=not (config.progress and run.primary), leave=True, dynamic_ncols=True)
    batches = _epoch_batches(train, epoch, start_step, run.rows)
    for index, batch in enumerate(batches, start=start_step):
      state, batch_metrics = train_step(state, batch)
      step += 1
      pending.append((step, batch_metrics))
      bar.update(1)
      last_in_epoch = index + 1 == steps_per_epoch
      flushing = len(pending) >= config.log_every or last_in_epoch
      if flushing:
        _flush(pending, sums, checkpointer, keep=0 if last_in_epoch else 1)
        bar.set_postfix({k: f"{v / sums['count']:.4f}" for k, v in sums.items() if k != "count"},
                        refresh=False)
      if not last_in_epoch and _stop_agreed(stop, at_sync_point=flushing):
        bar.close()
        if checkpointer is not None:
          _flush(pending, sums, checkpointer)
          _save(checkpointer, state, run.meta(epoch, index + 1, sums), best)
        raise KeyboardInterrupt(f"stopped at step {step}")
      if (checkpointer is not None and config.checkpoint_every
          and step % config.checkpoint_every == 0 and not last_in_epoch):
        _flush(pending, sums, checkpointer)
        _save(checkpointer, state, run.meta(epoch, index + 1, sums), best)
    start_step = 0
    record = {"epoch": epoch + 1, "step": step}
    record.update({f"train_{k}": v / sums["count"] for k, v in sums.items() if k != "count"})
    record["learning_rate"] = float(run.schedule(
        max(num_updates(run.optimizer, step) - 1, 0)))
    if val is not None:
      val_metrics = run.evaluate(state, val)
      record.update({f"val_{k}": v for k, v in val_metrics.items() if k != "per_class_f1"})
    record["epoch_seconds"] = time.perf_counter() - epoch_start
    run.history.append(record)
    early_stop = False
    if val is not None:
      run.early, improved = run.early.update(record[config.monitor], epoch + 1,
                                             mode=config.monitor_mode, min_delta=config.min_delta)
      if improved and keeps_best:
        best = _best_tree(state, run.par)
      early_stop = run.early.should_stop(config.patience)
    shown = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    bar.set_postfix({k.replace("train_", ""): f"{record[k]:.4f}" for k in shown if k in record})
    bar.close()
    if workdir is not None:
      if run.primary:
        append_metric_log(record, workdir / "metrics.jsonl")
        if config.plot:
          plot_curves(run.history, workdir / "curves.png")
      _save(checkpointer, state, run.meta(epoch + 1, 0, None), best)
    if epoch + 1 < config.epochs and _stop_agreed(stop, at_sync_point=True):
      raise KeyboardInterrupt(f"stopped at step {step}")
    if early_stop:
      if config.progress and run.primary:
        tqdm.write(f"early stopping after epoch {epoch + 1}: {config.monitor} has not improved "
                   f"for {config.patience} epochs (best {run.early.best:.4f} at epoch "
                   f"{run.early.best_epoch})")
      break
  return state, best


def _stop_agreed(stop: StopRequest, at_sync_point: bool) -> bool:
  """Whether to stop now. One process decides alone; several stop only together, at the
  steps where every process checks (a process that stopped alone would leave the others
  waiting on it in the next collective)."""
  if jax.process_count() == 1:
    return stop.requested
  if not at_sync_point:
    return False
  return bool(np.any(multihost_utils.process_allgather(np.int32(stop.requested))))


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _save(checkpointer: Checkpointer, state: TrainState, meta: dict, best) -> None:
  """Saves a checkpoint unless the parameters went non-finite (a bad save would hide the
  last good one)."""
  if not bool(_all_finite(state.params)):
    checkpointer.wait()
    raise NonFiniteLossError(
        f"parameters became non-finite at step {int(state.step)}; the last good checkpoint "
        f"(step {checkpointer.latest_step()}) is kept in {checkpointer.directory}. Lower "
        "the learning rate or clip gradients (clip_norm).")
  checkpointer.save(state, meta, best)


def _flush(pending: list, sums: dict, checkpointer, keep: int = 0) -> None:
  """Brings pending step metrics to the host, checks them, and adds them to `sums`.

  The newest `keep` steps stay pending: not waiting for the step just dispatched keeps the
  device busy while the host reads the others.
  """
  ready = pending[:len(pending) - keep]
  del pending[:len(ready)]
  if not ready:
    return
  values = jax.device_get([m for _, m in ready])
  for (step, _), batch_metrics in zip(ready, values):
    for name in ("loss", "grad_norm"):
      if not math.isfinite(float(batch_metrics[name])):
        where = ""
        if checkpointer is not None:
          checkpointer.wait()
          where = (f"; the last good checkpoint (step {checkpointer.latest_step()}) is kept in "
                   f"{checkpointer.directory}")
        raise NonFiniteLossError(f"training {name} became {float(batch_metrics[name])} at step "
                                 f"{step}{where}. Lower the learning rate, clip gradients "
                                 "(clip_norm) or check the inputs for NaN.")
    for name, value in batch_metrics.items():
      if name != "grad_norm":
        sums[name] = sums.get(name, 0.0) + float(value)
    sums["count"] = sums.get("count", 0) + 1


def _epoch_batches(train, epoch: int, start_step: int, rows: slice | None = None) -> Iterable:
  """The batches of `epoch` from `start_step` on; with `rows`, only those rows of each
  (gathered from the arrays alone, when the batches come from arrays)."""
  if isinstance(train, _TreeBatches):
    return train.epoch(epoch, start_step, rows)
  if isinstance(train, ProcessLocal) and rows is not None:  # this process's rows already
    return (_checked_local(batch, rows.stop - rows.start)
            for batch in _skip(iter(train), start_step))
  if isinstance(train, BatchIterator):
    return train.epoch(epoch, start_step, rows)
  iterator = _skip(iter(train), start_step)
  if rows is None:
    return iterator
  return (_local_rows(batch, rows) for batch in iterator)


def _skip(iterator, count: int):
  """`iterator` after its first `count` items (a resumed epoch)."""
  for _ in range(count):
    next(iterator)
  return iterator


def _checked_local(batch, size: int):
  """A `ProcessLocal` batch, checked to hold this process's `size` rows."""
  if _num_examples(batch[0]) != size:
    raise ValueError(f"data: every ProcessLocal batch must hold batch_size / num_processes = "
                     f"{size} examples; got one of {_num_examples(batch[0])}")
  return batch


def _local_rows(batch, rows: slice):
  """`rows` of a global batch from an iterable, checked to be of the one batch size."""
  size = (rows.stop - rows.start) * jax.process_count()
  if _num_examples(batch[0]) != size:
    raise ValueError(f"data: in parallel mode every training batch must hold {size} examples "
                     f"(the first one's number, split over the devices); got one of "
                     f"{_num_examples(batch[0])}")
  return jax.tree.map(lambda a: np.asarray(a)[rows], batch)


def _check_same_length_everywhere(train: ProcessLocal) -> None:
  """Raises ValueError unless every process has as many training batches per epoch."""
  if jax.process_count() == 1:
    return
  lengths = multihost_utils.process_allgather(np.int32(len(train)))
  if len(set(np.ravel(lengths).tolist())) > 1:
    raise ValueError("data: every process's ProcessLocal batches must have one len(); got "
                     f"{np.ravel(lengths).tolist()} (by process)")


def _train_batch_size(train, config: FitConfig) -> int:
  """The size of every (global) training batch (checked to be one size where that can be
  known)."""
  if isinstance(train, ProcessLocal):
    x, _ = next(iter(train))
    return _num_examples(x) * jax.process_count()
  if isinstance(train, _TreeBatches):
    return train.iterator.batch_size
  if isinstance(train, BatchIterator):
    if not train.drop_last and train.num_examples % train.batch_size:
      raise ValueError("data: a BatchIterator with drop_last=False ends on a short batch, "
                       "which does not split over the devices; pass drop_last=True")
    return train.batch_size
  x, _ = next(iter(train))
  return _num_examples(x)


def _best_tree(state: TrainState, par: DataParallel | None = None) -> dict:
  tree = {"params": state.params, "model_state": state.model_state}
  if state.ema_params is not None:
    tree["ema_params"] = state.ema_params
  if par is not None:  # a copy that keeps the shardings (other processes hold other shards)
    return jax.tree.map(jnp.copy, tree)
  # A real copy: on CPU, device_get may view the buffers the next (donating) step reuses.
  return jax.tree.map(lambda leaf: np.array(leaf, copy=True), tree)


def _with_variables(state: TrainState, variables: dict) -> TrainState:
  """The state started from `variables` instead of its own init (structures must match)."""
  variables = dict(variables)
  params = variables.pop("params", None)
  fresh = {"params": state.params, **state.model_state}
  given = {"params": params, **variables}
  if jax.tree.structure(fresh) != jax.tree.structure(given) or any(
      a.shape != b.shape for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(given))):
    raise ValueError("init_variables must have the model's variable structure and shapes; "
                     f"got {jax.tree.map(np.shape, given)}, the model has "
                     f"{jax.tree.map(np.shape, fresh)}")
  # Copies: the train step donates the state's buffers, which must not be the caller's.
  params = jax.tree.map(lambda new, old: jnp.array(new, old.dtype, copy=True), params,
                        state.params)
  model_state = jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), variables)
  return state.replace(params=params, opt_state=state.tx.init(params), model_state=model_state,
                       ema_params=None if state.ema_params is None
                       else jax.tree.map(jnp.copy, params))


def _sample_inputs(train):
  """One example's inputs (an array, or a tuple of arrays), batch dim kept."""
  if isinstance(train, _TreeBatches):
    return jax.tree.map(lambda a: a[:1], train.inputs)
  if isinstance(train, BatchIterator):
    return train.arrays[0][:1]
  x, _ = next(iter(train))
  return jax.tree.map(lambda a: np.asarray(a)[:1], x)


class _TreeBatches:
  """Batches of `(x, y)` where either may be a tuple of arrays, over one BatchIterator."""

  def __init__(self, x, y, batch_size: int, seed: int):
    self.inputs, self.targets = x, y
    leaves, self.treedef = jax.tree.flatten((x, y))
    self.iterator = BatchIterator(tuple(leaves), batch_size, seed=seed)

  def __len__(self) -> int:
    return len(self.iterator)

  def epoch(self, epoch: int, start_step: int = 0, rows: slice | None = None):
    return (jax.tree.unflatten(self.treedef, batch)
            for batch in self.iterator.epoch(epoch, start_step, rows))


def _resolve_data(data, val_data, test_data, config: FitConfig, objective: Objective):
  """Returns (train batches, val split or None, test split or None)."""
  if isinstance(data, Splits):
    parts = [tuple(data.train), tuple(data.val), tuple(data.test)]
  elif _is_pair_of_arrays(data):
    x, y = jax.tree.map(np.asarray, data)
    _check_pair(x, y, "data", objective)
    if val_data is None and test_data is None:
      parts = _split(x, y, config, objective)
    else:
      parts = [(x, y), val_data, test_data]
  elif hasattr(data, "__iter__") and hasattr(data, "__len__"):
    parts = [data, val_data, test_data]
  else:
    raise ValueError("data must be an (x, y) tuple of arrays, a dlopt.data.Splits, or a "
                     f"re-iterable of (x, y) batches with len(); got {type(data).__name__}")
  train, val, test = parts
  for name, part in (("val_data", val), ("test_data", test)):
    if part is not None:
      _check_pair(*jax.tree.map(np.asarray, tuple(part)), name, objective)
  val = None if val is None or _num_examples(val[0]) == 0 else jax.tree.map(np.asarray,
                                                                           tuple(val))
  test = None if test is None or _num_examples(test[0]) == 0 else jax.tree.map(np.asarray,
                                                                              tuple(test))
  if isinstance(train, tuple):
    train = _TreeBatches(*train, config.batch_size, config.seed)
  if len(train) == 0:
    raise ValueError("data holds no full training batch of "
                     f"batch_size={config.batch_size}")
  return train, val, test


def _is_array_or_tuple(value) -> bool:
  if isinstance(value, tuple):
    return len(value) > 0 and all(hasattr(a, "shape") for a in value)
  return hasattr(value, "shape")


def _is_pair_of_arrays(data) -> bool:
  """`(x, y)` where each is an array or a tuple of arrays."""
  return (isinstance(data, tuple) and len(data) == 2
          and all(_is_array_or_tuple(part) for part in data))


def _num_examples(tree) -> int:
  return len(jax.tree.leaves(tree)[0])


def _split(x, y, config: FitConfig, objective: Objective) -> list:
  """Train/val/test parts of `(x, y)` (pytrees of arrays), stratified by class ids."""
  n = _num_examples(x)
  labels = np.asarray(objective.labels(y)) if objective.is_classification else None
  if labels is not None and labels.ndim == 2 and np.issubdtype(labels.dtype, np.floating):
    labels = np.argmax(labels, axis=-1)  # one-hot rows
  stratify = labels is not None and labels.ndim == 1  # not sequence labels [N, T]
  splits = train_val_test_split(
      np.arange(n), labels if stratify else np.zeros(n, np.int32),
      val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
      stratify=stratify)
  return [jax.tree.map(lambda a, part=part: a[part.x], (x, y)) for part in splits]


def _check_pair(x, y, name: str, objective: Objective) -> None:
  """Checks `(x, y)` (each an array or a tuple of arrays) before anything is traced."""
  n = _num_examples(x)
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


def _check_model_outputs(out: jax.ShapeDtypeStruct, train, val, test,
                         objective) -> int | None:
  """Checks labels against the model's output `out` (its shape, for a sample batch);
  returns the number of classes (or None)."""
  if not objective.is_classification:
    return None
  if len(out.shape) < 2:
    raise ValueError(f"{objective.loss} needs model outputs [batch, classes] (or [batch, "
                     f"..., classes]); the model gives shape {out.shape}")
  num_classes = out.shape[-1]
  splits = [("val_data", val), ("test_data", test)]
  if isinstance(train, _TreeBatches):
    splits.insert(0, ("data", (train.inputs, train.targets)))
  elif isinstance(train, BatchIterator):
    splits.insert(0, ("data", train.arrays))
  for name, split in splits:
    if split is None:
      continue
    y = np.asarray(objective.labels(split[1]))
    if y.ndim == len(out.shape) and y.shape[-1] != num_classes:
      raise ValueError(f"{name}: one-hot labels have {y.shape[-1]} classes but the model "
                       f"outputs {num_classes}")
    if y.ndim == len(out.shape) - 1 and y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{name}: labels must be in [0, {num_classes}) for a model with "
                       f"{num_classes} outputs; got labels in [{y.min()}, {y.max()}]")
  return num_classes


def _write_text(path: Path, text: str) -> None:
  """Writes `path` whole or not at all (other processes may be reading it)."""
  partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  partial.write_text(text)
  os.replace(partial, path)


def _config_record(model: nn.Module, config: FitConfig, optimizer: OptimizerConfig) -> dict:
  """The run's configuration as JSON: the model's fields, the fit and optimizer configs."""
  model_fields = {field.name: getattr(model, field.name) for field in dataclasses.fields(model)
                  if field.name not in ("parent", "name")}
  record = {"model": {"class": type(model).__name__, **model_fields},
            "fit": dataclasses.asdict(config), "optimizer": dataclasses.asdict(optimizer)}
  return json.loads(json.dumps(record, default=repr))


def _check_saved_config(workdir: Path, model, config, optimizer, resume: bool,
                        checkpointer) -> None:
  """Refuses to overwrite a run, or to resume one under a different model or config."""
  path = workdir / "config.json"
  record = _config_record(model, config, optimizer)
  latest = checkpointer.latest_step()
  if latest is not None and not resume:
    raise ValueError(f"workdir {workdir} already holds a run (checkpoint at step {latest}); "
                     "pass resume=True (--resume) to continue it, or choose another workdir")
  if resume and latest is not None and path.exists():
    saved = json.loads(path.read_text())
    differ = [f"{group}.{key}: saved {saved[group].get(key)!r}, now {value!r}"
              for group in ("model", "fit", "optimizer") for key, value in record[group].items()
              if key not in _RESUME_MAY_DIFFER and saved.get(group, {}).get(key) != value]
    if differ:
      raise ValueError("cannot resume a run under a different config (the result would differ "
                       "from the run's): " + "; ".join(differ))
  if jax.process_index() == 0:
    _write_text(path, json.dumps(record, indent=2) + "\n")


def _write_final(workdir: Path, run: _Run, test_metrics, step: int) -> None:
  final = {"step": step, "epochs_run": len(run.history),
           "best_epoch": run.early.best_epoch if run.early.best is not None else None,
           "last_epoch": run.history[-1] if run.history else None,
           "test": test_metrics}
  (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
