"""Optimizers built from a config, as `optax` chains.

One factory, `make_optimizer`, turns an `OptimizerConfig` into an
`optax.GradientTransformation`::

  optax.chain(
      optax.clip_by_global_norm(clip_norm),          # if clip_norm
      <the optimizer's scaling>,                     # optax's own piece
      optax.add_decayed_weights(weight_decay, mask), # if weight_decay > 0
      optax.scale_by_learning_rate(schedule),
  )

wrapped in `optax.MultiSteps` when gradients are accumulated. This is how optax
builds its own aliases (`optax.adamw` is `scale_by_adam`, `add_decayed_weights`,
`scale_by_learning_rate`), so with equal hyperparameters the result matches the
alias update for update. Nothing here re-implements what optax has.

Weight decay is always decoupled (AdamW-style, Loshchilov & Hutter, 2019): it is
added to the update after the optimizer's scaling and multiplied by the learning
rate, for every optimizer. Hence ``name="adam"`` with ``weight_decay > 0`` is
identical to ``name="adamw"``. For a coupled L2 penalty, add
`dlopt.losses.l2_penalty` to the loss instead.

Example::

  import jax
  import jax.numpy as jnp
  import optax
  from dlopt import optim

  config = optim.OptimizerConfig(
      name="adamw", learning_rate=3e-4, schedule="warmup_cosine",
      warmup_steps=10, weight_decay=0.05, clip_norm=1.0)
  tx = optim.make_optimizer(config, total_steps=100)
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros((2,))}
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  lr_at_50 = optim.make_schedule(config, total_steps=100)(50)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "DECAY_MASKS",
    "OptimizerConfig",
    "make_schedule",
    "make_optimizer",
    "default_decay_mask",
    "ema_decay_at",
    "ema_update",
    "num_updates",
]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
              "adamw")
SCHEDULES = ("constant", "warmup_cosine", "exponential", "step", "linear")
DECAY_MASKS = ("default", "all", "none")

_NO_DECAY_NAMES = frozenset({"bias", "scale"})


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Everything that defines an optimizer, as flat command-line-friendly fields.

  Steps in this config (``warmup_steps``, ``decay_steps``) count optimizer
  updates, which differ from train steps when ``accumulate_steps > 1``.

  Attributes:
    name: one of sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw.
    learning_rate: peak learning rate.
    schedule: one of constant, warmup_cosine, exponential, step, linear.
    warmup_steps: linear warmup from 0 to ``learning_rate`` over this many
      updates, prepended to any schedule.
    final_lr_fraction: end value of warmup_cosine and linear, as a fraction of
      ``learning_rate``.
    decay_rate: exponential: factor by which the learning rate is multiplied
      every ``decay_steps`` updates (smoothly, not in stairs).
    decay_steps: exponential: updates per ``decay_rate`` factor; None uses the
      length of the decay phase (total updates minus warmup).
    step_boundaries: step: fractions of the total updates, strictly increasing
      in (0, 1), at which the learning rate is multiplied by ``step_factor``.
    step_factor: step: the factor applied at each boundary.
    momentum: momentum of momentum and nesterov.
    b1: adam, adamw: decay of the first moment.
    b2: adam, adamw: decay of the second moment.
    eps: adam, adamw, rmsprop: added to the denominator. adagrad uses
      optax.adagrad's own defaults and ignores it.
    rmsprop_decay: rmsprop: decay of the squared-gradient average.
    weight_decay: decoupled weight decay, for any optimizer; 0 disables it.
    decay_mask: which parameters decay: "default" (all but those named
      "bias" or "scale", see `default_decay_mask`), "all", or "none".
    clip_norm: if set, gradients are clipped to this global norm.
    accumulate_steps: gradients of this many micro-batches are averaged into
      one update (`optax.MultiSteps`).
    ema_decay: if set, the decay of an exponential moving average of the
      parameters kept for evaluation; applied by the train step through
      `ema_update`, not by the optimizer, with the usual warmup
      (`ema_decay_at`: the decay grows to `ema_decay` over the first updates,
      so the average does not cling to the initial parameters).
  """

  name: str = "adam"
  learning_rate: float = 1e-3
  schedule: str = "constant"
  warmup_steps: int = 0
  final_lr_fraction: float = 0.0
  decay_rate: float = 0.1
  decay_steps: int | None = None
  step_boundaries: tuple[float, ...] = (0.5, 0.75)
  step_factor: float = 0.1
  momentum: float = 0.9
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  rmsprop_decay: float = 0.9
  weight_decay: float = 0.0
  decay_mask: str = "default"
  clip_norm: float | None = None
  accumulate_steps: int = 1
  ema_decay: float | None = None

  def __post_init__(self):
    if isinstance(self.step_boundaries, list):
      object.__setattr__(self, "step_boundaries", tuple(self.step_boundaries))

    def fail(field, allowed):
      raise ValueError(f"OptimizerConfig.{field} must be {allowed}; "
                       f"got {getattr(self, field)!r}")

    for field, choices in (("name", OPTIMIZERS), ("schedule", SCHEDULES),
                           ("decay_mask", DECAY_MASKS)):
      if getattr(self, field) not in choices:
        fail(field, f"one of {', '.join(choices)}")

    def number(field, low=None, high=None, low_open=False, high_open=False,
               optional=False):
      value = getattr(self, field)
      if optional and value is None:
        return
      in_range = _is_number(value) and math.isfinite(value)
      if in_range and low is not None:
        in_range = value > low if low_open else value >= low
      if in_range and high is not None:
        in_range = value < high if high_open else value <= high
      if not in_range:
        bounds = []
        if low is not None:
          bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
          bounds.append(f"{'<' if high_open else '<='} {high}")
        allowed = "a finite number" + (" " + " and ".join(bounds)
                                       if bounds else "")
        fail(field, allowed + (" or None" if optional else ""))

    def integer(field, low, optional=False):
      value = getattr(self, field)
      if optional and value is None:
        return
      if not (_is_int(value) and value >= low):
        fail(field, f"an integer >= {low}" + (" or None" if optional else ""))

    number("learning_rate", 0, low_open=True)
    integer("warmup_steps", 0)
    number("final_lr_fraction", 0, 1)
    number("decay_rate", 0, 1, low_open=True)
    integer("decay_steps", 1, optional=True)
    number("step_factor", 0, low_open=True)
    number("momentum", 0, 1, high_open=True)
    number("b1", 0, 1, high_open=True)
    number("b2", 0, 1, high_open=True)
    number("eps", 0, low_open=True)
    number("rmsprop_decay", 0, 1, high_open=True)
    number("weight_decay", 0)
    number("clip_norm", 0, low_open=True, optional=True)
    integer("accumulate_steps", 1)
    number("ema_decay", 0, 1, low_open=True, high_open=True, optional=True)

    bounds = self.step_boundaries
    if not (isinstance(bounds, tuple)
            and all(_is_number(b) and 0 < b < 1 for b in bounds)
            and all(a < b for a, b in zip(bounds, bounds[1:]))):
      fail("step_boundaries",
           "a tuple of numbers strictly increasing in (0, 1)")


def make_schedule(config: OptimizerConfig,
                  total_steps: int | None = None) -> optax.Schedule:
  """Builds the learning-rate schedule of ``config`` from optax schedules.

  The schedule maps an optimizer update count (0, 1, ...) to a learning rate.
  A linear warmup from 0 to ``config.learning_rate`` over
  ``config.warmup_steps`` updates is joined (`optax.join_schedules`) in front of
  the decay phase, which starts at ``learning_rate`` and lasts
  ``total_steps - warmup_steps`` updates:

  - constant: ``learning_rate`` (`optax.constant_schedule`).
  - warmup_cosine: cosine decay to ``learning_rate * final_lr_fraction``
    (`optax.cosine_decay_schedule`, the decay half of
    `optax.warmup_cosine_decay_schedule`).
  - exponential: ``learning_rate * decay_rate ** (t / decay_steps)``
    (`optax.exponential_decay`), ``t`` counted from the end of warmup.
  - step: ``learning_rate`` times ``step_factor`` once per boundary passed; a
    boundary ``f`` lies at update ``round(f * total_steps)``, counted from
    update 0 (`optax.piecewise_constant_schedule`).
  - linear: linear decay to ``learning_rate * final_lr_fraction``
    (`optax.linear_schedule`).

  Args:
    config: the optimizer config.
    total_steps: total number of OPTIMIZER UPDATES, i.e. train steps divided by
      ``config.accumulate_steps`` (rounded up). Required by every schedule but
      constant.

  Returns:
    An `optax.Schedule`, usable with traced step counts.

  Raises:
    ValueError: if ``total_steps`` is missing or invalid for the schedule.
  """
  lr = config.learning_rate
  if config.schedule == "constant":
    if total_steps is not None and not (_is_int(total_steps)
                                        and total_steps >= 1):
      raise ValueError(f"total_steps must be an integer >= 1 or None; "
                       f"got {total_steps!r}")
    decay = optax.constant_schedule(lr)
  else:
    if total_steps is None:
      raise ValueError(f"total_steps is required by schedule "
                       f"{config.schedule!r}; got None")
    if not (_is_int(total_steps) and total_steps > config.warmup_steps):
      raise ValueError(
          f"total_steps must be an integer > warmup_steps "
          f"({config.warmup_steps}) for schedule {config.schedule!r}; "
          f"got {total_steps!r}")
    decay_len = total_steps - config.warmup_steps
    end = lr * config.final_lr_fraction
    if config.schedule == "warmup_cosine":
      decay = optax.cosine_decay_schedule(lr, decay_len,
                                          alpha=config.final_lr_fraction)
    elif config.schedule == "exponential":
      decay = optax.exponential_decay(
          lr, transition_steps=config.decay_steps or decay_len,
          decay_rate=config.decay_rate)
    elif config.schedule == "step":
      scales: dict[int, float] = {}
      for fraction in config.step_boundaries:
        boundary = round(fraction * total_steps) - config.warmup_steps
        scales[boundary] = scales.get(boundary, 1.0) * config.step_factor
      decay = optax.piecewise_constant_schedule(lr, scales)
    else:
      decay = optax.linear_schedule(lr, end, decay_len)
  if config.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, lr, config.warmup_steps)
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def default_decay_mask(params: Any) -> Any:
  """Marks the parameters that weight decay applies to.

  The choice is by name only: a leaf whose last path key is ``"bias"`` or
  ``"scale"`` (how Flax names biases and the scales of LayerNorm, BatchNorm
  and friends) is not decayed; every other leaf is, 1-D or not.

  Args:
    params: a pytree of parameters, e.g. Flax ``variables["params"]``.

  Returns:
    A pytree of the structure of ``params`` with a bool per leaf, True where
    weight decay applies.
  """

  def decays(path, _):
    if not path:
      return True
    key = path[-1]
    name = getattr(key, "key", getattr(key, "name", None))
    return str(name) not in _NO_DECAY_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def _scale_by_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  name = config.name
  if name == "sgd":
    return optax.identity()
  if name == "momentum":
    return optax.trace(decay=config.momentum)
  if name == "nesterov":
    return optax.trace(decay=config.momentum, nesterov=True)
  if name == "adagrad":
    return optax.scale_by_rss()
  if name == "rmsprop":
    return optax.scale_by_rms(decay=config.rmsprop_decay, eps=config.eps)
  return optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)


def num_updates(config: OptimizerConfig, train_steps: int) -> int:
  """Optimizer updates made in ``train_steps`` train steps: ``ceil(train_steps / k)``
  with ``k = config.accumulate_steps`` (the last update may be partial)."""
  return -(-train_steps // config.accumulate_steps)


def make_optimizer(
    config: OptimizerConfig,
    total_steps: int | None = None,
    *,
    decay_mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
  """Builds the optax optimizer described by ``config``.

  The chain is, in order: ``optax.clip_by_global_norm`` (if ``clip_norm``), the
  optimizer's optax scaling (sgd: `optax.identity`; momentum, nesterov:
  `optax.trace`; adagrad: `optax.scale_by_rss` with optax.adagrad's defaults;
  rmsprop: `optax.scale_by_rms`; adam, adamw: `optax.scale_by_adam`),
  ``optax.add_decayed_weights`` (if ``weight_decay > 0`` and the mask is not
  "none") and ``optax.scale_by_learning_rate(make_schedule(...))``. With
  ``accumulate_steps = k > 1`` the chain is wrapped in
  ``optax.MultiSteps(every_k_schedule=k)``: the mean gradient of ``k``
  micro-batches makes one update, and the ``k - 1`` calls before it return zero
  updates.

  ``update`` needs ``params`` whenever weight decay is on.

  Args:
    config: the optimizer config.
    total_steps: total number of TRAIN STEPS (micro-batches). The schedule is
      built over ``ceil(total_steps / config.accumulate_steps)`` optimizer
      updates. Required by every schedule but constant.
    decay_mask: overrides ``config.decay_mask``: a pytree of bools matching
      the parameters, or a callable from parameters to one; True marks leaves
      to decay.

  Returns:
    An `optax.GradientTransformation`.

  Raises:
    ValueError: if ``total_steps`` is missing or invalid for the schedule.
  """
  if total_steps is not None:
    if not (_is_int(total_steps) and total_steps >= 1):
      raise ValueError(f"total_steps must be an integer >= 1 or None; "
                       f"got {total_steps!r}")
    total_steps = num_updates(config, total_steps)
  schedule = make_schedule(config, total_steps)

  parts = []
  if config.clip_norm is not None:
    parts.append(optax.clip_by_global_norm(config.clip_norm))
  parts.append(_scale_by_optimizer(config))
  if decay_mask is not None:
    mask, decay = decay_mask, True
  else:
    mask = default_decay_mask if config.decay_mask == "default" else None
    decay = config.decay_mask != "none"
  if config.weight_decay > 0 and decay:
    parts.append(optax.add_decayed_weights(config.weight_decay, mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*parts)

  if config.accumulate_steps > 1:
    tx = optax.MultiSteps(
        tx, every_k_schedule=config.accumulate_steps).gradient_transformation()
  return tx


def ema_decay_at(decay: float, num_updates) -> jax.Array:
  """The EMA decay after `num_updates` updates: `min(decay, (1 + n) / (10 + n))`.

  The warmup of TensorFlow's `ExponentialMovingAverage(num_updates=...)`: early on the
  average follows the parameters closely (0.1 at the first update, 0.5 at the 8th), and
  only later reaches `decay`; without it a decay of 0.999 would keep 37% of the
  initial parameters after 1,000 updates.

  Args:
    decay: the target decay in [0, 1].
    num_updates: updates applied before this one, an int scalar (may be traced).

  Returns:
    A float32 scalar.
  """
  n = jnp.asarray(num_updates, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """One step of an exponential moving average of parameters.

  Computes ``decay * ema_params + (1 - decay) * params`` leaf by leaf with
  ``optax.incremental_update``.

  Args:
    ema_params: the running average, a pytree like ``params``.
    params: the current parameters.
    decay: weight of the old average, in [0, 1] (e.g. ``config.ema_decay``).

  Returns:
    The new average, a pytree like ``params``.
  """
  if _is_number(decay) and not 0 <= decay <= 1:
    raise ValueError(f"decay must be in [0, 1]; got {decay!r}")
  return optax.incremental_update(params, ema_params, step_size=1 - decay)
