"""`python -m bench`: every command's --tiny run writes a complete record; tables regenerate.

No timing is asserted: only that each record carries what every benchmark result must
(machine, device, versions, UTC date, the command, the run count, min/median/max) and that
its values are sane.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is run from the repository root, not installed
  sys.path.insert(0, str(ROOT))

from bench import peers as bench_peers  # noqa: E402
from bench import tables  # noqa: E402
from bench.time_to_accuracy import summarize_run  # noqa: E402

PEERS = ("keras", "torch", "flax", "dlopt")


def _bench(*args: str, check: bool = True) -> subprocess.CompletedProcess:
  done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True,
                        text=True)
  if check:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done


def _spreads(tree) -> list[tuple[float, float, float]]:
  """Every (min, median, max) in `tree`: `{"min", "median", "max"}` or `*_s` keys."""
  found = []
  if isinstance(tree, dict):
    for keys in (("min", "median", "max"), ("min_s", "median_s", "max_s")):
      if all(key in tree for key in keys):
        found.append(tuple(tree[key] for key in keys))
    for value in tree.values():
      found += _spreads(value)
  elif isinstance(tree, list):
    for value in tree:
      found += _spreads(value)
  return found


def _check_record(record: dict, command: str, extra_packages=()) -> None:
  """The fields every result carries, with sane values."""
  machine = record["machine"]
  assert machine["platform"] and "processor" in machine and machine["cpu_count"] >= 1
  assert record["device"]["backend"] and record["device"]["devices"]
  for package in ("jax", "jaxlib", "flax", "optax", "numpy", *extra_packages):
    assert package in record["versions"]
  date = datetime.datetime.fromisoformat(record["date"])
  assert date.utcoffset() == datetime.timedelta(0)
  assert record["command"].startswith(f"python -m bench {command}")
  assert isinstance(record["runs"], int) and record["runs"] >= 1
  spreads = _spreads(record)
  assert spreads, "no min/median/max in the record"
  for low, mid, high in spreads:
    assert 0 <= low <= mid <= high


def test_help_lists_every_command_and_bad_commands_fail():
  done = _bench("--help")
  for name in ("attention", "conv", "fit-throughput", "default-trainer", "examples",
               "gpu-suite", "cpu-speed", "peers-throughput", "time-to-accuracy", "tables"):
    assert name in done.stdout
  assert _bench(check=False).returncode == 2
  unknown = _bench("nope", check=False)
  assert unknown.returncode == 2 and "invalid choice: 'nope'" in unknown.stderr
  assert "--tiny" in _bench("peers-throughput", "--help").stdout


def test_summarize_run_reached_and_not_reached():
  epochs = [{"epoch": 1, "wall_s": 10.0, "test_accuracy": 0.98},
            {"epoch": 2, "wall_s": 19.0, "test_accuracy": 0.991},
            {"epoch": 3, "wall_s": 28.0, "test_accuracy": 0.993}]
  assert summarize_run(epochs, 0.99) == {"reached": True, "seconds_to_target": 19.0,
                                         "epochs_to_target": 2, "best_accuracy": 0.993,
                                         "total_seconds": 28.0}
  missed = summarize_run(epochs, 0.995)
  assert not missed["reached"] and missed["seconds_to_target"] is None
  assert missed["best_accuracy"] == 0.993 and missed["total_seconds"] == 28.0


def test_a_peer_whose_package_is_missing_is_skipped(monkeypatch, tmp_path):
  monkeypatch.setitem(bench_peers.PEERS, "ghost",
                      bench_peers.Peer("bench.peers.ghost", ("no_such_package_dlopt",)))
  record = bench_peers.run_in_subprocess("throughput", "ghost", tmp_path, {})
  assert "no_such_package_dlopt not installed" in record["skipped"]


def test_tables_are_idempotent_and_keep_the_rest(tmp_path):
  readme = tmp_path / "README.md"
  shutil.copy(ROOT / "README.md", readme)
  before = readme.read_text()
  _bench("tables", "--readme", str(readme))
  once = readme.read_text()
  _bench("tables", "--readme", str(readme))
  assert readme.read_text() == once
  assert _bench("tables", "--readme", str(readme), "--check").returncode == 0
  outside = [part.split("<!-- bench:")[0] for part in once.split(":end -->")]
  assert all(chunk in before for chunk in outside)
  # An empty results directory: every block says which command writes it.
  _bench("tables", "--readme", str(readme), "--results", str(tmp_path / "none"))
  # One line per block, and two each in results (trainer, fit) and peers (throughput, time).
  assert readme.read_text().count("_No result yet") == len(tables.BLOCKS) + 2
  assert _bench("tables", "--readme", str(readme), "--check", check=False).returncode == 1


def test_tables_rejects_a_start_marker_without_its_end(tmp_path):
  with pytest.raises(ValueError, match="without its"):
    tables.regenerate("<!-- bench:peers:start -->\ntext\n", tmp_path)


@pytest.mark.slow
def test_gpu_suite_tiny_runs_attention_and_conv(tmp_path):
  _bench("gpu-suite", "--tiny", "--out", str(tmp_path))
  suite = json.loads(next(tmp_path.glob("gpu_suite_*.json")).read_text())
  _check_record(suite, "gpu-suite")
  assert {part["returncode"] for part in suite["parts"].values()} == {0}
  assert "collected" in suite["parts"]["tests"]["summary"]
  for name in ("attention", "conv"):
    record = json.loads(next(tmp_path.glob(f"{name}_*.json")).read_text())
    _check_record(record, name)
    assert record["tiny"] and record["runs"] == 2
  conv = json.loads(next(tmp_path.glob("conv_*.json")).read_text())
  step = next(r for r in conv["records"] if "step" in r)["step"]
  assert all(result["images_per_s"] > 0 for result in step.values())


@pytest.mark.slow
@pytest.mark.parametrize("command",
                         ["fit-throughput", "default-trainer", "examples", "cpu-speed"])
def test_dlopt_commands_tiny(command, tmp_path):
  _bench(command, "--tiny", "--out", str(tmp_path))
  (path,) = tmp_path.glob("*.json")
  record = json.loads(path.read_text())
  if command == "examples":
    record = record["examples"]["mlp_digits"]
    assert 0 <= record["summary"]["test_accuracy"] <= 1
  elif command == "default-trainer":
    assert 0 <= record["summary"]["test_accuracy"] <= 1 and record["wall_seconds"] > 0
  elif command == "cpu-speed":
    assert all(v["images_per_s"]["median"] > 0 for v in record["variants"])
  else:
    assert record["fit_steps_per_second"] > 0 and record["hand_steps_per_second"] > 0
  _check_record(record, command)


def _installed(peer: str) -> bool:
  return all(importlib.util.find_spec(p) for p in bench_peers.PEERS[peer].requires)


def _ran_peers(record: dict):
  """The entries of the peers that ran, after checking that the others say why they did not."""
  for peer in PEERS:
    entry = record["peers"][peer]
    if not _installed(peer):
      assert "not installed" in entry["skipped"]
      continue
    assert "error" not in entry, entry.get("output") or entry["error"]
    yield entry


@pytest.mark.slow
def test_peers_throughput_tiny_and_its_table(tmp_path):
  out = tmp_path / "results"
  _bench("peers-throughput", "--tiny", "--out", str(out))
  record = json.loads((out / "peers_throughput_cpu.json").read_text())
  _check_record(record, "peers-throughput", ("torch", "keras"))
  assert record["tiny"] and record["runs"] == 1 and record["steps"] == 3
  for entry in _ran_peers(record):
    assert entry["images_per_s"]["median"] > 0 and entry["steady_epoch_s"]["median"] > 0
    assert entry["description"] and entry["environment"]["devices"]
  if _installed("torch"):
    assert record["peers"]["torch"]["vs_torch"] == pytest.approx(1.0)
    assert record["peers"]["dlopt"]["vs_torch"] > 0
  readme = tmp_path / "README.md"
  shutil.copy(ROOT / "README.md", readme)
  _bench("tables", "--readme", str(readme), "--results", str(out))
  once = readme.read_text()
  _bench("tables", "--readme", str(readme), "--results", str(out))
  assert readme.read_text() == once
  block = once.split("<!-- bench:peers:start -->")[1].split("<!-- bench:peers:end -->")[0]
  assert "| dlopt | `dlopt.train.fit`" in block and "Smoke run" in block


@pytest.mark.slow
def test_time_to_accuracy_tiny_and_its_table(tmp_path):
  out = tmp_path / "results"
  _bench("time-to-accuracy", "--tiny", "--out", str(out))
  record = json.loads((out / "time_to_accuracy_cpu.json").read_text())
  _check_record(record, "time-to-accuracy", ("torch", "keras"))
  assert record["data"] == {"name": "mnist_subset", "train": 512, "test": 256}
  for entry in _ran_peers(record):
    assert entry["recipe"]["batch_size"] == 128
    epochs = entry["runs"][0]["per_epoch"]
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    assert 1 <= len(epochs) <= record["max_epochs"]
    assert all(0 <= e["test_accuracy"] <= 1 for e in epochs)
    walls = [e["wall_s"] for e in epochs]
    assert walls[0] > 0 and walls == sorted(walls)
    assert 0 <= entry["best_accuracy"]["max"] <= 1
  readme = tmp_path / "README.md"
  shutil.copy(ROOT / "README.md", readme)
  _bench("tables", "--readme", str(readme), "--results", str(out))
  block = readme.read_text().split("<!-- bench:peers:start -->")[1]
  # The table says the recipe the run recorded (whatever dlopt_peer.Recipe is now).
  assert f"| dlopt | {tables._recipe(record['peers']['dlopt']['recipe'])}" in block
