"""Symmetric per-channel int8 post-training quantization of weights.

Each kernel ``w`` (see `dlopt.compress.prunable`: dense and conv kernels,
embeddings) becomes a `QuantizedArray`: int8 ``values`` of the kernel's shape and
one float32 ``scale`` per output channel (the last axis by default, which is the
output axis of Flax ``Dense`` ``[in, out]`` and ``Conv`` ``[h, w, in, out]``
kernels)::

  scale[c] = max |w[..., c]| / 127                      # 0 for an all-zero channel
  values   = clip(round(w / scale), -127, 127)          # int8, symmetric: no zero point
  w_hat    = values * scale                             # |w_hat - w| <= scale / 2

Biases and norm parameters stay float. A float32 kernel of ``n`` entries and
``c`` output channels then takes ``n + 4 c`` bytes instead of ``4 n``: about 4x
smaller. Quantization is weight-only: `quantized_apply` keeps the int8 values
as the model's stored weights and dequantizes them inside the jitted
computation, which then runs in float32 (Jacob et al., 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
section 2, for the scheme; here with per-channel scales and no integer matmul).

Example:

  >>> import jax, jax.numpy as jnp
  >>> from dlopt import compress
  >>> from dlopt.models import CNN
  >>> model = CNN(num_classes=10, features=(8,), dense_width=16)
  >>> x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  >>> variables = model.init(jax.random.key(1), x)
  >>> qparams = compress.quantize_params(variables["params"])
  >>> type(qparams["Dense_0"]["kernel"]).__name__, qparams["Dense_0"]["bias"].dtype
  ('QuantizedArray', dtype('float32'))
  >>> compress.param_bytes(variables["params"]), compress.param_bytes(qparams)
  (9256, 2552)
  >>> logits = compress.quantized_apply(model.apply, {"params": qparams}, x, train=False)
  >>> bool(jnp.allclose(logits, model.apply(variables, x), atol=0.05))
  True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.compress.pruning import PrunableSpec, _resolve_prunable

__all__ = [
    "QMAX",
    "QuantizedArray",
    "dequantize_params",
    "param_bytes",
    "quantize_array",
    "quantize_params",
    "quantized_apply",
]

QMAX = 127  # symmetric int8: values in [-127, 127], -128 unused

PyTree = Any


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["values", "scale"], meta_fields=["channel_axis"])
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """An int8 array with one float32 scale per channel; a pytree of two leaves.

  The array it stands for is ``values * scale`` with ``scale`` broadcast along
  ``channel_axis`` (see `dequantize`). Being a registered pytree, it passes
  through `jax.jit`, `jax.tree.map` and checkpointing like any other node; its
  leaves are ``values`` and ``scale``.

  Attributes:
    values: int8 array, the shape of the original array.
    scale: float32 ``[values.shape[channel_axis]]``, ``max |w| / 127`` per
      channel (0 for an all-zero channel).
    channel_axis: static non-negative int, the axis that ``scale`` runs along.
  """

  values: jax.Array
  scale: jax.Array
  channel_axis: int

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape of the array it stands for (that of ``values``)."""
    return tuple(self.values.shape)

  @property
  def nbytes(self) -> int:
    """Bytes as stored: int8 values plus float32 scales."""
    return param_bytes(self)

  def dequantize(self) -> jax.Array:
    """Returns ``values * scale`` as float32, of shape ``self.shape``."""
    shape = [1] * len(self.shape)
    shape[self.channel_axis] = -1
    scale = jnp.reshape(self.scale, shape)  # broadcasts along channel_axis
    return jnp.asarray(self.values).astype(jnp.float32) * scale


def _is_quantized(x: Any) -> bool:
  return isinstance(x, QuantizedArray)


def _check_channel_axis(channel_axis: int, ndim: int, shape) -> int:
  if not isinstance(channel_axis, numbers.Integral) or isinstance(channel_axis, bool):
    raise ValueError(
        f"channel_axis must be an int, got channel_axis={channel_axis!r}.")
  if not -ndim <= channel_axis < ndim:
    raise ValueError(
        f"channel_axis must be in [-{ndim}, {ndim}) for an array of shape "
        f"{tuple(shape)}, got channel_axis={channel_axis}.")
  return int(channel_axis) % ndim


def quantize_array(w: jax.Array, *, channel_axis: int = -1) -> QuantizedArray:
  """Quantizes one float array to symmetric per-channel int8.

  Args:
    w: float array, ``ndim >= 1``, finite.
    channel_axis: static int, the axis that gets its own scales (the output
      channels: -1 for Flax Dense and Conv kernels).

  Returns:
    A `QuantizedArray` with int8 ``values`` of ``w.shape`` and float32
    ``scale`` of shape ``[w.shape[channel_axis]]``. Each entry of
    ``values * scale`` is within ``scale / 2`` of ``w``.

  Raises:
    ValueError: if ``w`` is not floating or ``channel_axis`` is out of range.
  """
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"w must have a floating dtype, got w.dtype={w.dtype}.")
  if w.ndim == 0:
    raise ValueError(f"w must have ndim >= 1 to have channels, got w.shape={w.shape}.")
  axis = _check_channel_axis(channel_axis, w.ndim, w.shape)
  w = w.astype(jnp.float32)
  others = tuple(i for i in range(w.ndim) if i != axis)
  amax = jnp.max(jnp.abs(w), axis=others, keepdims=True)  # [1, ..., C, ..., 1]
  scale = amax / QMAX
  safe = jnp.where(scale > 0, scale, 1.0)  # an all-zero channel quantizes to 0
  values = jnp.clip(jnp.round(w / safe), -QMAX, QMAX).astype(jnp.int8)
  return QuantizedArray(values, scale.reshape(-1), axis)


def quantize_params(params: PyTree, *, channel_axis: int = -1,
                    prunable: PrunableSpec = None) -> PyTree:
  """Quantizes the kernels of a parameter pytree to per-channel int8.

  Args:
    params: a pytree of float arrays, e.g. Flax ``variables["params"]`` (or the
      whole ``variables``: only the leaves chosen by ``prunable`` change).
    channel_axis: static int, the axis of each kernel that gets its own scales;
      -1 (the default) is the output axis of Flax Dense and Conv kernels.
    prunable: which leaves to quantize: None (`dlopt.compress.prunable`: leaves
      with ``ndim >= 2`` not named "bias" or "scale"), a pytree of Python bools
      with the structure of ``params``, or a function ``params -> such a
      pytree``.

  Returns:
    A pytree like ``params`` in which each chosen leaf is a `QuantizedArray`
    (int8 values, float32 scales) and every other leaf is unchanged.

  Raises:
    ValueError: if ``prunable`` does not match ``params``, a chosen leaf is not
      floating, or ``channel_axis`` is out of range for a chosen leaf.
  """
  flags = _resolve_prunable(params, prunable)
  leaves, treedef = jax.tree.flatten(params)
  out = [quantize_array(leaf, channel_axis=channel_axis) if flag else leaf
         for leaf, flag in zip(leaves, flags)]
  return jax.tree.unflatten(treedef, out)


def dequantize_params(qparams: PyTree) -> PyTree:
  """Replaces every `QuantizedArray` in a pytree by its float32 array.

  Works on concrete values and inside `jax.jit` alike.

  Args:
    qparams: a pytree that may hold `QuantizedArray` nodes, e.g. from
      `quantize_params`.

  Returns:
    A pytree like ``qparams`` with each `QuantizedArray` replaced by float32
    ``values * scale`` of its shape; other leaves are unchanged.
  """
  return jax.tree.map(lambda x: x.dequantize() if _is_quantized(x) else x,
                      qparams, is_leaf=_is_quantized)


def param_bytes(tree: PyTree) -> int:
  """Bytes of a pytree's leaves as stored: ``size * itemsize`` summed.

  A `QuantizedArray` counts as its int8 values (1 byte each) plus its float32
  scales (4 bytes each); float leaves at their own dtype. Tree structure and
  shapes are metadata and not counted.

  Args:
    tree: a pytree of arrays (or `jax.ShapeDtypeStruct`s), possibly holding
      `QuantizedArray` nodes.

  Returns:
    The number of bytes, a Python int.
  """
  total = 0
  for leaf in jax.tree.leaves(tree):
    dtype = getattr(leaf, "dtype", None) or np.asarray(leaf).dtype
    total += math.prod(np.shape(leaf)) * np.dtype(dtype).itemsize
  return total


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _apply_dequantized(apply_fn, kwargs_def, static_leaves, is_array, qvariables,
                       x, array_leaves):
  arrays = iter(array_leaves)
  leaves = [next(arrays) if dynamic else leaf
            for leaf, dynamic in zip(static_leaves, is_array)]
  kwargs = jax.tree.unflatten(kwargs_def, leaves)
  return apply_fn(dequantize_params(qvariables), x, **kwargs)


def quantized_apply(apply_fn: Callable[..., Any], qvariables: PyTree,
                    x: jax.Array, **kwargs) -> Any:
  """Runs a model on int8 weights, dequantized inside one jitted computation.

  Weight-only quantization: the int8 values and float32 scales of
  ``qvariables`` are the jitted function's inputs, and ``values * scale`` is
  computed in the compiled graph just before the float32 model runs; no float32
  copy of the weights is kept outside it. The compiled function is cached per
  ``apply_fn``, shapes and static keyword values, so calling it batch after
  batch compiles once.

  Args:
    apply_fn: the model's apply function, ``apply_fn(variables, x, **kwargs)``,
      e.g. ``model.apply``. Must be hashable; pass the same object each call to
      reuse the compiled function.
    qvariables: Flax variables whose params hold `QuantizedArray` nodes, e.g.
      ``{**variables, "params": quantize_params(variables["params"])}``.
    x: the model's input, e.g. float32 images ``[batch, height, width,
      channels]``.
    **kwargs: passed to ``apply_fn`` (e.g. ``train=False``); array values (such
      as RNG keys in ``rngs``) are traced, everything else is static and must
      be hashable.

  Returns:
    Whatever ``apply_fn`` returns, e.g. float32 logits ``[batch, classes]``.

  Raises:
    ValueError: if ``qvariables`` holds no `QuantizedArray`.
  """
  if not any(_is_quantized(leaf)
             for leaf in jax.tree.leaves(qvariables, is_leaf=_is_quantized)):
    raise ValueError(
        "qvariables must hold QuantizedArray weights (quantize them with "
        "dlopt.compress.quantize_params), got a pytree without any.")
  leaves, kwargs_def = jax.tree.flatten(kwargs)
  is_array = tuple(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)
  static_leaves = tuple(None if dynamic else leaf
                        for leaf, dynamic in zip(leaves, is_array))
  array_leaves = [leaf for leaf, dynamic in zip(leaves, is_array) if dynamic]
  return _apply_dequantized(apply_fn, kwargs_def, static_leaves, is_array,
                            qvariables, x, array_leaves)
