"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import jax
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
