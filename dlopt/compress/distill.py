"""Knowledge distillation with precomputed soft targets.

The teacher runs once, in eval mode, over the training inputs (`teacher_logits`);
the student then trains on ``(labels, teacher_logits)`` pairs with
`distillation_objective_loss` (Hinton et al., 2015, "Distilling the Knowledge in
a Neural Network")::

  alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))
      + (1 - alpha) * cross_entropy(student, labels)

The KL term is `dlopt.losses.per_example_distillation_loss` and the hard term
`dlopt.losses.per_example_cross_entropy`; this is the loss that
``dlopt.train.Objective("distillation", temperature=T, alpha=alpha)`` minimizes
(the function lives in `dlopt.losses`; it is re-exported here).

Example:

  >>> import jax, jax.numpy as jnp
  >>> from dlopt import compress
  >>> from dlopt.models import MLP
  >>> teacher = MLP(widths=(16,), num_outputs=3)
  >>> x = jax.random.normal(jax.random.key(0), (10, 4))
  >>> variables = teacher.init(jax.random.key(1), x)
  >>> soft = compress.teacher_logits(teacher.apply, variables, x, batch_size=4)
  >>> soft.shape, soft.dtype
  ((10, 3), dtype('float32'))
  >>> labels = jnp.zeros(10, jnp.int32)
  >>> student_logits = jnp.zeros((10, 3))
  >>> loss = compress.distillation_objective_loss(
  ...     student_logits, labels, soft, temperature=2.0, alpha=0.5)
  >>> loss.shape, loss.dtype
  ((), dtype('float32'))
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlopt import losses
from dlopt.losses import distillation_objective_loss  # re-exported: it lives in losses

__all__ = ["distillation_objective_loss", "teacher_logits"]

PyTree = Any


@functools.partial(jax.jit, static_argnums=0)
def _eval_logits(apply_fn, variables, x):
  return jnp.asarray(apply_fn(variables, x, train=False), jnp.float32)


def teacher_logits(apply_fn: Callable[..., jax.Array], variables: PyTree,
                   x: np.ndarray | jax.Array, *, batch_size: int = 512) -> np.ndarray:
  """The teacher's logits for every input, computed in jitted batches in eval mode.

  Calls ``apply_fn(variables, batch, train=False)`` (dropout off, batch norm on
  its running statistics) on consecutive batches of ``batch_size`` inputs. The
  last batch is padded to ``batch_size`` (and the padding dropped), so the
  model compiles once for any ``N``.

  Args:
    apply_fn: the teacher's apply function, e.g. ``model.apply``; it must take
      the keyword ``train`` (every `dlopt.models` model does) and return logits
      ``[batch, classes]``. Must be hashable; pass the same object to reuse the
      compiled function.
    variables: the teacher's Flax variables (``params``, and ``batch_stats``
      where it has batch norm).
    x: the inputs ``[N, ...]``, a NumPy or JAX array, N >= 1.
    batch_size: static int >= 1, inputs per jitted call.

  Returns:
    float32 NumPy array ``[N, classes]``.

  Raises:
    ValueError: if ``batch_size`` is not a positive int, ``x`` is empty or has
      no batch axis, or the model does not return ``[batch, classes]``.
  """
  if (not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool)
      or batch_size < 1):
    raise ValueError(
        f"batch_size must be an integer >= 1, got batch_size={batch_size!r}.")
  if np.ndim(x) < 1 or len(x) == 0:
    raise ValueError(
        f"x must be inputs [N, ...] with N >= 1, got x.shape={np.shape(x)}.")
  n = len(x)
  size = min(batch_size, n)
  outputs = []
  for start in range(0, n, size):
    batch = x[start:start + size]
    count = len(batch)
    if count < size:  # pad with copies of the last input: one shape, one compile
      pad = np.repeat(np.asarray(batch[-1:]), size - count, axis=0)
      batch = np.concatenate([np.asarray(batch), pad])
    logits = _eval_logits(apply_fn, variables, batch)  # [size, classes]
    if logits.ndim != 2 or logits.shape[0] != size:
      raise ValueError(
          "apply_fn must return logits [batch, classes], got shape "
          f"{logits.shape} for a batch of {size}.")
    outputs.append(np.asarray(logits[:count]))
  return np.concatenate(outputs)
