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

__all__ = ["CPU_CONV_OPTIONS", "compiler_options_for", "step_compiler_options",
           "uses_primitive"]

CPU_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


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
    A copy of `CPU_CONV_OPTIONS` when the backend is the CPU and `jaxpr` convolves; None
    (XLA's defaults) otherwise.
  """
  if (jax.default_backend() != "cpu" or not uses_primitive(jaxpr, "conv_general_dilated")
      or not _cpu_options_supported()):
    return None
  return dict(CPU_CONV_OPTIONS)


def step_compiler_options(fn, *args, **kwargs) -> dict | None:
  """The `compiler_options` for jitting a step that runs `fn(*args, **kwargs)`.

  Args:
    fn: the model's forward pass (e.g. `model.apply`), traced once, not run.
    *args, **kwargs: its example inputs (arrays or shapes' stand-ins of the real ones).

  Returns:
    As `compiler_options_for` the traced computation.
  """
  return compiler_options_for(jax.make_jaxpr(functools.partial(fn, **kwargs))(*args))
