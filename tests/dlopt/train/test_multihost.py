"""Several processes joined by `jax.distributed.initialize` on 127.0.0.1 (CPU collectives
through gloo), two fake devices each: they train as one process does, their checkpoint
resumes in one process, and a process that dies takes the others down in bounded time.
Plus the launcher and `initialize` on their own."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlopt import launch
from dlopt.train import distributed

JOB = Path(__file__).with_name("multihost_job.py")
ROOT = Path(__file__).resolve().parents[3]
TOL = 1e-5


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("DLOPT_") and k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
  return env


def _launch(num_processes: int, *args: str, timeout: float = 240) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "dlopt.launch", "--num-processes", str(num_processes),
       "--devices-per-process", "2", "--timeout", str(timeout), "--", str(JOB), *args],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _job(*args: str, **env) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, str(JOB), *args], cwd=ROOT, env=_env(**env),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
  try:
    out, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    out, _ = process.communicate()
    pytest.fail(f"no exit within {timeout} s (hung?):\n{out[-4000:]}")
  return process.returncode, out


def _assert_same_params(a: Path, b: Path) -> None:
  with np.load(a) as pa, np.load(b) as pb:
    assert sorted(pa) == sorted(pb)
    for key in pa:
      np.testing.assert_allclose(pa[key], pb[key], atol=TOL, rtol=TOL, err_msg=key)


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_resumes_in_one(tmp_path):
  two = _launch(2, "train", "--workdir", str(tmp_path / "two"), "--out", str(tmp_path / "two.npz"),
                "--parallel", "fsdp")
  one = _job("train", "--workdir", str(tmp_path / "one"), "--out", str(tmp_path / "one.npz"),
             "--parallel", "none")
  (code_two, out_two), (code_one, out_one) = _finish(two), _finish(one)
  assert code_two == 0, out_two[-4000:]
  assert code_one == 0, out_one[-4000:]
  assert "process 1 of 2 done: step 7, 4 devices" in out_two
  _assert_same_params(tmp_path / "one.npz", tmp_path / "two.npz")
  record_one = json.loads((tmp_path / "one.npz.json").read_text())
  record_two = json.loads((tmp_path / "two.npz.json").read_text())
  assert (record_two["processes"], record_two["devices"]) == (2, 4)
  for key in ("train_loss", "val_loss"):
    assert record_two["history"][-1][key] == pytest.approx(record_one["history"][-1][key],
                                                           rel=TOL)
  assert record_two["test"]["loss"] == pytest.approx(record_one["test"]["loss"], rel=TOL)
  # Process 0 alone wrote the log: one line for the one epoch.
  assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 1

  # Keep the two processes' first (mid-epoch, FSDP-sharded) checkpoint; resume in one.
  checkpoints = tmp_path / "two" / "checkpoints"
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert steps[0] == 4
  for step in steps[1:]:
    shutil.rmtree(checkpoints / str(step))
  code, out = _finish(_job("train", "--workdir", str(tmp_path / "two"), "--resume",
                           "--out", str(tmp_path / "resumed.npz"), "--parallel", "none"))
  assert code == 0, out[-4000:]
  assert "process 0 of 1 done: step 7, 1 devices" in out
  _assert_same_params(tmp_path / "one.npz", tmp_path / "resumed.npz")


@pytest.mark.slow
def test_processes_that_load_only_their_own_rows_train_like_one(tmp_path):
  two = _launch(2, "train", "--local-data", "--out", str(tmp_path / "two.npz"),
                "--parallel", "mesh")
  one = _job("train", "--local-data", "--as-one", "2", "--out", str(tmp_path / "one.npz"),
             "--parallel", "none")
  (code_two, out_two), (code_one, out_one) = _finish(two), _finish(one)
  assert code_two == 0, out_two[-4000:]
  assert code_one == 0, out_one[-4000:]
  assert "process 1 of 2 done: step 8, 4 devices" in out_two
  assert "process 0 of 1 done: step 8, 1 devices" in out_one
  _assert_same_params(tmp_path / "one.npz", tmp_path / "two.npz")


@pytest.mark.slow
def test_a_dead_process_fails_the_others_in_bounded_time(tmp_path):
  # Bounded: _finish fails the test if a process outlives its timeout. Under the launcher: it stops the survivor at once.
  launched = _launch(2, "train", "--die-at", "2", timeout=120)
  # Without it: JAX's heartbeat (5 s here) fails the survivor.
  port = str(launch.free_port())
  joined = [_job("train", "--die-at", "2", DLOPT_COORDINATOR=f"127.0.0.1:{port}",
                 DLOPT_NUM_PROCESSES="2", DLOPT_PROCESS_ID=str(i), DLOPT_HEARTBEAT_TIMEOUT="5",
                 XLA_FLAGS="--xla_force_host_platform_device_count=2")
            for i in range(2)]
  code, out = _finish(launched, timeout=150)
  assert code == 3, out[-4000:]
  assert "process 1 exited with code 3; stopping the other 1 still running" in out
  assert "done:" not in out
  (code_0, out_0), (code_1, out_1) = _finish(joined[0], 150), _finish(joined[1], 150)
  assert code_1 == 3 and "dies before step 2" in out_1, out_1[-2000:]
  assert code_0 != 0 and "done:" not in out_0
  assert "another task died" in out_0 or "stopped sending heartbeats" in out_0, out_0[-4000:]


def test_launcher_stops_the_others_when_one_fails():
  sink = io.StringIO()
  started = time.monotonic()
  # Process 1 fails at once; process 0 would sleep ten minutes if nobody stopped it.
  code = launch.launch([sys.executable, "-c", "import os, sys, time; "
                        "time.sleep(600) if os.environ['DLOPT_PROCESS_ID'] == '0' "
                        "else sys.exit(5)"], 2, sink=sink)
  assert code == 5
  assert time.monotonic() - started < 300  # stopped, not waited for (not a speed check)
  assert "[launch] process 1 exited with code 5; stopping the other 1 still running" in (
      sink.getvalue())


def test_launcher_sets_each_process_environment():
  sink = io.StringIO()
  code = launch.launch([sys.executable, "-c", "import os; print(os.environ['DLOPT_PROCESS_ID'], "
                        "os.environ['DLOPT_NUM_PROCESSES'], os.environ['DLOPT_COORDINATOR'], "
                        "os.environ['XLA_FLAGS'])"], 2, devices_per_process=3, sink=sink)
  assert code == 0
  lines = sorted(sink.getvalue().splitlines())
  assert lines[0].startswith("[0] 0 2 127.0.0.1:") and lines[1].startswith("[1] 1 2 127.0.0.1:")
  assert all(line.endswith("--xla_force_host_platform_device_count=3") for line in lines)
  env = launch.child_environment({"XLA_FLAGS": "--a --xla_force_host_platform_device_count=8"},
                                 process_id=1, num_processes=2, port=1234,
                                 devices_per_process=2, stamp="s")
  assert env["XLA_FLAGS"] == "--a --xla_force_host_platform_device_count=2"
  assert env["DLOPT_COORDINATOR"] == "127.0.0.1:1234" and env["DLOPT_PROCESS_ID"] == "1"


def test_launcher_command_line_errors(capsys):
  for argv, expected in ((["--num-processes", "2"], "give the command to run after --"),
                         (["--num-processes", "0", "--", "x.py"], "num_processes must be >= 1")):
    with pytest.raises(SystemExit) as exit_info:
      launch.main(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_initialize_is_a_no_op_for_one_process_and_checks_its_values(monkeypatch):
  for name in ("DLOPT_COORDINATOR", "DLOPT_NUM_PROCESSES", "DLOPT_PROCESS_ID",
               "DLOPT_DISTRIBUTED"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize() is False
  assert distributed.initialize("127.0.0.1:1", num_processes=1, process_id=0) is False
  with pytest.raises(ValueError, match="num_processes=2 needs a coordinator_address"):
    distributed.initialize(num_processes=2)
  with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\); got 2"):
    distributed.initialize("127.0.0.1:1", num_processes=2, process_id=2)
  monkeypatch.setenv("DLOPT_COORDINATOR", "127.0.0.1:1")
  monkeypatch.setenv("DLOPT_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="DLOPT_NUM_PROCESSES must be an integer; got 'two'"):
    distributed.initialize()


def test_initialize_reads_jax_own_variables_and_dlopt_ones_win(monkeypatch):
  for name in ("DLOPT_COORDINATOR", "DLOPT_NUM_PROCESSES", "DLOPT_PROCESS_ID",
               "DLOPT_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda *args, **kwargs: calls.append(args))
  monkeypatch.setattr(distributed.jax.config, "update", lambda *args: None)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  with pytest.raises(ValueError, match="process_id \\(DLOPT_PROCESS_ID or JAX_PROCESS_ID\\)"):
    distributed.initialize()
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.initialize() is True
  assert calls[-1] == ("10.0.0.1:1234", 4, 3)
  monkeypatch.setenv("DLOPT_PROCESS_ID", "2")
  monkeypatch.setenv("DLOPT_COORDINATOR", "10.0.0.2:99")
  assert distributed.initialize() is True
  assert calls[-1] == ("10.0.0.2:99", 4, 2)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "x")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer; got 'x'"):
    distributed.initialize()


def test_process_local_wants_batches_with_len_and_one_process_shards_nothing():
  from dlopt.train import ProcessLocal, process_shard
  with pytest.raises(ValueError, match="ProcessLocal needs a re-iterable"):
    ProcessLocal(iter([]))
  assert len(ProcessLocal([(np.zeros(2), np.zeros(2))] * 3)) == 3
  assert process_shard(10) == slice(0, 10)
  with pytest.raises(ValueError, match="num_examples must be an integer >= 0; got -1"):
    process_shard(-1)
