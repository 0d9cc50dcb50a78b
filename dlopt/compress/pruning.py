"""Global magnitude pruning of Flax parameter pytrees, and fine-tuning that keeps it.

One threshold over all prunable weights at once (Han et al., 2015, "Learning both
Weights and Connections for Efficient Neural Networks"): the ``round(sparsity * n)``
entries of smallest magnitude among the ``n`` prunable entries get mask 0, whichever
layer they sit in. Prunable leaves are the kernels and embeddings (``ndim >= 2``, not
named "bias" or "scale", see `prunable`); biases and norm parameters keep mask 1.

Masks are float32 0/1 pytrees shaped like the parameters. `apply_masks` zeroes the
pruned weights; `keep_masked` is an optax transformation that, chained after any
optimizer, zeroes their updates so that fine-tuning keeps them exactly zero.

Example:

  >>> import jax.numpy as jnp
  >>> import optax
  >>> from dlopt import compress
  >>> params = {"Dense_0": {"kernel": jnp.array([[0.1, -2.0], [0.5, 3.0]]),
  ...                       "bias": jnp.array([0.01, 0.02])}}
  >>> masks = compress.magnitude_masks(params, 0.5)
  >>> masks["Dense_0"]["kernel"].tolist(), masks["Dense_0"]["bias"].tolist()
  ([[0.0, 1.0], [0.0, 1.0]], [1.0, 1.0])
  >>> pruned = compress.apply_masks(params, masks)
  >>> compress.sparsity_report(pruned, masks)["overall"]
  0.5
  >>> tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), compress.keep_masked(masks))
  >>> state = tx.init(pruned)
  >>> grads = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  >>> updates, state = tx.update(grads, state, pruned)
  >>> optax.apply_updates(pruned, updates)["Dense_0"]["kernel"][:, 0].tolist()
  [0.0, 0.0]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlopt.optim import default_decay_mask

__all__ = [
    "apply_masks",
    "keep_masked",
    "magnitude_masks",
    "prunable",
    "sparse_bytes",
    "sparsity_report",
]

PyTree = Any
PrunableSpec = PyTree | Callable[[PyTree], PyTree] | None


def prunable(params: PyTree) -> PyTree:
  """Marks the leaves that pruning (and int8 quantization) applies to.

  A leaf is prunable when it has ``ndim >= 2`` (a dense or conv kernel, an
  embedding table) and its name is not "bias" or "scale" (the rule of
  `dlopt.optim.default_decay_mask`, which keeps biases and the scales of
  LayerNorm, BatchNorm and GroupNorm out of weight decay).

  Args:
    params: a pytree of arrays, e.g. Flax ``variables["params"]``.

  Returns:
    A pytree of the structure of ``params`` with a Python bool per leaf.
  """
  named_ok = default_decay_mask(params)
  return jax.tree.map(lambda ok, leaf: bool(ok) and np.ndim(leaf) >= 2,
                      named_ok, params)


def _resolve_prunable(params: PyTree, spec: PrunableSpec) -> list[bool]:
  """The prunable flags of ``params``' leaves, in `jax.tree.leaves` order."""
  if spec is None:
    spec = prunable(params)
  elif callable(spec):
    spec = spec(params)
  structure = jax.tree.structure(params)
  if jax.tree.structure(spec) != structure:
    raise ValueError(
        "prunable must be a pytree of bools with the structure of params (or a "
        f"function returning one); expected {structure}, got "
        f"{jax.tree.structure(spec)}.")
  flags = jax.tree.leaves(spec)
  for flag in flags:
    if not isinstance(flag, (bool, np.bool_)):
      raise ValueError(
          "prunable must hold one Python bool per leaf of params, got a leaf "
          f"prunable={flag!r} of type {type(flag).__name__}.")
  return [bool(f) for f in flags]


def _check_sparsity(sparsity: float) -> float:
  if (not isinstance(sparsity, numbers.Real) or isinstance(sparsity, bool)
      or not 0.0 <= float(sparsity) <= 1.0):
    raise ValueError(
        f"sparsity must be a Python float in [0, 1], got sparsity={sparsity!r}.")
  return float(sparsity)


def _check_masks(params: PyTree, masks: PyTree) -> None:
  if jax.tree.structure(masks) != jax.tree.structure(params):
    raise ValueError(
        "masks must have the pytree structure of params; expected "
        f"{jax.tree.structure(params)}, got {jax.tree.structure(masks)}.")
  for path, leaf, mask in zip(
      (p for p, _ in jax.tree_util.tree_leaves_with_path(params)),
      jax.tree.leaves(params), jax.tree.leaves(masks)):
    if np.shape(mask) != np.shape(leaf):
      raise ValueError(
          f"masks{jax.tree_util.keystr(path)} must have the shape of the "
          f"parameter, {np.shape(leaf)}, got {np.shape(mask)}.")


def magnitude_masks(params: PyTree, sparsity: float, *,
                    prunable: PrunableSpec = None) -> PyTree:
  """0/1 masks that prune the smallest-magnitude weights under one global threshold.

  With ``n`` prunable entries in all, exactly ``k = round(sparsity * n)`` of them
  get mask 0: those of smallest ``|w|``, all leaves ranked together, so every kept
  prunable weight has ``|w| >=`` every pruned one. Ties are broken by position
  (a stable sort over the leaves in `jax.tree.leaves` order, each flattened in
  row-major order: the earlier entry is pruned first), so the result is
  deterministic. Non-prunable leaves get mask 1 everywhere.

  Args:
    params: a pytree of float arrays, e.g. Flax ``variables["params"]``.
    sparsity: static Python float in ``[0, 1]``: the share of prunable entries
      to prune.
    prunable: which leaves may be pruned: None (`prunable`, the kernels), a
      pytree of Python bools with the structure of ``params``, or a function
      ``params -> such a pytree``.

  Returns:
    A pytree of the structure of ``params``: per leaf a float32 array of the
    leaf's shape holding 0.0 (pruned) or 1.0 (kept).

  Raises:
    ValueError: if ``sparsity`` is not in ``[0, 1]``, ``prunable`` does not
      match ``params``, a prunable leaf is not floating, or no leaf is prunable.
  """
  sparsity = _check_sparsity(sparsity)
  flags = _resolve_prunable(params, prunable)
  leaves, treedef = jax.tree.flatten(params)
  chosen = [jnp.asarray(leaf) for leaf, f in zip(leaves, flags) if f]
  if not chosen:
    raise ValueError(
        "params must hold at least one prunable leaf (see dlopt.compress."
        f"prunable), got none among {len(leaves)} leaves.")
  for leaf in chosen:
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise ValueError(
          f"prunable leaves must be floating, got a leaf of dtype {leaf.dtype} "
          f"and shape {leaf.shape}.")
  sizes = [leaf.size for leaf in chosen]
  n = sum(sizes)
  k = round(sparsity * n)
  scores = jnp.concatenate(
      [jnp.abs(leaf.astype(jnp.float32)).ravel() for leaf in chosen])  # [n]
  order = jnp.argsort(scores, stable=True)  # [n], ties: earlier entry first
  keep = jnp.ones((n,), jnp.float32).at[order[:k]].set(0.0)  # [n]
  pieces = iter(jnp.split(keep, np.cumsum(sizes)[:-1]))
  masks = [next(pieces).reshape(jnp.shape(leaf)) if f
           else jnp.ones(jnp.shape(leaf), jnp.float32)
           for leaf, f in zip(leaves, flags)]
  return jax.tree.unflatten(treedef, masks)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """Zeroes the pruned weights: ``params * masks``, leaf by leaf.

  Args:
    params: a pytree of arrays.
    masks: 0/1 masks with the structure and shapes of ``params`` (e.g. from
      `magnitude_masks`).

  Returns:
    A pytree like ``params`` (same dtypes), 0 where the mask is 0.

  Raises:
    ValueError: if ``masks`` does not match ``params`` in structure or shapes.
  """
  _check_masks(params, masks)
  return jax.tree.map(
      lambda w, m: jnp.where(jnp.asarray(m) != 0, w, jnp.zeros_like(w)),
      params, masks)


def keep_masked(masks: PyTree) -> optax.GradientTransformation:
  """An optax transformation that zeroes updates where the mask is 0.

  Chain it LAST, after the optimizer and its weight decay and learning rate
  (``optax.chain(optax.adamw(...), keep_masked(masks))``): the final update of
  every pruned weight is then exactly 0, so weights that start at 0 (see
  `apply_masks`) stay exactly 0 under any optimizer. The optimizer's own state
  (e.g. Adam's moments) is left as it is; only the update is masked. Built on
  `optax.stateless`; it keeps no state.

  Args:
    masks: 0/1 masks with the structure and shapes of the parameters (e.g. from
      `magnitude_masks`).

  Returns:
    An `optax.GradientTransformation` whose ``update(updates, state, params)``
    returns ``where(masks != 0, updates, 0)``; ``params`` is not needed.

  Raises:
    ValueError: at ``update``, if ``updates`` does not match ``masks``.
  """

  def mask_updates(updates, params):
    del params
    _check_masks(updates, masks)
    return jax.tree.map(
        lambda u, m: jnp.where(jnp.asarray(m) != 0, u, jnp.zeros_like(u)),
        updates, masks)

  return optax.stateless(mask_updates)


def _name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def sparsity_report(params: PyTree, masks: PyTree, *,
                    prunable: PrunableSpec = None) -> dict[str, Any]:
  """Counts the zeros of ``params``, overall and layer by layer.

  Zeros are counted in ``params`` as they are (not in ``masks``), so the report
  also shows whether pruned weights really are zero, e.g. after fine-tuning.

  Args:
    params: a pytree of arrays.
    masks: 0/1 masks with the structure and shapes of ``params``.
    prunable: which leaves count as prunable for ``"overall"``: as in
      `magnitude_masks` (None: `prunable`).

  Returns:
    A dict of Python numbers:

    - ``"overall"``: float, the share of zeros among the prunable entries
      (what ``sparsity`` in `magnitude_masks` targets).
    - ``"overall_all"``: float, the share of zeros among all entries.
    - ``"size"`` / ``"nonzero"`` / ``"pruned"``: ints over all leaves: the
      entries, the nonzero entries, the entries with mask 0.
    - ``"unmasked_nonzero"``: int, entries with mask 0 that are not zero in
      ``params`` (0 when the masks hold).
    - ``"layers"``: for each leaf, by its path (``"Conv_0/kernel"``), a dict
      with ``"size"``, ``"nonzero"``, ``"pruned"``, ``"unmasked_nonzero"``
      (ints), ``"sparsity"`` (float, the share of zeros) and ``"prunable"``
      (bool).

  Raises:
    ValueError: if ``masks`` or ``prunable`` does not match ``params``.
  """
  _check_masks(params, masks)
  flags = _resolve_prunable(params, prunable)
  layers = {}
  for (path, leaf), mask, flag in zip(jax.tree_util.tree_leaves_with_path(params),
                                      jax.tree.leaves(masks), flags):
    leaf, mask = np.asarray(leaf), np.asarray(mask)
    size = int(leaf.size)
    nonzero = int(np.count_nonzero(leaf))
    layers[_name(path)] = {
        "size": size,
        "nonzero": nonzero,
        "pruned": int(np.count_nonzero(mask == 0)),
        "unmasked_nonzero": int(np.count_nonzero((mask == 0) & (leaf != 0))),
        "sparsity": 1.0 - nonzero / size if size else 0.0,
        "prunable": flag,
    }
  total = lambda key, rows: sum(row[key] for row in rows)
  rows = list(layers.values())
  prunable_rows = [row for row in rows if row["prunable"]]
  size, size_p = total("size", rows), total("size", prunable_rows)
  nonzero, nonzero_p = total("nonzero", rows), total("nonzero", prunable_rows)
  return {
      "overall": 1.0 - nonzero_p / size_p if size_p else 0.0,
      "overall_all": 1.0 - nonzero / size if size else 0.0,
      "size": size,
      "nonzero": nonzero,
      "pruned": total("pruned", rows),
      "unmasked_nonzero": total("unmasked_nonzero", rows),
      "layers": layers,
  }


def _index_bytes(size: int) -> int:
  """Bytes of the smallest unsigned integer that can hold a flat index < size."""
  for nbytes in (1, 2, 4):
    if size <= 2 ** (8 * nbytes):
      return nbytes
  return 8


def sparse_bytes(params: PyTree, masks: PyTree) -> int:
  """Estimated bytes to store the masked parameters in a simple sparse format.

  Each leaf is stored either dense (``size * itemsize``) or, if smaller, in
  coordinate (COO) form: its nonzero values in the leaf's dtype plus one flat
  (row-major) index per nonzero, as the smallest unsigned integer that can
  address the leaf (uint8 up to 256 entries, uint16 up to 65,536, uint32 up to
  2**32, else uint64). Nonzeros are counted in ``apply_masks(params, masks)``.
  Shapes, dtypes and tree structure are metadata and not counted.

  Args:
    params: a pytree of arrays.
    masks: 0/1 masks with the structure and shapes of ``params``.

  Returns:
    The estimate in bytes, a Python int. With no zeros it equals the dense
    size, ``param_bytes(params)``.

  Raises:
    ValueError: if ``masks`` does not match ``params``.
  """
  _check_masks(params, masks)
  total = 0
  for leaf, mask in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
    leaf, mask = np.asarray(leaf), np.asarray(mask)
    itemsize = leaf.dtype.itemsize
    nonzero = int(np.count_nonzero((mask != 0) & (leaf != 0)))
    dense = math.prod(leaf.shape) * itemsize
    coo = nonzero * (itemsize + _index_bytes(leaf.size))
    total += min(dense, coo)
  return total
