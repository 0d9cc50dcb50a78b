"""Losses: mean squared error, cross-entropy, distillation, L1/L2 penalties.

Every loss is a pure, jit-compatible function of arrays that returns a float32
scalar: the per-example loss (a ``per_example_*`` building block, shape
``[batch]``) averaged over examples, optionally weighted. ``weights`` is a
``[batch]`` array, either a 0/1 mask that drops padded examples or real
weights; the result is ``sum(w * loss) / max(sum(w), tiny)``, so an all-zero
mask gives 0 rather than NaN. Arithmetic happens in float32 whatever the input
dtype. Shapes, dtypes and static options are checked before tracing, and a bad
one raises a ``ValueError`` naming the argument.

Example:

  >>> import jax.numpy as jnp
  >>> from dlopt import losses
  >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  >>> labels = jnp.array([0, 1])
  >>> loss = losses.cross_entropy(logits, labels, label_smoothing=0.1)
  >>> mask = jnp.array([1.0, 0.0])  # the second example is padding
  >>> float(losses.cross_entropy(logits, labels, weights=mask)) < float(loss)
  True
  >>> float(losses.mse(jnp.array([[1.0], [2.0]]), jnp.array([1.0, 4.0])))
  2.0
  >>> params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([3.0])}
  >>> float(losses.l2_penalty(params, mask={"w": True, "b": False}))
  2.5
"""

from __future__ import annotations

from collections.abc import Callable
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlopt._checks import label_kind

__all__ = [
    "cross_entropy",
    "distillation_loss",
    "distillation_objective_loss",
    "l1_penalty",
    "l2_penalty",
    "mse",
    "per_example_cross_entropy",
    "per_example_distillation_loss",
    "per_example_mse",
    "weighted_mean",
]

_TINY = float(np.finfo(np.float32).tiny)

PyTree = Any
Mask = PyTree | Callable[[PyTree], PyTree]


def weighted_mean(
    values: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
  """Averages per-example values, optionally weighted.

  Args:
    values: per-example values, any shape (usually ``[batch]``).
    weights: optional array of the same shape as ``values``: a 0/1 mask or
      non-negative weights.

  Returns:
    A float32 scalar: ``mean(values)`` without weights, otherwise
    ``sum(weights * values) / max(sum(weights), tiny)`` (0 when every weight
    is 0).

  Raises:
    ValueError: if ``weights`` does not have the shape of ``values``.
  """
  values = jnp.asarray(values, jnp.float32)
  if weights is None:
    return jnp.mean(values)
  weights = jnp.asarray(weights)
  if weights.shape != values.shape:
    raise ValueError(
        f"weights must have shape {values.shape} (one per example), got "
        f"weights.shape={weights.shape}."
    )
  weights = weights.astype(jnp.float32)
  return jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), _TINY)


def _check_floating(name: str, x: jax.Array) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"{name} must have a floating dtype, got {name}.dtype={x.dtype}."
    )


def per_example_mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Squared error averaged over all the elements of each example.

  Args:
    predictions: ``[batch, ...]`` float array.
    targets: float array of the shape of ``predictions``. A ``[batch]`` target
      against ``[batch, 1]`` predictions (or any two shapes with the same
      leading batch dimension and the same size) is reshaped to the shape of
      ``predictions``.

  Returns:
    float32 ``[batch]``: ``mean((predictions - targets) ** 2)`` over all axes
    but the first.

  Raises:
    ValueError: if the shapes cannot be matched as described above.
  """
  predictions = jnp.asarray(predictions)
  targets = jnp.asarray(targets)
  if predictions.ndim == 0:
    raise ValueError(
        "predictions must have a leading batch dimension, got "
        f"predictions.shape={predictions.shape}."
    )
  if targets.shape != predictions.shape:
    if (
        targets.ndim == 0
        or targets.shape[0] != predictions.shape[0]
        or targets.size != predictions.size
    ):
      raise ValueError(
          f"targets.shape={targets.shape} must equal "
          f"predictions.shape={predictions.shape} (or have the same batch "
          "dimension and size, e.g. [batch] against [batch, 1])."
      )
    targets = targets.reshape(predictions.shape)
  error = optax.squared_error(
      predictions.astype(jnp.float32), targets.astype(jnp.float32)
  )
  return jnp.mean(error.reshape(error.shape[0], -1), axis=1)


def mse(
    predictions: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Mean squared error.

  Args:
    predictions: ``[batch, ...]`` float array.
    targets: float array of the shape of ``predictions`` (``[batch]`` against
      ``[batch, 1]`` is accepted, see `per_example_mse`).
    weights: optional ``[batch]`` 0/1 mask or per-example weights.

  Returns:
    A float32 scalar: the per-example mean squared error (`per_example_mse`)
    averaged over examples with `weighted_mean`.

  Raises:
    ValueError: if the shapes of ``predictions``, ``targets`` or ``weights``
      do not agree.
  """
  return weighted_mean(per_example_mse(predictions, targets), weights)


def _check_label_smoothing(label_smoothing: float) -> float:
  try:
    value = float(label_smoothing)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise ValueError(
        "label_smoothing must be a static Python float in [0, 1), got "
        f"label_smoothing={label_smoothing!r}."
    ) from e
  if not 0.0 <= value < 1.0:
    raise ValueError(
        f"label_smoothing must be in [0, 1), got label_smoothing={value}."
    )
  return value


def per_example_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
) -> jax.Array:
  """Softmax cross-entropy of each example, computed in float32.

  Whether ``labels`` are class ids or distributions is decided from their rank:
  one dimension fewer than ``logits`` means integer class ids, the same rank
  means one-hot vectors or probabilities.

  Args:
    logits: ``[batch, classes]`` float array (any float dtype; bfloat16 is
      upcast to float32). More leading dimensions, e.g.
      ``[batch, time, classes]``, are allowed.
    labels: integer ``[batch]`` class ids in ``[0, classes)``, or
      ``[batch, classes]`` one-hot vectors or probabilities.
    label_smoothing: static float in ``[0, 1)``; the targets become
      ``(1 - label_smoothing) * one_hot + label_smoothing / classes``
      (`optax.smooth_labels`).

  Returns:
    float32 array of shape ``logits.shape[:-1]`` (``[batch]``).

  Raises:
    ValueError: if the shapes disagree, integer labels do not have an integer
      dtype, or ``label_smoothing`` is outside ``[0, 1)``.
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  label_smoothing = _check_label_smoothing(label_smoothing)
  kind = label_kind(logits, labels)
  _check_floating("logits", logits)
  logits = logits.astype(jnp.float32)
  if kind == "ids":
    if label_smoothing == 0.0:
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  else:
    targets = labels.astype(jnp.float32)
  if label_smoothing > 0.0:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Softmax cross-entropy averaged over examples, computed in float32.

  Args:
    logits: ``[batch, classes]`` float array (bfloat16 is upcast to float32).
    labels: integer ``[batch]`` class ids, or ``[batch, classes]`` one-hot
      vectors or probabilities.
    label_smoothing: static float in ``[0, 1)``, applied to either kind of
      label with `optax.smooth_labels`.
    weights: optional ``[batch]`` 0/1 mask or per-example weights.

  Returns:
    A float32 scalar, `per_example_cross_entropy` averaged with
    `weighted_mean`.

  Raises:
    ValueError: on disagreeing shapes, non-integer class ids, or
      ``label_smoothing`` outside ``[0, 1)``.
  """
  per_example = per_example_cross_entropy(
      logits, labels, label_smoothing=label_smoothing
  )
  return weighted_mean(per_example, weights)


def _check_temperature(temperature: float) -> float:
  try:
    value = float(temperature)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise ValueError(
        "temperature must be a static positive Python float, got "
        f"temperature={temperature!r}."
    ) from e
  if not value > 0.0:
    raise ValueError(f"temperature must be > 0, got temperature={value}.")
  return value


def per_example_distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
) -> jax.Array:
  """Knowledge-distillation loss of each example, computed in float32.

  ``temperature ** 2 * KL(softmax(teacher / T) || softmax(student / T))``;
  the ``T ** 2`` factor keeps gradient magnitudes comparable across
  temperatures (Hinton et al., 2015, "Distilling the Knowledge in a Neural
  Network", section 2).

  Args:
    student_logits: ``[batch, classes]`` float array.
    teacher_logits: float array of the same shape (typically wrapped in
      `jax.lax.stop_gradient` by the caller).
    temperature: static float > 0.

  Returns:
    float32 array of shape ``student_logits.shape[:-1]`` (``[batch]``).

  Raises:
    ValueError: if the shapes differ, either input is not floating, or
      ``temperature`` is not a positive static float.
  """
  student_logits = jnp.asarray(student_logits)
  teacher_logits = jnp.asarray(teacher_logits)
  temperature = _check_temperature(temperature)
  if student_logits.ndim < 2 or teacher_logits.shape != student_logits.shape:
    raise ValueError(
        "student_logits and teacher_logits must both have shape "
        f"[batch, classes], got student_logits.shape={student_logits.shape} "
        f"and teacher_logits.shape={teacher_logits.shape}."
    )
  _check_floating("student_logits", student_logits)
  _check_floating("teacher_logits", teacher_logits)
  log_student = jax.nn.log_softmax(
      student_logits.astype(jnp.float32) / temperature
  )
  log_teacher = jax.nn.log_softmax(
      teacher_logits.astype(jnp.float32) / temperature
  )
  kl = optax.losses.kl_divergence_with_log_targets(log_student, log_teacher)
  return temperature**2 * kl


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Knowledge-distillation loss averaged over examples.

  Args:
    student_logits: ``[batch, classes]`` float array.
    teacher_logits: float array of the same shape.
    temperature: static float > 0, see `per_example_distillation_loss`.
    weights: optional ``[batch]`` 0/1 mask or per-example weights.

  Returns:
    A float32 scalar, `per_example_distillation_loss` averaged with
    `weighted_mean`.

  Raises:
    ValueError: see `per_example_distillation_loss` and `weighted_mean`.
  """
  per_example = per_example_distillation_loss(
      student_logits, teacher_logits, temperature=temperature
  )
  return weighted_mean(per_example, weights)


def _check_alpha(alpha: float) -> float:
  if (not isinstance(alpha, numbers.Real) or isinstance(alpha, bool)
      or not 0.0 <= float(alpha) <= 1.0):
    raise ValueError(f"alpha must be a Python float in [0, 1], got alpha={alpha!r}.")
  return float(alpha)


def distillation_objective_loss(
    student_logits: jax.Array,
    labels: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float,
    alpha: float,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Soft-target distillation loss mixed with the hard-label cross-entropy.

  Per example, ``alpha * T**2 * KL(softmax(teacher / T) || softmax(student /
  T)) + (1 - alpha) * CE(student, labels)``, averaged over examples (optionally
  weighted). The first term is `dlopt.per_example_distillation_loss`,
  the second `per_example_cross_entropy`; no gradient flows into
  ``teacher_logits`` (`jax.lax.stop_gradient`). Equal to the data loss of
  ``dlopt.train.Objective(loss="distillation", temperature=T, alpha=alpha)``.

  Args:
    student_logits: float ``[batch, classes]``.
    labels: integer ``[batch]`` class ids, or ``[batch, classes]`` one-hot
      vectors or probabilities.
    teacher_logits: float ``[batch, classes]``, e.g. from `dlopt.compress.teacher_logits`.
    temperature: static float T > 0 softening both distributions.
    alpha: static float in ``[0, 1]``, the weight of the distillation term (the
      cross-entropy gets ``1 - alpha``).
    weights: optional ``[batch]`` 0/1 mask or per-example weights.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the shapes disagree, ``temperature`` is not > 0 or
      ``alpha`` is not in ``[0, 1]``.
  """
  alpha = _check_alpha(alpha)
  soft = per_example_distillation_loss(
      student_logits, jax.lax.stop_gradient(jnp.asarray(teacher_logits)),
      temperature=temperature)  # [batch]
  hard = per_example_cross_entropy(student_logits, labels)  # [batch]
  return weighted_mean(alpha * soft + (1.0 - alpha) * hard, weights)


def _masked(params: PyTree, mask: Mask | None) -> PyTree:
  """Keeps the leaves of ``params`` whose mask is True (float32)."""
  params = optax.tree.cast(params, jnp.float32)
  if mask is None:
    return params
  if callable(mask):
    mask = mask(params)

  def keep(m, subtree):
    if isinstance(m, (bool, np.bool_)):
      return subtree if m else None
    return jax.tree.map(lambda x: jnp.where(m, x, 0.0), subtree)

  return jax.tree.map(keep, mask, params)


def l1_penalty(params: PyTree, mask: Mask | None = None) -> jax.Array:
  """Sum of absolute values over the leaves of a pytree.

  Args:
    params: pytree of arrays (any float dtype).
    mask: optional pytree of bools with the structure of ``params`` (or a
      prefix of it), or a function ``params -> mask`` as in `optax.masked`;
      leaves under False are skipped.

  Returns:
    A float32 scalar, ``sum(|w|)`` over the kept leaves (0 if none).
  """
  return jnp.asarray(optax.tree.norm(_masked(params, mask), ord=1), jnp.float32)


def l2_penalty(params: PyTree, mask: Mask | None = None) -> jax.Array:
  """Half the sum of squares over the leaves of a pytree.

  The factor 0.5 makes the gradient ``w`` itself, so adding
  ``coeff * l2_penalty(params)`` to a loss matches
  `optax.add_decayed_weights` with ``weight_decay=coeff`` under plain SGD.

  Args:
    params: pytree of arrays (any float dtype).
    mask: optional pytree of bools with the structure of ``params`` (or a
      prefix of it), or a function ``params -> mask``; leaves under False are
      skipped.

  Returns:
    A float32 scalar, ``0.5 * sum(w ** 2)`` over the kept leaves (0 if none).
  """
  sq = optax.tree.norm(_masked(params, mask), squared=True)
  return 0.5 * jnp.asarray(sq, jnp.float32)
