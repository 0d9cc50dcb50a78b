"""The `fit` loop: split, shuffle, train, validate, stop early, checkpoint, resume, log, plot.

`fit` converts its inputs once (`dlopt.train.inputs`), asks a placement strategy
(`dlopt.train.parallel`) for the state's layout and the steps, and runs the flat step loop
(`dlopt.train.loop`) with its callbacks (`dlopt.train.callbacks`).

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

import functools
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import optax
from flax import nnx
from optax import tree_utils as otu

from dlopt.optim import OptimizerConfig, make_optimizer, make_schedule, num_updates
from dlopt.train.callbacks import (Callback, Checkpoint, EarlyStop, MetricLog, PlotCurves,
                                   ProgressBar, StopOnSignal, Validation, best_tree)
from dlopt.train.config import FitConfig
from dlopt.train.distributed import initialize as initialize_distributed
from dlopt.train.evaluate import evaluate
from dlopt.train.inputs import check_labels, resolve_inputs
from dlopt.train.interrupt import stop_on_signals
from dlopt.train.loop import Loop, LoopState, NonFiniteLossError, save_checkpoint
from dlopt.train.objective import Objective
from dlopt.train.parallel import placement
from dlopt.train.state import TrainState, create_train_state, with_variables
from dlopt.train.steps import model_args
from dlopt.train.workdir import RunDirectory, config_record
from dlopt.train.writers import JsonlWriter, TensorBoardWriter, WriteMetrics
from dlopt.train.xla_options import compiler_options_for

__all__ = ["fit", "FitResult", "NonFiniteLossError"]


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


def fit(model: nn.Module, data: Any, *,
        optimizer: OptimizerConfig | optax.GradientTransformation = OptimizerConfig(),
        objective: Objective = Objective(), config: FitConfig = FitConfig(),
        val_data: tuple | None = None, test_data: tuple | None = None,
        workdir: str | Path | None = None, resume: bool = False, augment=None,
        init_variables: dict | None = None, callbacks: Sequence[Callback] = ()) -> FitResult:
  """Trains `model` on `data`.

  Args:
    model: a Flax Linen module taking `(x, *, train)` (an NNX module through
      `flax.nnx.bridge.to_linen`), returning logits [B, C] (cross-entropy) or predictions.
    data: `(x, y)` numpy arrays (split into train/val/test by `config`'s fractions and
      seed, stratified for classification); a `dlopt.data.Splits`; or the training batches
      alone as a `dlopt.data.BatchIterator`, a `ProcessLocal`, or any re-iterable with
      `len()` yielding `(x, y)` batches, with `val_data` / `test_data` given apart. `x` may
      be a tuple of arrays, the model's positional inputs (e.g. `(features, lengths)`); `y`
      may be a tuple too (`(labels, teacher_logits)` for a distillation objective).
    optimizer: an `OptimizerConfig` (optimizer, schedule, weight decay, clipping,
      accumulation, EMA; its schedule spans the run), or any optax transformation, used as
      it is (its schedule is then yours; the logged learning rate is read from its state
      where `optax.inject_hyperparams` keeps one).
    objective: what is minimized: the loss, label smoothing, L1/L2 penalties.
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
    callbacks: `dlopt.train.Callback`s, called after the built-in evaluation and early
      stopping and before logging and saving (see `dlopt.train.callbacks`).

  Several devices and processes (`config.parallel`): every process calls `fit` with the
  same arguments (`dlopt.train.initialize_distributed` joins them first, from the
  environment); each reads only its own rows of each global batch, all save and restore
  checkpoints together (a run may resume on another number of devices or processes), and
  only process 0 writes logs, plots and the progress bar.

  SIGINT (Ctrl-C) and SIGTERM (preemption) save at the next step and raise
  `dlopt.train.Interrupted`, a `KeyboardInterrupt`; `resume=True` continues from there.

  Returns:
    A `FitResult`.

  Raises:
    ValueError: on bad data shapes, labels, configs, a `batch_size` that does not divide
      over the devices, or a workdir/resume conflict.
    NonFiniteLossError: when the loss becomes NaN or infinite; the error names the step,
      and checkpoints saved before it are kept.
  """
  _check_arguments(model, optimizer, objective, config, callbacks)
  initialize_distributed()  # joins the other processes when the environment names them
  strategy = placement(config.parallel)
  inputs = resolve_inputs(data, val_data, test_data, batch_size=config.batch_size,
                          seed=config.seed, fractions=(config.val_fraction,
                                                       config.test_fraction),
                          objective=objective)
  rows = strategy.local_rows(inputs.train.batch_size)  # checks that it divides
  tx, learning_rate, ema_decay = _optimizer(optimizer, config.epochs * len(inputs.train))
  state = _initial_state(strategy.prepare_model(model), tx, inputs.train.sample()[0],
                         config.seed, ema_decay, init_variables)
  # One trace of the forward pass gives the output's shape and what it computes (convolves?).
  forward, out = jax.make_jaxpr(
      lambda v, x: state.apply_fn(v, *model_args(x), train=False), return_shape=True)(
          {"params": state.params, **state.model_state}, inputs.train.sample()[0])
  num_classes = check_labels(inputs, out, objective)
  options = compiler_options_for(forward)
  state = strategy.place_state(state)
  train_step = strategy.train_step(state, objective, ema_decay=ema_decay, augment=augment,
                                   compiler_options=options)
  evaluate_split = functools.partial(
      _evaluate, strategy.eval_step(state, objective, num_classes=num_classes,
                                    compiler_options=options),
      batch_size=config.eval_batch_size, is_classification=objective.is_classification,
      multiple_of=strategy.num_devices)
  keeps_best = config.patience is not None and config.restore_best and inputs.val is not None

  if config.tensorboard and workdir is None:
    raise ValueError("FitConfig.tensorboard=True writes into the run directory; pass "
                     "workdir=")
  record = config_record(model=model, objective=objective, fit=config, optimizer=optimizer)
  run_dir = None if workdir is None else RunDirectory(workdir, config.keep_last_n)
  try:
    position = LoopState()
    if run_dir is not None:
      run_dir.check_config(record, resume)
      if resume:
        state, position = run_dir.restore(
            state, strategy.copy(best_tree(state)) if keeps_best else None)
    with stop_on_signals() as stop:
      loop = Loop(config=config, source=inputs.train, rows=rows, train_step=train_step,
                  checkpointer=None if run_dir is None else run_dir.checkpointer,
                  workdir=run_dir and run_dir.path, learning_rate=learning_rate,
                  position=position)
      loop.callbacks = _callbacks(loop, inputs.val, evaluate_split, strategy.copy,
                                  keeps_best=keeps_best, stop=stop, user=callbacks,
                                  hparams=record)
      state = loop.run(state)
    if keeps_best and position.best is not None:
      state = state.replace(**position.best)
    test_metrics = evaluate_split(state, inputs.test) if inputs.test is not None else None
    if run_dir is not None:
      if run_dir.checkpointer.latest_step() != int(state.step):
        position.epoch, position.step_in_epoch = config.epochs, 0  # done: nothing to resume
        save_checkpoint(run_dir.checkpointer, state, position)
      run_dir.write_final(position, test_metrics, int(state.step))
  finally:
    if run_dir is not None:
      run_dir.close()
  return FitResult(state, position.history, test_metrics, run_dir and run_dir.path)


def _callbacks(loop: Loop, val: tuple | None, evaluate_split: Callable, copy: Callable, *,
               keeps_best: bool, stop, user: Sequence[Callback],
               hparams: dict) -> list[Callback]:
  """The built-in callbacks around the user's, in the order the module docstring of
  `dlopt.train.callbacks` gives."""
  first: list[Callback] = []
  if val is not None:
    first.append(Validation(val, evaluate_split))
  first += [EarlyStop(keeps_best, copy), ProgressBar()]
  last: list[Callback] = []
  if loop.workdir is not None:
    last.append(MetricLog(loop.workdir / "metrics.jsonl"))
    last.append(WriteMetrics(functools.partial(_writers, loop.workdir, loop.config.tensorboard),
                             hparams=hparams))
    if loop.config.plot:
      last.append(PlotCurves(loop.workdir / "curves.png"))
    last.append(Checkpoint(loop.config.checkpoint_every))
  last.append(StopOnSignal(stop))
  return first + list(user) + last


def _writers(workdir: Path, tensorboard: bool, start_step: int) -> list:
  """The run directory's metric writers: `steps.jsonl`, and TensorBoard when asked."""
  writers = [JsonlWriter(workdir / "steps.jsonl", start_step)]
  if tensorboard:
    writers.append(TensorBoardWriter(workdir / "tensorboard", start_step))
  return writers


def _evaluate(eval_step: Callable, state: TrainState, split: tuple, **options) -> dict:
  """`evaluate` of one `(x, y)` split through `eval_step`."""
  return evaluate(state, *split, eval_step=eval_step, **options)


def _optimizer(optimizer, total_steps: int) -> tuple[optax.GradientTransformation, Callable,
                                                     float | None]:
  """`(tx, learning_rate(state), ema_decay)` for an `OptimizerConfig` or an optax
  transformation."""
  if not isinstance(optimizer, OptimizerConfig):
    return optimizer, _injected_learning_rate, None
  schedule = make_schedule(optimizer, num_updates(optimizer, total_steps))

  def learning_rate(state):  # of the last update
    return float(schedule(max(num_updates(optimizer, int(state.step)) - 1, 0)))
  tx = make_optimizer(optimizer, total_steps=total_steps)
  return tx, learning_rate, optimizer.ema_decay


def _injected_learning_rate(state: TrainState) -> float | None:
  """The learning rate of the last update, where the optimizer state keeps one (e.g.
  `optax.inject_hyperparams`), else None."""
  for _, value in otu.tree_get_all_with_path(state.opt_state, "learning_rate"):
    if hasattr(value, "shape") and value.shape == ():
      return float(value)
  return None


def _initial_state(model: nn.Module, tx, sample_x, seed: int, ema_decay: float | None,
                   init_variables: dict | None) -> TrainState:
  """The run's first state: the model initialized from `seed` (or from `init_variables`)."""
  try:
    state = create_train_state(model, tx, sample_x, seed=seed, ema=ema_decay is not None)
  except ValueError as error:
    shapes = jax.tree.map(lambda leaf: leaf.shape[1:], sample_x)
    raise ValueError(f"the model does not take the training inputs (one example of shape "
                     f"{shapes}): {error}") from error
  return state if init_variables is None else with_variables(state, init_variables)


def _check_arguments(model, optimizer, objective, config, callbacks) -> None:
  """Raises ValueError, naming the argument, for anything of the wrong kind."""
  if isinstance(model, nnx.Module):
    raise ValueError(f"model is a Flax NNX module ({type(model).__name__}); fit takes Linen "
                     "modules: wrap it with flax.nnx.bridge.to_linen(YourModule, *args), "
                     "whose __call__ must take (x, *, train)")
  if not isinstance(model, nn.Module):
    raise ValueError(f"model must be a flax.linen.Module; got {type(model).__name__}")
  if not isinstance(optimizer, (OptimizerConfig, optax.GradientTransformation)):
    raise ValueError("optimizer must be a dlopt.optim.OptimizerConfig or an optax "
                     f"GradientTransformation; got {type(optimizer).__name__}")
  if not isinstance(objective, Objective):
    raise ValueError(f"objective must be a dlopt.train.Objective; got "
                     f"{type(objective).__name__}")
  if not isinstance(config, FitConfig):
    raise ValueError(f"config must be a dlopt.train.FitConfig; got {type(config).__name__}")
  for callback in callbacks:
    if not isinstance(callback, Callback):
      raise ValueError("callbacks must be dlopt.train.Callback instances; got "
                       f"{type(callback).__name__}")
