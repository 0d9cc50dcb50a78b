"""The training state: everything a run needs to continue, as one pytree.

>>> import jax.numpy as jnp, optax
>>> from dlopt.models import MLP
>>> from dlopt.train import create_train_state
>>> state = create_train_state(MLP(widths=(8,), num_outputs=3), optax.adam(1e-3),
...                            jnp.ones((2, 4)), seed=0)
>>> int(state.step)
0
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

__all__ = ["TrainState", "create_train_state", "with_variables"]


class TrainState(struct.PyTreeNode):
  """Parameters, optimizer state, step, RNG key and model state of one run.

  Attributes:
    step: int32 scalar, the number of train steps taken.
    params: the model's `params` collection.
    opt_state: the optax optimizer state.
    model_state: the model's other variable collections (e.g. `{"batch_stats": ...}`), `{}`
      for models without any.
    rng: uint32 [2] PRNG key; the dropout key of step `s` is `fold_in(rng, s)`, so the run
      is reproducible from the seed alone.
    ema_params: an exponential moving average of `params` used for evaluation, or None.
    apply_fn: the model's `apply` (static).
    tx: the optax transformation (static).
  """

  step: jax.Array
  params: Any
  opt_state: optax.OptState
  model_state: dict
  rng: jax.Array
  ema_params: Any
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @property
  def eval_params(self) -> Any:
    """The parameters to evaluate with: the EMA when it is kept, else `params`."""
    return self.params if self.ema_params is None else self.ema_params


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    sample_x: Any,
    *,
    seed: int = 0,
    ema: bool = False,
) -> TrainState:
  """Initializes a model and its optimizer from one seed.

  Args:
    model: a Flax Linen module whose `__call__` takes `(x, *, train)`.
    tx: the optax transformation (e.g. from `dlopt.optim.make_optimizer`).
    sample_x: an input batch (any batch size) with the shape and dtype of real inputs, or
      a tuple of them (the model's positional inputs, e.g. `(features, lengths)`).
    seed: the run's seed; parameter init and every later dropout key derive from it.
    ema: keep an exponential moving average of the parameters for evaluation.

  Returns:
    A `TrainState` at step 0.
  """
  init_key, dropout_key, run_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  init = jax.jit(functools.partial(model.init, train=False))  # one compile, not one per op
  first = jax.tree.map(lambda leaf: jnp.asarray(leaf[:1]), sample_x)
  inputs = first if isinstance(first, tuple) else (first,)  # a tuple: positional inputs
  variables = init({"params": init_key, "dropout": dropout_key}, *inputs)
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      model_state=variables,
      rng=run_key,
      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
      apply_fn=model.apply,
      tx=tx,
  )


def with_variables(state: TrainState, variables: dict) -> TrainState:
  """`state` started from `variables` (`{"params": ..., "batch_stats": ...}`, e.g. a trained
  model to fine-tune) instead of its own init; a fresh optimizer state and EMA.

  Raises:
    ValueError: unless `variables` has the model's variable structure and shapes.
  """
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
