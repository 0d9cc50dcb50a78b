"""`python -m bench checkpoint-save --tiny`: each way of saving measured, a complete record.

No timing or memory is asserted, only that the record carries what every benchmark result
must and that its values are sane; and that README's block renders from it.
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
def test_checkpoint_save_tiny_writes_a_complete_record_and_its_table(tmp_path):
  done = subprocess.run([sys.executable, "-m", "bench", "checkpoint-save", "--tiny", "--out",
                         str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  record = json.loads((tmp_path / "checkpoint_save.json").read_text())
  assert record["machine"]["cpu_count"] >= 1 and record["device"]["devices"]
  assert {"jax", "jaxlib", "orbax-checkpoint", "numpy"} <= set(record["versions"])
  assert datetime.datetime.fromisoformat(record["date"]).utcoffset() == datetime.timedelta(0)
  assert record["command"].startswith("python -m bench checkpoint-save")
  assert record["tiny"] and record["runs"] == 1 and record["state_bytes"] > 0
  assert set(record["variants"]) == {"device_copy", "no_copy", "checkpointer"}
  for entry in record["variants"].values():
    for key in ("steady_step_s", "save_call_s", "first_step_after_save_s", "wait_s",
                "peak_rss_mib", "rss_rise_during_save_mib"):
      spread = entry[key]
      assert 0 <= spread["min"] <= spread["median"] <= spread["max"], key
    assert entry["steady_step_s"]["min"] > 0 and entry["peak_rss_mib"]["min"] > 0
    done_steps, steps = map(int, entry["donated_during_write"].split("/"))
    assert steps == record["config"]["steps_after_save"] and 0 <= done_steps <= steps
  block = tables.checkpoint_save_block(tmp_path)
  assert "| `Checkpointer.save` now" in block and "Smoke run" in block
