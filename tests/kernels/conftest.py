"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def as_if_on_tpu(monkeypatch):
  """Makes Mosaic's Python lowering believe it targets a TPU v5 lite (no TPU needed).

  The Python half of Mosaic lowering (block shapes, supported ops) then runs on the CPU;
  the device-side Mosaic compiler still needs the hardware.
  """
  try:
    from jax._src.pallas.mosaic import tpu_info
  except ImportError:
    pytest.skip("this JAX has no jax._src.pallas.mosaic.tpu_info")
  if not hasattr(tpu_info, "get_device_kind"):
    pytest.skip("this JAX has no tpu_info.get_device_kind")
  monkeypatch.setattr(tpu_info, "get_device_kind", lambda: "TPU v5 lite")
  monkeypatch.setattr(tpu_info, "get_num_device_cores", lambda: 1)
