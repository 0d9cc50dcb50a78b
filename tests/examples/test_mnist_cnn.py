"""The default trainer, as a user runs it: flags, errors, a smoke run, and kill -9 + resume."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "mnist_cnn.py"


def _load_example():
  spec = importlib.util.spec_from_file_location("mnist_cnn", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def example():
  return _load_example()


def test_help_lists_every_config_flag(example, capsys):
  with pytest.raises(SystemExit) as exit_info:
    example.main(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for flag in ("--optimizer", "--lr", "--schedule", "--weight-decay", "--epochs", "--batch-size",
               "--seed", "--workdir", "--resume", "--features", "--dropout-rate", "--patience",
               "--keep-last-n", "--ema-decay", "--accumulate-steps", "--clip-norm"):
    assert flag in text


@pytest.mark.parametrize("argv, expected", [
    (["--optimizer", "adamx"], r"--optimizer must be one of .*got 'adamx'"),
    (["--lr", "-1"], r"--lr must be"),
    (["--batch-size", "0"], r"--batch-size must be an integer >= 1; got 0"),
    (["--epochs", "two"], r"--epochs expects int; got 'two'"),
    (["--schedule", "cosine"], r"--schedule must be one of"),
    (["--no-such-flag"], r"unrecognized arguments: --no-such-flag"),
    (["--resume"], r"--resume needs --workdir"),
])
def test_bad_flags_give_one_clear_error(example, capsys, argv, expected, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    example.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()[-1]) < 300
  assert re.search(expected, err), err


def test_tiny_run_writes_its_run_directory(example, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert example.main(["--tiny", "--workdir", str(workdir), "--progress", "false"]) == 0
  out = capsys.readouterr().out
  assert "test accuracy" in out
  for name in ("config.json", "metrics.jsonl", "curves.png", "final_metrics.json"):
    assert (workdir / name).exists(), name
  summary = json.loads((workdir / "final_metrics.json").read_text())["summary"]
  assert summary["test_accuracy"] > 0.3 and summary["parameters"] == 421_642
  # Running again into the same directory must not overwrite it.
  with pytest.raises(SystemExit):
    example.main(["--tiny", "--workdir", str(workdir), "--progress", "false"])
  assert "already holds a run" in capsys.readouterr().err


def _final_params(workdir: Path):
  directory = workdir / "checkpoints"
  latest = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  return ocp.StandardCheckpointer().restore(directory / str(latest) / "state")


FLAGS = ["--tiny", "--epochs", "4", "--checkpoint-every", "6", "--keep-last-n", "50",
         "--patience", "none", "--progress", "false", "--plot", "false"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _command(workdir, *extra):
  return [sys.executable, str(SCRIPT), *FLAGS, "--workdir", str(workdir), *extra]


@pytest.fixture(scope="module")
def unbroken_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("unbroken")
  subprocess.run(_command(workdir), check=True, env=ENV, capture_output=True)
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["kill-9", "ctrl-c", "sigterm"])
def test_stopped_mid_epoch_then_resumed_ends_bit_exact(tmp_path, unbroken_run, signum):
  stopped = tmp_path / "stopped"
  process = subprocess.Popen(_command(stopped), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline:
    steps = [int(p.name) for p in (stopped / "checkpoints").glob("*") if p.name.isdigit()]
    if steps and max(steps) >= 18:  # epoch 2 of 4 (15 steps each), mid-epoch
      break
    time.sleep(0.01)
  process.send_signal(signum)
  _, err = process.communicate(timeout=120)
  assert not (stopped / "final_metrics.json").exists(), "the run ended before it was stopped"
  if signum != signal.SIGKILL:  # saved at the next step, said so, exited 128 + signal
    assert process.returncode == 128 + signum, err
    assert f"--workdir {stopped} --resume" in err
    assert f"on {signal.Signals(signum).name}" in err

  resumed = subprocess.run(_command(stopped, "--resume"), env=ENV, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr
  a, b = _final_params(unbroken_run), _final_params(stopped)
  for key in ("params", "opt_state", "step", "rng"):
    chex.assert_trees_all_equal(a[key], b[key])
  lines = (stopped / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
