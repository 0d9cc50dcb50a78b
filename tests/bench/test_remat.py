"""`python -m bench remat --tiny`: every variant of both models measured, a complete record.

No memory or timing is asserted, except what XLA's memory analysis must show: with the
optimization barriers kept, remat compiles each model's step with fewer temporary bytes.
And that README's block renders from the record.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is run from the repository root, not installed
  sys.path.insert(0, str(ROOT))

from bench import tables  # noqa: E402


@pytest.mark.slow
def test_remat_tiny_writes_a_complete_record_and_its_table(tmp_path):
  done = subprocess.run([sys.executable, "-m", "bench", "remat", "--tiny", "--out",
                         str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  record = json.loads((tmp_path / "remat.json").read_text())
  assert record["machine"]["cpu_count"] >= 1 and record["device"]["devices"]
  assert {"jax", "jaxlib", "flax", "optax", "numpy"} <= set(record["versions"])
  assert datetime.datetime.fromisoformat(record["date"]).utcoffset() == datetime.timedelta(0)
  assert record["command"].startswith("python -m bench remat")
  assert record["tiny"] and record["runs"] == 1 and record["first_step_losses_agree"]
  assert set(record["models"]) == {"decoder_lm", "residual_cnn"}
  for entry in record["models"].values():
    variants = entry["variants"]
    assert set(variants) == {"plain", "remat", "plain_keep_barriers", "remat_keep_barriers"}
    for data in variants.values():
      spread = data["step_s"]
      assert 0 < spread["min"] <= spread["median"] <= spread["max"]
      assert data["memory"]["temp_mib"] > 0 and data["memory"]["peak_mib"] > 0
      assert data["compile_s"] > 0
    assert (variants["remat_keep_barriers"]["memory"]["temp_mib"]
            < variants["plain_keep_barriers"]["memory"]["temp_mib"])
  block = tables.remat_block(tmp_path)
  assert "| decoder_lm | `remat=True`, barriers kept (what `fit` compiles) |" in block and "Smoke run" in block
