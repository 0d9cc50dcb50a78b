"""Compile for Hopper without one: compile-only CUDA devices, and what ptxas says of a kernel.

    device = compile_only_device("h200")          # needs jax's CUDA plugin, not a GPU
    programs = inspect_compiled(fn, args, device)  # one dict per Pallas kernel program

JAX compiles for a GPU it does not have through a compile-only topology
(`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)`):
`jax.jit(fn).lower(...).compile()` then runs the whole XLA:GPU pipeline, the Pallas Triton
custom calls included, down to PTX. XLA's dump of the compile gives each kernel's launch
(grid, threads, dynamic shared memory, from the thunk sequence) and its PTX, which
`ptxas -v --gpu-name sm_90a` turns into registers, stack frame and spill bytes per thread.
The same inspection works on an attached GPU (`device=jax.devices()[0]`), where it checks
what the compile-only table predicted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["TARGETS", "SM90", "compile_only_device", "cuda_plugin", "inspect_compiled",
           "occupancy", "ptxas_path", "INSTALL_HINT"]

INSTALL_HINT = ("the GPU compile needs JAX's CUDA plugin and ptxas, which live in their own "
                "venv: run `python3 scripts/gpu_compile.py` (it creates .venv-gpu/ with "
                "jax[cuda12] at the installed jaxlib's version, a few GB, and runs "
                "`python -m bench gpu-compile` there)")

# The resources of one Hopper SM (sm_90: H100 and H200 alike), from CUDA's programming
# guide, table "Technical Specifications per Compute Capability".
SM90 = {
    "registers_per_sm": 65536,
    "registers_per_thread_max": 255,
    "register_allocation_unit": 256,  # registers, per warp
    "warp_schedulers": 4,  # the register file is split between them
    "threads_per_sm": 2048,
    "blocks_per_sm_max": 32,
    "shared_memory_per_sm": 233472,  # 228 KiB
    "shared_memory_reserved_per_block": 1024,
}

_DEVICE_INFO = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
runtime_version {{ major: 12 minor: 8 patch: 0 }}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
device_description_str: "{name}"
"""

# XLA GPU target configs (the text proto of `stream_executor::GpuTargetConfigProto`):
# the SXM parts, from NVIDIA's datasheets (memory and bandwidth differ; the SM is the same).
TARGETS = {
    "h100": _DEVICE_INFO.format(bandwidth=3352320000000, memory=84929347584,
                                name="NVIDIA H100 80GB HBM3"),
    "h200": _DEVICE_INFO.format(bandwidth=4800000000000, memory=150323855360,
                                name="NVIDIA H200"),
}

# The launch of one kernel in XLA's thunk sequence dump, e.g.
# `kCustomKernel [...] flash_attention_fwd grid: [8, 2, 8] threads: [128, 1, 1]  shared_memory: 98560 bytes`.
_THUNK = re.compile(r"kCustomKernel \[[^\]]*\] (?P<name>[\w.]+) grid: \[(?P<grid>[\d, ]+)\] "
                    r"threads: \[(?P<threads>[\d, ]+)\]\s+shared_memory: (?P<smem>\d+) bytes")
_ENTRY = re.compile(r"Compiling entry function '(?P<name>[\w.]+)'")
_FRAME = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
                    r"(?P<loads>\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (?P<registers>\d+) registers")


def cuda_plugin() -> str | None:
  """The name of the installed JAX CUDA plugin module (`xla_cuda12`/`xla_cuda13`), or None."""
  import importlib.util
  for name in ("xla_cuda13", "xla_cuda12"):
    try:
      if importlib.util.find_spec(f"jax_plugins.{name}") is not None:
        return name
    except ModuleNotFoundError:  # no jax_plugins package at all
      return None
  return None


def compile_only_device(target: str = "h200"):
  """A compile-only CUDA device for `target` ("h100" or "h200"); no GPU needed.

  Must run before JAX initializes its backends in this process (it sets the variables that
  let the CUDA plugin load without a driver, and keeps the default backend on the CPU).

  Raises:
    ValueError: for an unknown target.
    RuntimeError: when the CUDA plugin is not installed (the message says how).
  """
  if target not in TARGETS:
    raise ValueError(f"target must be one of {sorted(TARGETS)}; got {target!r}")
  if cuda_plugin() is None:
    raise RuntimeError(f"no JAX CUDA plugin in this Python ({sys.executable}): "
                       f"{INSTALL_HINT}")
  os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"  # no driver here to check against
  import jax
  from jax.experimental import topologies
  jax.config.update("jax_platforms", "cpu")
  topology = topologies.get_topology_desc(target, "cuda", target_config=TARGETS[target],
                                          topology="1x1x1")
  return topology.devices[0]


def ptxas_path() -> str:
  """The ptxas to inspect PTX with: $PTXAS, the one in the CUDA pip packages, or PATH's."""
  candidates = [os.environ.get("PTXAS")]
  try:
    import nvidia
    for root in map(Path, nvidia.__path__):
      candidates += [root / "cuda_nvcc" / "bin" / "ptxas", root / "cu13" / "bin" / "ptxas"]
  except ImportError:
    pass
  candidates.append(shutil.which("ptxas"))
  for candidate in candidates:
    if candidate and Path(candidate).is_file():
      return str(candidate)
  raise RuntimeError(f"no ptxas found (set PTXAS=/path/to/ptxas): {INSTALL_HINT}")


def occupancy(threads: int, registers: int, shared_memory: int) -> tuple[int, str]:
  """Resident blocks per SM of a kernel on sm_90, and what limits them.

  Args:
    threads: threads per block.
    registers: registers per thread (ptxas' "Used N registers").
    shared_memory: dynamic shared memory per block, bytes.

  Returns:
    `(blocks, limit)`, limit one of "threads", "registers", "shared_memory", "blocks".
  """
  warps = -(-threads // 32)
  unit = SM90["register_allocation_unit"]
  per_warp = -(-max(registers, 1) * 32 // unit) * unit
  warps_per_scheduler = SM90["registers_per_sm"] // SM90["warp_schedulers"] // per_warp
  by = {
      "blocks": SM90["blocks_per_sm_max"],
      "threads": SM90["threads_per_sm"] // (warps * 32),
      "registers": warps_per_scheduler * SM90["warp_schedulers"] // warps,
      "shared_memory": SM90["shared_memory_per_sm"]
                       // (shared_memory + SM90["shared_memory_reserved_per_block"]),
  }
  limit = min(("threads", "blocks", "shared_memory", "registers"), key=by.get)  # ties: first
  return by[limit], limit


def _launches(dump: Path) -> dict[str, dict]:
  """Kernel name -> its launch (grid, threads, dynamic shared memory) from the dump."""
  found = {}
  for path in dump.glob("*thunk_sequence.txt"):
    for match in _THUNK.finditer(path.read_text()):
      found[match["name"]] = {
          "grid": [int(n) for n in match["grid"].split(",")],
          "threads": int(match["threads"].split(",")[0]),
          "shared_memory_bytes": int(match["smem"]),
      }
  return found


def _ptxas_report(ptx: Path, ptxas: str) -> dict[str, dict]:
  """Entry name -> registers, stack and spills from `ptxas -v --gpu-name sm_90a`."""
  done = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", str(ptx), "-o", os.devnull],
                        capture_output=True, text=True, check=True)
  report, name = {}, None
  for line in done.stderr.splitlines():
    if entry := _ENTRY.search(line):
      name = entry["name"]
      report[name] = {}
    elif name and (frame := _FRAME.search(line)):
      report[name].update(stack_bytes=int(frame["stack"]),
                          spill_store_bytes=int(frame["stores"]),
                          spill_load_bytes=int(frame["loads"]))
    elif name and (used := _REGISTERS.search(line)):
      report[name]["registers"] = int(used["registers"])
  return report


def inspect_compiled(fn, args, device, names: tuple[str, ...], *, ptxas: str | None = None,
                     keep_dump: Path | None = None) -> tuple[list[dict], float]:
  """Compiles `jax.jit(fn)` for `device` and reports each kernel whose name starts with one
  of `names`.

  Args:
    fn: the function to compile.
    args: `jax.ShapeDtypeStruct`s of its arguments (their sharding is set to `device`).
    device: a CUDA device, compile-only or attached.
    names: kernel name prefixes to report (e.g. the Pallas calls' `name=`).
    ptxas: the ptxas binary; None finds one.
    keep_dump: keep XLA's dump there instead of in a temporary directory.

  Returns:
    `(programs, compile_seconds)`: one dict per kernel, sorted by name, with its grid,
    threads, warps, dynamic shared memory, registers, stack and spill bytes per thread and
    the resident blocks per SM that follow.
  """
  import time

  import jax
  sharding = jax.sharding.SingleDeviceSharding(device)
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args]
  ptxas = ptxas or ptxas_path()
  with tempfile.TemporaryDirectory(prefix="dlopt-sm90-") as scratch:
    dump = keep_dump or Path(scratch)
    start = time.perf_counter()
    jax.jit(fn).lower(*args).compile(compiler_options={"xla_dump_to": str(dump)})
    seconds = time.perf_counter() - start
    launches = _launches(dump)
    programs = []
    for ptx in sorted(dump.glob("*.ptx")):
      if not any(f".entry {name}" in ptx.read_text() for name in names):
        continue
      for name, report in _ptxas_report(ptx, ptxas).items():
        if not name.startswith(names) or name not in launches:
          continue
        launch = launches[name]
        blocks, limit = occupancy(launch["threads"], report["registers"],
                                  launch["shared_memory_bytes"])
        programs.append({"name": name, **launch, "warps": launch["threads"] // 32, **report,
                         "blocks_per_sm": blocks, "occupancy_limit": limit})
  return sorted(programs, key=lambda p: p["name"]), seconds
