"""`python -m bench gpu-compile`: its parsing and occupancy arithmetic, the recorded table
against the kernels' current defaults, and (with JAX's CUDA plugin) a real sm_90a compile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _sm90, gpu_compile
from bench._env import RESULTS

ROOT = Path(__file__).resolve().parents[2]
GPU_PYTHON = ROOT / ".venv-gpu" / "bin" / "python"

THUNKS = """\
005: kCustomKernel [prev=004 (1) | next=006 (1)] flash_attention_fwd grid: [8, 2, 8] threads: [128, 1, 1]  shared_memory: 98560 bytes
006: kCustomKernel [prev=005 (1) | next=007 (1)] loop_slice_fusion grid: [1024, 1, 1] threads: [128, 1, 1]  shared_memory: 0 bytes
011: kCustomKernel [prev=010 (1) | next=012 (1)] conv_forward__1 grid: [9, 1, 8] threads: [256, 1, 1]  shared_memory: 36864 bytes
"""

PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'flash_attention_fwd' for 'sm_90a'
ptxas info    : Function properties for flash_attention_fwd
    80 bytes stack frame, 76 bytes spill stores, 72 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 80 bytes cumulative stack size
ptxas info    : Compiling entry function 'conv_forward__1' for 'sm_90a'
ptxas info    : Function properties for conv_forward__1
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers
"""


def test_launches_parse_xla_thunk_dump(tmp_path):
  (tmp_path / "module_0001.jit_f.thunk_sequence.txt").write_text(THUNKS)
  launches = _sm90._launches(tmp_path)
  assert launches["flash_attention_fwd"] == {"grid": [8, 2, 8], "threads": 128,
                                             "shared_memory_bytes": 98560}
  assert launches["conv_forward__1"]["threads"] == 256
  assert launches["loop_slice_fusion"]["shared_memory_bytes"] == 0


def test_ptxas_report_parses_registers_and_spills(tmp_path, monkeypatch):
  done = subprocess.CompletedProcess([], 0, stdout="", stderr=PTXAS)
  monkeypatch.setattr(_sm90.subprocess, "run", lambda *a, **k: done)
  report = _sm90._ptxas_report(tmp_path / "x.ptx", "ptxas")
  assert report["flash_attention_fwd"] == {"stack_bytes": 80, "spill_store_bytes": 76,
                                           "spill_load_bytes": 72, "registers": 255}
  assert report["conv_forward__1"]["registers"] == 96
  assert report["conv_forward__1"]["spill_store_bytes"] == 0


@pytest.mark.parametrize("threads, registers, smem, expected", [
    (128, 255, 0, (2, "registers")),        # 8192 registers a warp: 2 warps per scheduler
    (128, 128, 0, (4, "registers")),        # 4096 a warp: 4 per scheduler, 16 warps
    (128, 64, 0, (8, "registers")),
    (128, 32, 0, (16, "threads")),          # 2048 threads / 128
    (256, 128, 0, (2, "registers")),        # 8 warps at 4096 registers: 2 blocks
    (128, 64, 110 * 1024, (2, "shared_memory")),  # (112640 + 1024) x 2 <= 233472
    (128, 64, 120 * 1024, (1, "shared_memory")),
    (32, 16, 0, (32, "blocks")),
])
def test_occupancy_follows_sm90_limits(threads, registers, smem, expected):
  assert _sm90.occupancy(threads, registers, smem) == expected


def test_grid_covers_every_option_once_per_key():
  cases = gpu_compile.grid()
  keys = [c.key for c in cases]
  assert len(keys) == len(set(keys))
  attention = [dict(c.params) for c in cases if c.op == "attention"]
  assert {a["head_dim"] for a in attention} == set(gpu_compile.HEAD_DIMS)
  assert {a["mask"] for a in attention} == set(gpu_compile.MASK_KINDS)
  assert {(a["q_heads"], a["kv_heads"]) for a in attention} == set(gpu_compile.HEAD_LAYOUTS)
  assert {a["seq"] for a in attention} == set(gpu_compile.SEQ_LENS)
  conv = [dict(c.params) for c in cases if c.op == "conv2d"]
  assert {c["kernel"] for c in conv} == {1, 3, 5, 7}
  assert {c["activation"] for c in conv} == set(gpu_compile.ACTIVATIONS)
  assert any(c["residual"] for c in conv)
  assert any(c.op == "causal_conv1d" for c in cases)
  assert 0 < len(gpu_compile.grid(quick=True)) < len(cases) // 10


def _recorded():
  path = RESULTS / "gpu_compile_sm90.json"
  if not path.exists():
    pytest.skip(f"{path} not recorded yet: python3 scripts/gpu_compile.py writes it")
  return json.loads(path.read_text())


def test_recorded_table_is_of_the_current_defaults_and_nothing_spills():
  """The committed sm_90a table was compiled with today's default block sizes, and in it no
  kernel spills and every kernel keeps 2 blocks per SM resident."""
  record = _recorded()
  assert record["summary"]["errors"] == 0
  assert len(record["cases"]) == len(gpu_compile.grid()), "re-run the whole grid"
  for case in record["cases"]:
    assert gpu_compile.Case.from_record(case).key == case["key"]
    defaults = gpu_compile.default_block_sizes(gpu_compile.Case.from_record(case))
    assert case["block_sizes"] == defaults, (
        f"{case['key']}: the defaults changed since the table was compiled; "
        "re-run python3 scripts/gpu_compile.py")
    for program in case["programs"]:
      where = f"{case['key']} {program['name']}"
      assert program["spill_store_bytes"] == program["spill_load_bytes"] == 0, where
      assert program["blocks_per_sm"] >= 2, where


def test_sm90_compile_with_the_cuda_plugin(tmp_path):
  """A few real compiles for sm_90a: in this Python if it has the plugin, else .venv-gpu."""
  if _sm90.cuda_plugin() is not None:
    python = sys.executable
  elif GPU_PYTHON.exists():
    python = str(GPU_PYTHON)
  else:
    pytest.skip(f"no JAX CUDA plugin here and no {GPU_PYTHON}: {_sm90.INSTALL_HINT}")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([python, "-m", "bench", "gpu-compile", "--tiny", "--out",
                         str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  record = json.loads((tmp_path / "gpu_compile_sm90.json").read_text())
  names = {p["name"] for case in record["cases"] for p in case["programs"]}
  assert {"flash_attention_fwd", "flash_attention_dq", "flash_attention_dkv"} <= names
  assert any(name.startswith("conv_") for name in names)
  for case in record["cases"]:
    for program in case["programs"]:
      assert 0 < program["registers"] <= 255 and program["threads"] >= 32
      assert program["blocks_per_sm"] >= 1 and len(program["grid"]) == 3
