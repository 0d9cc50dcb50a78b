"""A model's layers in one table: path, type, output shape, parameters and FLOPs.

>>> import jax.numpy as jnp
>>> from dlopt import models
>>> model = models.MLP(widths=(32,), num_outputs=10)
>>> print(models.summary(model, jnp.ones((1, 8, 8))))
MLP on float32[1,8,8] (train=False)
path       module   output         params   FLOPs
---------  -------  -------------  ------  ------
(model)    MLP      float32[1,10]       0  4.81 K
Dense_0    Dense    float32[1,32]   2,080  4.13 K
Dropout_0  Dropout  float32[1,32]       0       0
Dense_1    Dense    float32[1,10]     330     650
total: 2,410 params (9.64 KB); 4.81 K FLOPs per call (XLA, compiled)

The rows are Flax's own (the table behind `nn.tabulate`: one row per module call, FLOPs
from `jax.jit(...).lower(...).cost_analysis()` of that call), printed one line each; the
total FLOPs come from XLA's cost analysis of the whole compiled forward pass. XLA counts a
multiply-add as two FLOPs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from flax.linen import summary as flax_summary

__all__ = ["summary"]


def summary(model: nn.Module, *sample_inputs, depth: int | None = None,
            rngs: jax.Array | dict[str, jax.Array] | None = None, **kwargs: Any) -> str:
  """The layers of `model` called on `sample_inputs`, as a plain-text table.

  Nothing is computed: the model is initialized and lowered on shapes only
  (`jax.eval_shape`, `jit(...).lower`), then compiled once for the total FLOPs.

  Args:
    model: a Flax Linen module called as `model(*sample_inputs, train=..., ...)`.
    *sample_inputs: the positional inputs of one call, arrays with their batch axis (e.g.
      `x[:1]`, or `(x[:1], lengths[:1])` for a model taking `(x, lengths)`); FLOPs are for
      this batch.
    depth: rows down to this many levels of submodules, deeper ones counted in their
      parent's row (None: every module).
    rngs: the init RNGs (default `{"params": key(0), "dropout": key(1)}`).
    **kwargs: keyword arguments of the call; `train` defaults to False.

  Returns:
    A title line, one row per module (path, type, output shape and dtype, the count of each
    variable collection, FLOPs of its call), and a total line: parameter count and bytes,
    other collections, and XLA's FLOPs of the whole compiled call.

  Raises:
    ValueError: no sample input.
  """
  if not sample_inputs:
    raise ValueError(f"summary({type(model).__name__}) needs at least one sample input, "
                     "e.g. summary(model, x[:1])")
  if rngs is None:
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  elif not isinstance(rngs, dict):
    rngs = {"params": rngs}
  kwargs.setdefault("train", False)
  # Flax's table behind nn.tabulate: rows of (path, module, outputs, variables, flops).
  table = flax_summary._get_module_table(model, depth, False, True, False)(
      rngs, *sample_inputs, **kwargs)
  collections = ["params", *[c for c in table.collections if c != "params"]]
  header = ["path", "module", "output", *collections, "FLOPs"]
  lines, totals = [], dict.fromkeys(collections, (0, 0))
  for row in table:
    sizes = row.size_and_bytes(collections)
    totals = {c: (totals[c][0] + sizes[c][0], totals[c][1] + sizes[c][1]) for c in collections}
    lines.append(["/".join(row.path) or "(model)", type(row.module_copy).__name__,
                  _shapes(row.outputs), *[f"{sizes[c][0]:,}" for c in collections],
                  _si(row.flops)])
  widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
  numeric = range(3, len(header))  # counts and FLOPs right-aligned

  def render(cells):
    return "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                     for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

  call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  flops = total_flops(model, *sample_inputs, rngs=rngs, **kwargs)
  others = "".join(f" + {totals[c][0]:,} {c}" for c in collections[1:])
  return "\n".join([
      f"{type(model).__name__} on {', '.join(_shapes(x) for x in sample_inputs)} ({call})",
      render(header), render(["-" * w for w in widths]), *map(render, lines),
      f"total: {totals['params'][0]:,} params ({_bytes(totals['params'][1])}){others}; "
      f"{'n/a ' if flops is None else _si(flops) + ' '}FLOPs per call (XLA, compiled)"])


def total_flops(model: nn.Module, *sample_inputs, rngs: dict[str, jax.Array],
                **kwargs: Any) -> int | None:
  """XLA's FLOPs of `model.apply` on `sample_inputs`, compiled; None where XLA says none."""
  variables = jax.eval_shape(lambda: model.init(rngs, *sample_inputs, **kwargs))
  apply_rngs = {name: key for name, key in rngs.items() if name != "params"}
  compiled = jax.jit(lambda v, *x: model.apply(v, *x, rngs=apply_rngs, mutable=True,
                                               **kwargs)).lower(variables,
                                                                *sample_inputs).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  return int(cost["flops"]) if cost and "flops" in cost else None


def _shapes(tree) -> str:
  """`float32[2,10]` per array leaf of `tree`, comma-separated."""
  # Flax's table holds arrays as (shape, dtype) and anything else as `.obj` (e.g. None).
  leaves = jax.tree.leaves(tree, is_leaf=lambda leaf: leaf is None)
  return ", ".join(f"{leaf.dtype}[{','.join(map(str, leaf.shape))}]" if hasattr(leaf, "shape")
                   else repr(getattr(leaf, "obj", leaf)) for leaf in leaves) or "-"


def _si(value: int | float) -> str:
  """`value` with a K/M/G/T/P suffix, three significant digits at most."""
  if value < 0:
    return "-"
  for prefix in ("", "K", "M", "G", "T", "P"):
    if abs(value) < 1000 or prefix == "P":
      return f"{value:.3g}" + (f" {prefix}" if prefix else "")
    value /= 1000
  raise AssertionError("unreachable")


def _bytes(count: int) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if count < 1000 or unit == "GB":
      return f"{count:.3g} {unit}" if unit != "B" else f"{count} B"
    count /= 1000
  raise AssertionError("unreachable")
