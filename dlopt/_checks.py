"""Argument checks shared by losses and metrics (static: shapes and dtypes only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["label_kind"]


def label_kind(logits: jax.Array, labels: jax.Array) -> str:
  """Says whether `labels` are class ids or one-hot rows for `logits`, or raises.

  Args:
    logits: `[*batch, classes]` array.
    labels: integer class ids `[*batch]`, or one-hot / probabilities `[*batch, classes]`.

  Returns:
    "ids" or "one_hot".

  Raises:
    ValueError: naming the shapes (or dtype) that disagree.
  """
  if logits.ndim < 2:
    raise ValueError(f"logits must have shape [batch, classes], got logits.shape={logits.shape}.")
  if labels.ndim == logits.ndim:
    if labels.shape != logits.shape:
      raise ValueError(f"one-hot labels must have shape {logits.shape} to match "
                       f"logits.shape={logits.shape}, got labels.shape={labels.shape}.")
    return "one_hot"
  if labels.ndim == logits.ndim - 1:
    if labels.shape != logits.shape[:-1]:
      raise ValueError(f"integer labels must have shape {logits.shape[:-1]} to match "
                       f"logits.shape={logits.shape}, got labels.shape={labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels of shape {labels.shape} are class ids and must have an "
                       f"integer dtype, got labels.dtype={labels.dtype}.")
    return "ids"
  raise ValueError(f"labels must have shape {logits.shape[:-1]} (class ids) or {logits.shape} "
                   f"(one-hot) to match logits.shape={logits.shape}, got "
                   f"labels.shape={labels.shape}.")
