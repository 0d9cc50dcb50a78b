"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import jax
from jax.extend import core as jex_core
import pytest


def _abstract_target(device_kind: str, platform: str, num_cores: int | None):
  """A context in which lowering targets an abstract device: no such device is needed.

  JAX reads the kind of device it lowers Pallas kernels for from the abstract mesh's
  `AbstractDevice` (`jax.sharding.use_abstract_mesh`); an empty mesh carries one without
  sharding anything.

  Args:
    device_kind: the `device_kind` of the device, e.g. "NVIDIA H100" or "TPU v5 lite".
    platform: "gpu" or "tpu".
    num_cores: cores per device (TPU), or None.

  Returns:
    The `use_abstract_mesh` context manager.
  """
  device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=num_cores,
                                       platform=platform)
  mesh = jax.sharding.AbstractMesh((), (), abstract_device=device)
  return jax.sharding.use_abstract_mesh(mesh)


@pytest.fixture
def as_if_on_tpu():
  """Lowers Pallas kernels for a TPU v5 lite, with no TPU (Mosaic's Python lowering).

  The Python half of Mosaic lowering (block shapes, supported ops) then runs on the CPU;
  the device-side Mosaic compiler still needs the hardware.
  """
  with _abstract_target("TPU v5 lite", "tpu", num_cores=1):
    yield


@pytest.fixture
def as_if_on_gpu():
  """Lowers Pallas kernels for an H100 (sm_90), with no GPU (the Pallas-to-Triton rules).

  JAX 0.10 falls back to sm_90 by itself where no GPU is present; 0.11 and later need the
  device named. Only the PTX compile that follows lowering needs the hardware.
  """
  with _abstract_target("NVIDIA H100", "gpu", num_cores=None):
    yield


def _sub_jaxprs(eqn):
  """The jaxprs nested in one equation's params (jit, scan, cond, while, custom_vjp...)."""
  for param in eqn.params.values():
    for item in param if isinstance(param, (list, tuple)) else (param,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


# Primitives that read a Python scalar operand for what it is: converting it is their job
# (convert_element_type), or Pallas turns it into an index constant (ref reads and writes).
_CONVERTS_SCALARS = ("convert_element_type", "get", "swap", "addupdate")


def _takes_as_is(eqn) -> bool:
  """Whether `eqn` hands a weakly typed operand to the lowering with its own dtype.

  A call (jit, scan, cond...) passes it on into a nested jaxpr, whose own equations are
  looked at; a plain primitive lowers it as it is: an int64 under x64 (e.g. `pltpu.roll`'s
  shift, which Mosaic needs as an i32).
  """
  return (eqn.primitive.name not in _CONVERTS_SCALARS
          and not any(True for _ in _sub_jaxprs(eqn)))


def sixty_four_bit_values(fn, *args):
  """The 64-bit values that tracing `fn(*args)` makes, where float32 inputs need none.

  Inside a `pallas_call` (its kernel and its index maps) every int64, uint64 and float64
  value counts; outside, the float64 ones. Every value an equation makes counts. Python
  scalars (weakly typed literals, and the inputs of nested jaxprs they become) count only
  where a kernel's primitive takes them as they are (see `_takes_as_is`); elsewhere they
  take the other operand's dtype.

  Returns:
    `(found, num_kernels)`: sorted "where: primitive dtype" strings, and how many
    `pallas_call`s the trace holds (so that a test cannot pass by tracing none).
  """
  found, names = set(), []

  def visit(jaxpr, where, inside):
    wide = ("int64", "uint64", "float64") if inside else ("float64",)
    values = [("input", v) for v in jaxpr.invars if inside and not v.aval.weak_type]
    for eqn in jaxpr.eqns:
      values += [(eqn.primitive.name, v) for v in eqn.invars
                 if isinstance(v, jex_core.Literal)
                 and (not v.aval.weak_type or inside and _takes_as_is(eqn))]
      values += [(eqn.primitive.name, v) for v in eqn.outvars]
    for what, value in values:
      dtype = str(getattr(value.aval, "dtype", ""))
      if dtype in wide:
        found.add(f"{where}: {what} {dtype}")
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        name = eqn.params.get("name") or "pallas_call"
        names.append(name)
        visit(eqn.params["jaxpr"], f"{name} kernel", True)
        for mapping in eqn.params["grid_mapping"].block_mappings:
          visit(mapping.index_map_jaxpr.jaxpr, f"{name} index map", True)
      else:
        for sub in _sub_jaxprs(eqn):
          visit(sub, where, inside)

  visit(jax.make_jaxpr(fn)(*args).jaxpr, "outside the kernels", False)
  return sorted(found), len(names)


@pytest.fixture
def find_64_bit_values():
  """`sixty_four_bit_values` above, as a fixture."""
  return sixty_four_bit_values
