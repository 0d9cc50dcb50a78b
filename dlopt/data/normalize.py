"""Feature standardization: fit mean and std on the host, apply anywhere.

`fit_normalization` computes float32 statistics with numpy (fit them on the
training split only); `normalize` and `denormalize` use plain operators, so they
work on numpy arrays and on `jax.Array`s, inside `jax.jit` too (a
`Normalization` is a NamedTuple, hence a pytree).

Example:

  >>> import numpy as np
  >>> from dlopt.data import denormalize, fit_normalization, normalize
  >>> x = np.random.default_rng(0).uniform(size=(64, 8, 8, 3))
  >>> stats = fit_normalization(x)
  >>> stats.mean.shape, stats.std.dtype
  ((3,), dtype('float32'))
  >>> z = normalize(x, stats)
  >>> bool(np.allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-5))
  True
  >>> bool(np.allclose(denormalize(z, stats), x, atol=1e-6))
  True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Normalization", "denormalize", "fit_normalization", "normalize"]


class Normalization(NamedTuple):
  """Per-feature statistics, right-aligned to broadcast against the data.

  Attributes:
    mean: float32 array, e.g. `[C]` for per-channel statistics of
      `[N, H, W, C]` data.
    std: float32 array of the same shape as `mean`, every entry >= `eps`.
  """

  mean: np.ndarray
  std: np.ndarray


def fit_normalization(
    x: Any, axis: int | Sequence[int] | None = None, *, eps: float = 1e-6
) -> Normalization:
  """Computes the mean and standard deviation of `x` over `axis`.

  Args:
    x: data `[N, ..., C]`, numpy or jax, any real dtype.
    axis: axes to reduce. `None` reduces every axis but the last (per-channel
      or per-feature statistics); for 1-D `x` (e.g. regression targets `[N]`)
      it reduces axis 0 to scalar statistics.
    eps: floor of the standard deviation, so constant features map to 0
      instead of dividing by zero.

  Returns:
    `Normalization(mean, std)`, float32, keeping the non-reduced axes that
    follow the leading reduced ones (e.g. `[C]` by default, `[H, W, C]` for
    `axis=0`), so that they broadcast against `x`.
  """
  x = np.asarray(x)
  if axis is None:
    axis = tuple(range(x.ndim - 1)) if x.ndim > 1 else (0,)
  axes = tuple(sorted(a % x.ndim for a in np.atleast_1d(axis).tolist()))
  mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)
  std = np.maximum(x.std(axis=axes, dtype=np.float64, keepdims=True), eps)
  leading = 0
  while leading < x.ndim and leading in axes:
    leading += 1
  shape = mean.shape[leading:]
  return Normalization(
      mean=mean.reshape(shape).astype(np.float32),
      std=std.reshape(shape).astype(np.float32),
  )


def normalize(x: Any, stats: Normalization) -> Any:
  """Returns `(x - stats.mean) / stats.std`.

  Args:
    x: data whose trailing axes broadcast against `stats`; numpy or jax.
    stats: from `fit_normalization`.

  Returns:
    An array of the shape of `x` and of the same kind (numpy in, numpy out; jax
    in, jax out); float32 for float32 and uint8 input.
  """
  return (x - stats.mean) / stats.std


def denormalize(x: Any, stats: Normalization) -> Any:
  """Inverts `normalize`: returns `x * stats.std + stats.mean`.

  Args:
    x: normalized data whose trailing axes broadcast against `stats`; numpy or
      jax.
    stats: the statistics `x` was normalized with.

  Returns:
    An array of the shape of `x` and of the same kind, in the original units.
  """
  return x * stats.std + stats.mean
