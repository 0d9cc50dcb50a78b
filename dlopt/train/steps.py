"""Pure train and eval steps: `(state, batch) -> (state, metrics)` and `(state, batch) -> sums`.

>>> train_step = make_train_step(Objective("cross_entropy"), ema_decay=None)  # doctest: +SKIP
>>> state, m = train_step(state, (x, y))                                      # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from dlopt import metrics
from dlopt.optim import ema_decay_at, ema_update
from dlopt.train.objective import Objective
from dlopt.train.state import TrainState

__all__ = ["train_step", "eval_step", "make_train_step", "make_eval_step", "model_args"]


def model_args(x) -> tuple:
  """The model's positional inputs: a tuple `x` (e.g. `(features, lengths)`) is unpacked."""
  return x if isinstance(x, tuple) else (x,)


def _apply(state: TrainState, params, x, *, train: bool, rng=None):
  """Runs the model; returns (outputs, new model state)."""
  variables = {"params": params, **state.model_state}
  if train and state.model_state:
    return state.apply_fn(variables, *model_args(x), train=True, rngs={"dropout": rng},
                          mutable=list(state.model_state))
  rngs = {"dropout": rng} if train else None
  return state.apply_fn(variables, *model_args(x), train=train, rngs=rngs), state.model_state


def train_step(state: TrainState, batch: tuple[Any, Any], *,
               objective: Objective, ema_decay: float | None = None,
               augment=None, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on one batch.

  Under `jax.jit` with a batch sharded over a device mesh this is already the data-parallel
  step: the loss is the mean over the global batch, so XLA inserts the gradient all-reduce.
  Inside per-device code (`jax.pmap`, `jax.shard_map`) pass the mapped `axis_name`: the batch
  is then the device's share, gradients and metrics are averaged over the axis with
  `lax.pmean`, and each device folds its `lax.axis_index` into its dropout and augment keys.

  Args:
    state: the current `TrainState`.
    batch: `(x, y)`: inputs [B, ...] (or a tuple of them, the model's positional
      arguments) and labels [B] (int) / [B, C] (one-hot) or targets (or the pair a
      distillation objective takes).
    objective: the loss and penalties.
    ema_decay: decay of the parameter EMA, when `state.ema_params` is kept.
    augment: None, or a jittable `(key, x) -> x` applied to the inputs on the device
      (e.g. `dlopt.data.augment` with a config); its key derives from the state's.
    axis_name: the mapped device axis when run per device (`jax.pmap` / `jax.shard_map`),
      else None. Every device's share of the batch must be the same size.

  Returns:
    The new state and float32 scalar metrics: `loss` (data loss), `accuracy` for
    classification, `grad_norm` (of the averaged gradients).
  """
  x, y = batch
  rng = state.rng
  if axis_name is not None:  # one dropout / augment stream per device
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  dropout_rng = jax.random.fold_in(rng, state.step)
  if augment is not None:
    # A stream apart from dropout's: fold the step into a key split off the run key.
    x = augment(jax.random.fold_in(jax.random.split(rng)[1], state.step), x)

  def loss_fn(params):
    outputs, model_state = _apply(state, params, x, train=True, rng=dropout_rng)
    data_loss = objective.data_loss(outputs, y)
    return data_loss + objective.penalty(params), (outputs, model_state)

  grads, (outputs, model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = lax.pmean(grads, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_params is not None:
    accumulating = isinstance(opt_state, optax.MultiStepsState)
    # Updates applied before this one (with accumulation, gradient_step has just counted it).
    done = opt_state.gradient_step - 1 if accumulating else state.step
    ema_params = ema_update(ema_params, params, ema_decay_at(ema_decay, done))
    if accumulating:  # move only when the params moved
      ema_params = jax.tree.map(lambda new, old: jnp.where(opt_state.mini_step == 0, new, old),
                                ema_params, state.ema_params)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=model_state, ema_params=ema_params)
  batch_metrics = objective.batch_metrics(outputs, y)
  if axis_name is not None:
    batch_metrics = lax.pmean(batch_metrics, axis_name)
  batch_metrics["grad_norm"] = optax.tree.norm(grads)
  return new_state, batch_metrics


def eval_step(state: TrainState, batch: tuple[jax.Array, jax.Array], weights: jax.Array, *,
              objective: Objective, num_classes: int | None = None) -> dict[str, jax.Array]:
  """Evaluates one (possibly padded) batch; returns sums to be added over batches.

  Args:
    state: the `TrainState`; evaluates `state.eval_params` in inference mode.
    batch: `(x, y)` as in `train_step`.
    weights: float32 [B], 1 for real examples and 0 for padding.
    objective: the loss.
    num_classes: the number of classes, for the confusion matrix (classification only).

  Returns:
    `loss_sum` and `count` (float32 scalars) and, for classification, `confusion`
    (int32 [C, C], rows true labels).
  """
  x, y = batch
  outputs, _ = _apply(state, state.eval_params, x, train=False)
  count = jnp.sum(weights)
  sums = {"loss_sum": objective.data_loss(outputs, y, weights) * count, "count": count}
  if objective.is_classification:
    labels = objective.labels(y)
    if labels.ndim == outputs.ndim:  # one-hot
      labels = jnp.argmax(labels, axis=-1)
    # Sequence outputs [B, T, C] count every position: flatten, weights per position.
    predictions = jnp.argmax(outputs, axis=-1)
    position_weights = jnp.broadcast_to(
        weights.reshape(weights.shape + (1,) * (labels.ndim - 1)), labels.shape)
    sums["confusion"] = metrics.confusion_matrix(predictions.reshape(-1), labels.reshape(-1),
                                                 num_classes, position_weights.reshape(-1))
  return sums


def make_train_step(objective: Objective, ema_decay: float | None = None, augment=None,
                    compiler_options: dict | None = None):
  """`train_step` bound to an objective (and augmentation), jitted with the state donated.

  `compiler_options` go to `jax.jit` (`dlopt.train.step_compiler_options` picks them).
  """
  return jax.jit(functools.partial(train_step, objective=objective, ema_decay=ema_decay,
                                   augment=augment), donate_argnums=0,
                 compiler_options=compiler_options)


def make_eval_step(objective: Objective, num_classes: int | None = None,
                   compiler_options: dict | None = None):
  """`eval_step` bound to an objective, jitted (with `compiler_options`, as above)."""
  return jax.jit(functools.partial(eval_step, objective=objective, num_classes=num_classes),
                 compiler_options=compiler_options)
