"""XLA compiler options for the jitted train and eval steps, chosen per backend and model.

On the CPU, jaxlib 0.10 hands convolutions to YNNPACK fusions by default. On the MNIST CNN
(batch 128, 2 cores) those made the whole train step 2.9x slower than XLA's own
convolutions (`bench/results/cpu_speed.json`: "dlopt" against "dlopt-no_options"), and
ResidualCNN's 1.2x slower; an MLP (5.2 against 6.2 ms a step) and a small DecoderLM (167
against 171 ms) train a little faster with them. So a model that convolves compiles its
steps with YNNPACK kept to matrix products, and every other model with XLA's defaults.

>>> import jax.numpy as jnp
>>> from jax import lax
>>> conv = lambda x, w: lax.conv(x, w, (1, 1), "SAME")
>>> options = step_compiler_options(conv, jnp.ones((1, 1, 8, 8)), jnp.ones((4, 1, 3, 3)))
>>> options is None or "xla_cpu_experimental_ynn_fusion_type" in options
True
"""

from __future__ import annotations

import functools

import jax

__all__ = ["CPU_CONV_OPTIONS", "CPU_REMAT_OPTIONS", "compiler_options_for",
           "step_compiler_options", "uses_primitive"]

CPU_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
# On the CPU, XLA expands the optimization barriers that `jax.checkpoint` puts around a
# rematerialized block and then runs CSE again, which merges the recomputation back into
# the forward pass: remat then saves nothing and costs time. Keeping the barriers makes it
# work (`python -m bench remat`: DecoderLM 274 -> 94 MiB, ResidualCNN 72 -> 36 MiB).
CPU_REMAT_OPTIONS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def uses_primitive(jaxpr, name: str) -> bool:
  """Whether `jaxpr` (a `Jaxpr` or `ClosedJaxpr`) or any jaxpr nested in it calls `name`."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == name:
      return True
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(getattr(sub, "jaxpr", sub), "eqns") and uses_primitive(sub, name):
          return True
  return False


@functools.cache
def _cpu_options_supported() -> bool:
  """Whether this jaxlib's CPU compiler knows `CPU_CONV_OPTIONS` (older ones reject them)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_CONV_OPTIONS).lower(1.0).compile()
  except Exception:  # noqa: BLE001 - any refusal means: compile with the defaults
    return False
  return True


def compiler_options_for(jaxpr) -> dict | None:
  """The `compiler_options` for jitting steps around the computation `jaxpr`.

  Args:
    jaxpr: the model's forward pass as a `Jaxpr` or `ClosedJaxpr` (`jax.make_jaxpr`).

  Returns:
    On the CPU: `CPU_CONV_OPTIONS` when `jaxpr` convolves, and `CPU_REMAT_OPTIONS` when it
    rematerializes (`nn.remat` / `jax.checkpoint`); None (XLA's defaults) otherwise and on
    other backends.
  """
  if jax.default_backend() != "cpu":
    return None
  options = {}
  if uses_primitive(jaxpr, "conv_general_dilated") and _cpu_options_supported():
    options.update(CPU_CONV_OPTIONS)
  if uses_primitive(jaxpr, "remat2") or uses_primitive(jaxpr, "checkpoint"):
    options.update(CPU_REMAT_OPTIONS)
  return options or None


def step_compiler_options(fn, *args, **kwargs) -> dict | None:
  """The `compiler_options` for jitting a step that runs `fn(*args, **kwargs)`.

  Args:
    fn: the model's forward pass (e.g. `model.apply`), traced once, not run.
    *args, **kwargs: its example inputs (arrays or shapes' stand-ins of the real ones).

  Returns:
    As `compiler_options_for` the traced computation.
  """
  return compiler_options_for(jax.make_jaxpr(functools.partial(fn, **kwargs))(*args))
