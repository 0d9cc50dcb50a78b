"""What every benchmark record carries: machine, device, package versions, date."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def versions(packages=PACKAGES) -> dict:
  """`{name: installed version or None}` of `packages` (read without importing them)."""
  found = {}
  for name in packages:
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = None
  return found


def machine() -> dict:
  """Platform, processor, CPU count and Python version of this machine."""
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "python": platform.python_version()}


def now() -> str:
  """The current UTC time, ISO 8601 to the second."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def environment(extra_packages=()) -> dict:
  """The date, machine, JAX device and package versions of this run.

  Args:
    extra_packages: more distributions whose versions to record (e.g. "torch", "keras").

  Returns:
    `{"date", "machine", "device": {"backend", "devices"}, "versions"}`.
  """
  import jax
  return {"date": now(), "machine": machine(),
          "device": {"backend": jax.default_backend(),
                     "devices": [str(d) for d in jax.devices()]},
          "versions": versions((*PACKAGES, *extra_packages))}
