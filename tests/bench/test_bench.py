"""`python -m bench`: every command's --tiny run writes a complete record; tables regenerate.

No timing is asserted: only that each record carries what every benchmark result must
(machine, device, versions, UTC date, the command, the run count, min/median/max) and that
its values are sane.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is run from the repository root, not installed
  sys.path.insert(0, str(ROOT))

from bench import _gpu_smoke, gpu_suite, tables  # noqa: E402
from bench import _runner as bench_runner  # noqa: E402
from bench import peers as bench_peers  # noqa: E402
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
def test_gpu_suite_tiny_in_interpret_mode_writes_a_complete_record(tmp_path):
  # 45 s keeps the test under a minute on a loaded machine; what does not fit is skipped.
  done = _bench("gpu-suite", "--tiny", "--budget", "45", "--out", str(tmp_path))
  suite = json.loads((tmp_path / "gpu_suite_cpu.json").read_text())
  _check_record(suite, "gpu-suite")
  assert suite["status"] == "done" and suite["budget_s"] == 45 and suite["interpret"]
  parts = suite["parts"]
  assert list(parts) == ["smoke", "attention", "conv", "tests"]
  for entry in parts.values():
    # A loaded machine may run out of budget: then what did not fit says so.
    assert entry["status"] in ("ok", "partial") or "budget" in entry["reason"], entry
  smoke, tiny = parts["smoke"], argparse.Namespace(tiny=True, quick=False)
  assert smoke["cases"] and all(case["passed"] for case in smoke["cases"])
  assert ([c["name"] for c in smoke["cases"]] + smoke.get("skipped", [])
          == [c.name for c in _gpu_smoke.cases(tiny=True)])
  assert all(case["interpret"] and case["compile_s"] > 0 for case in smoke["cases"])
  assert smoke["compile_table"] == {"status": "skipped", "reason": "needs a GPU"}
  attention = parts["attention"]
  assert attention["points"] + attention.get("skipped", []) != []
  grid = [{k: p[k] for k in ("seq", "head_dim", "causal")} for p in attention["points"]]
  assert grid + attention.get("skipped", []) == gpu_suite.attention_grid(tiny)
  for point in attention["points"]:
    assert set(point["paths"]) == {"pallas", "xla"}
    assert all(path[mode]["tflops"] > 0 for path in point["paths"].values()
               for mode in ("fwd", "fwd_bwd"))
  conv = parts["conv"]
  assert len(conv["points"]) + len(conv.get("skipped", [])) == len(
      gpu_suite.conv_items(tiny, accelerator=False))
  for point in conv["points"]:
    assert point["fwd"]["fused"]["gbps"] > 0 and point["bytes"]["fwd_bwd"] > 0
  if parts["tests"]["status"] == "ok":
    assert "collected" in parts["tests"]["summary"]
    assert (tmp_path / parts["tests"]["output"]).read_text()
  assert done.stdout.strip().splitlines()[-5].startswith("part")  # the table comes last


def _fake_part(name, run, min_seconds=0.0):
  return gpu_suite.Part(name, run, seconds=(1.0, 1.0), min_seconds=(min_seconds, min_seconds))


def _sleep(seconds, status="ok"):
  def run(ctx):
    time.sleep(seconds)
    return status
  return run


def _suite(tmp_path, budget: float) -> dict:
  """Runs `gpu-suite` in this process (jax already imported: no start-up in the budget)."""
  jax.devices()
  code = bench_runner.main(["gpu-suite", "--tiny", "--budget", str(budget), "--out",
                            str(tmp_path)])
  return code, json.loads((tmp_path / "gpu_suite_cpu.json").read_text())


def test_gpu_suite_skips_a_part_the_budget_cannot_start_and_cuts_a_sweep(monkeypatch, tmp_path):
  def sweep_part(ctx):  # 5 points of >= 0.3 s in a share of < 1.5 s: some must be skipped
    return gpu_suite.sweep(ctx, list(range(5)), lambda i: (time.sleep(0.3), i)[1],
                           lambda i: {"point": i})

  monkeypatch.setattr(gpu_suite, "PARTS", (
      _fake_part("first", _sleep(1.5)),
      _fake_part("big", _sleep(0.0), min_seconds=2.0),
      _fake_part("last", sweep_part)))
  code, suite = _suite(tmp_path, budget=3.0)
  parts = suite["parts"]
  assert code == 0 and suite["status"] == "done"
  assert parts["first"]["status"] == "ok" and parts["first"]["wall_s"] >= 1.5
  assert parts["big"]["status"] == "skipped" and "budget" in parts["big"]["reason"]
  last = parts["last"]
  assert last["status"] == "partial" and last["skipped"] and "budget" in last["skipped_reason"]
  assert last["points"] + [s["point"] for s in last["skipped"]] == list(range(5))


def test_gpu_suite_json_is_written_after_each_part(monkeypatch, tmp_path):
  def first(ctx):
    ctx.entry["headline"] = "first done"
    return "ok"

  def broken(ctx):
    raise RuntimeError("a part that breaks")

  def killed(ctx):  # what a run cut off at the limit looks like from inside
    raise KeyboardInterrupt

  monkeypatch.setattr(gpu_suite, "PARTS", (
      _fake_part("first", first), _fake_part("broken", broken),
      _fake_part("killed", killed), _fake_part("never", _sleep(0.0))))
  with pytest.raises(KeyboardInterrupt):
    _suite(tmp_path, budget=60.0)
  suite = json.loads((tmp_path / "gpu_suite_cpu.json").read_text())
  parts = suite["parts"]
  assert suite["status"] == "running"
  assert parts["first"] == {"status": "ok", "share_s": parts["first"]["share_s"],
                            "headline": "first done", "wall_s": parts["first"]["wall_s"]}
  assert parts["broken"]["status"] == "error" and "a part that breaks" in parts["broken"]["error"]
  assert parts["killed"]["status"] == "running"
  assert parts["never"] == {"status": "pending"}
  # A part that raises fails the suite, and the others still run.
  monkeypatch.setattr(gpu_suite, "PARTS", (_fake_part("broken", broken),
                                           _fake_part("after", _sleep(0.0))))
  code, suite = _suite(tmp_path, budget=60.0)
  assert code == 1 and suite["parts"]["after"]["status"] == "ok"


def test_gpu_suite_full_plan_covers_every_kernel():
  full = argparse.Namespace(tiny=False, quick=False)
  cases = _gpu_smoke.cases()
  attention = [c for c in cases if c.op == "attention"]
  assert {c.dtype for c in attention} == {"bfloat16", "float32"}
  assert {c.shape[-1] for c in attention} == {64, 128}
  assert any(c.shape[3] != c.shape[4] for c in attention)  # GQA
  for option in ("causal", "kv_lengths", "segments"):
    assert any(dict(c.options).get(option) for c in attention), option
  conv = [c for c in cases if c.op == "conv2d"]
  for dtype in ("bfloat16", "float32"):
    mine = [dict(c.options) | {"k": c.shape[-1]} for c in conv if c.dtype == dtype]
    assert {o.get("stride", 1) for o in mine if o["k"] == 3 and o.get("residual")} == {1, 2}
    assert any(o["k"] == 1 for o in mine) and any(o.get("groups", 1) > 1 for o in mine)
    assert any(c.op == "causal_conv1d" and c.dtype == dtype for c in cases)
  assert len({c.name for c in cases}) == len(cases)
  grid = gpu_suite.attention_grid(full)
  assert len(grid) == 20 and {p["seq"] for p in grid} == {1024, 2048, 4096, 8192, 16384}
  assert {(p["head_dim"], p["causal"]) for p in grid[:4]} == {(64, False), (64, True),
                                                             (128, False), (128, True)}
  items = gpu_suite.conv_items(full, accelerator=True)
  assert {i["dtype"] for i in items if "causal" in i} == {"bfloat16", "float32"}
  assert any(i.get("layer") == "mobilenetv2_dw_3x3" for i in items)


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
