"""What every benchmark record carries: machine, versions, date, command."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
  """The machine, device and package versions of this run."""
  import jax
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join([Path(sys.executable).name, *sys.argv]),
      "machine": {"platform": platform.platform(), "processor": platform.processor(),
                  "cpu_count": os.cpu_count(), "python": platform.python_version()},
      "device": {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]},
      "versions": versions,
  }


def write_result(name: str, record: dict) -> Path:
  """Writes `record` (with the environment) to bench/results/<name>.json; returns the path."""
  RESULTS.mkdir(parents=True, exist_ok=True)
  path = RESULTS / f"{name}.json"
  path.write_text(json.dumps({**environment(), **record}, indent=2) + "\n")
  return path
