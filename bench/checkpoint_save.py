"""Step time and memory around an asynchronous checkpoint save, three ways side by side:
every array copied on device before orbax gets it (`Checkpointer.save` before), no copy at
all (orbax's own host copy only), and `Checkpointer.save` now (a copy only of the arrays
whose host copy would be a view of their own buffers: on CPU all of them, on a GPU none).

An MLP (1024 inputs, hidden widths 2048 and 2048, 10 classes, float32; Adam: the parameters
and two moments, 72 MiB in all) trains on fixed random batches of 64 with dlopt's jitted
train step, which donates the state. Each variant runs in a Python process of its own, the
order rotating over `--runs` rounds, so that each has its own peak memory:

1. a warm-up (the compile) and `--steady-steps` steps, each timed to the end of its work;
2. `--saves` times: `save` (the time it blocks the loop), the next `--steps-after-save`
   steps while orbax writes in the background (and whether each could donate the state's
   buffers), `wait` (the rest of the write), then as many steps again with the write done.

Memory is the process's resident set: its peak (`getrusage` ru_maxrss) and, sampled every
millisecond by a thread, its highest value while a save is under way less its value just
before it. The workers set `MALLOC_MMAP_THRESHOLD_` so that buffers above 64 KiB come from
mmap and go back to the system when freed: the resident set then follows the live arrays
instead of what glibc's heap kept from the compile. Where the JAX device reports
`memory_stats()` (a GPU), its peak bytes in use are recorded too.

    python -m bench checkpoint-save           # writes bench/results/checkpoint_save.json
    python -m bench checkpoint-save --tiny    # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench._runner import spread, write_result

VARIANTS = {
    "device_copy": "every array copied on device (jax.tree.map(jnp.copy, ...)) before "
                   "orbax's save: Checkpointer.save before",
    "no_copy": "the arrays handed to orbax as they are: orbax's own host copy only",
    "checkpointer": "Checkpointer.save now: a copy (device_put, may_alias=False) of the "
                    "arrays whose host copy would be a view of them (on CPU, all), none of "
                    "the others",
}
_ROOT = Path(__file__).resolve().parents[1]
_MIB = 2**20
_OUTPUT_TAIL = 3000  # characters of a failed worker's output kept in the error


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench checkpoint-save` (besides --runs, --tiny, --out)."""
  parser.add_argument("--widths", type=int, nargs="+", default=None,
                      help="the MLP's hidden widths (default 2048 2048, tiny 64 64)")
  parser.add_argument("--input-dim", type=int, default=None,
                      help="input features (default 1024, tiny 32)")
  parser.add_argument("--batch-size", type=int, default=None, help="(default 64, tiny 8)")
  parser.add_argument("--steady-steps", type=int, default=None,
                      help="timed steps before the first save (default 15, tiny 3)")
  parser.add_argument("--steps-after-save", type=int, default=None,
                      help="timed steps after each save, and again after its write "
                           "(default 5, tiny 2)")
  parser.add_argument("--saves", type=int, default=None,
                      help="saves per process (default 3, tiny 1)")


def _config(args: argparse.Namespace) -> dict:
  tiny = args.tiny
  return {"widths": args.widths or ([64, 64] if tiny else [2048, 2048]),
          "input_dim": args.input_dim or (32 if tiny else 1024),
          "batch_size": args.batch_size or (8 if tiny else 64),
          "steady_steps": args.steady_steps or (3 if tiny else 15),
          "steps_after_save": args.steps_after_save or (2 if tiny else 5),
          "saves": args.saves or (1 if tiny else 3)}


# --- one variant, in its own process -------------------------------------------------------


class _RssSampler:
  """The resident set size, read from /proc/self/statm every `interval` s by a thread."""

  def __init__(self, interval: float = 1e-3):
    self._page = os.sysconf("SC_PAGE_SIZE")
    self._interval = interval
    self._file = open("/proc/self/statm", "rb")  # noqa: SIM115 - closed in stop()
    self._high = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True)

  def now(self) -> int:
    self._file.seek(0)
    return int(self._file.read().split()[1]) * self._page

  def _loop(self):
    while not self._stop.wait(self._interval):
      self._high = max(self._high, self.now())

  def start(self) -> None:
    self._high = self.now()
    self._thread.start()

  def stop(self) -> int:
    """Stops sampling; returns the highest value seen."""
    self._stop.set()
    self._thread.join()
    high = max(self._high, self.now())
    self._file.close()
    return high


def _peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _save_through_orbax(checkpointer, state, meta: dict, copy) -> None:
  """`Checkpointer.save` with `copy` applied to every leaf (its orbax manager, its layout)."""
  import jax
  import orbax.checkpoint as ocp

  from dlopt.train import checkpoint

  meta = json.loads(json.dumps({**meta, "has_best": False}))
  tree = jax.tree.map(copy, checkpoint._state_tree(state, None))
  args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
  checkpointer._manager.save(int(state.step), args=args, force=True)


def _saver(variant: str):
  """`save(checkpointer, state, meta)` of one variant."""
  import jax.numpy as jnp

  if variant == "device_copy":  # the code of Checkpointer.save before
    return lambda c, state, meta: _save_through_orbax(c, state, meta, jnp.copy)
  if variant == "no_copy":
    return lambda c, state, meta: _save_through_orbax(c, state, meta, lambda leaf: leaf)
  return lambda c, state, meta: c.save(state, meta)


def measure(variant: str, config: dict, directory: Path) -> dict:
  """Trains, saves and times one variant in this process; returns its raw samples."""
  import jax
  import numpy as np
  import optax

  from dlopt.models import MLP
  from dlopt.train import Checkpointer, Objective, create_train_state, make_train_step

  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
  rng = np.random.default_rng(0)
  batches = [(jax.device_put(rng.normal(size=(config["batch_size"], config["input_dim"]))
                             .astype(np.float32)),
              jax.device_put(rng.integers(0, 10, config["batch_size"]).astype(np.int32)))
             for _ in range(4)]
  model = MLP(widths=tuple(config["widths"]), num_outputs=10)
  state = create_train_state(model, optax.adam(1e-3), batches[0][0][:1], seed=0)
  arrays = [leaf for leaf in jax.tree.leaves(state) if isinstance(leaf, jax.Array)]
  state_bytes = sum(leaf.nbytes for leaf in arrays)
  parameters = sum(leaf.size for leaf in jax.tree.leaves(state.params))
  step = make_train_step(Objective("cross_entropy"))
  count = 0

  def timed_step():
    """One step, timed to the end of its work; and whether it donated the state."""
    nonlocal state, count
    watched = jax.tree.leaves(state.params)[0]
    start = time.perf_counter()
    state, metrics = step(state, batches[count % len(batches)])
    jax.block_until_ready((state, metrics))
    count += 1
    return time.perf_counter() - start, watched.is_deleted()

  start = time.perf_counter()
  for _ in range(2):
    timed_step()
  warmup_s = time.perf_counter() - start
  steady = [timed_step()[0] for _ in range(config["steady_steps"])]
  checkpointer = Checkpointer(directory, keep_last_n=2)
  save = _saver(variant)
  cycles = []
  for _ in range(config["saves"]):
    sampler = _RssSampler()
    before = sampler.now()
    head = np.array(jax.tree.leaves(state.params)[-1])  # a small leaf, to check the save
    sampler.start()
    start = time.perf_counter()
    save(checkpointer, state, {"step": int(state.step)})
    save_s = time.perf_counter() - start
    during = [timed_step() for _ in range(config["steps_after_save"])]
    start = time.perf_counter()
    checkpointer.wait()
    wait_s = time.perf_counter() - start
    high = sampler.stop()
    after = [timed_step() for _ in range(config["steps_after_save"])]
    cycles.append({"save_s": save_s, "wait_s": wait_s,
                   "steps_during_write_s": [s for s, _ in during],
                   "donated_during_write": [d for _, d in during],
                   "steps_after_write_s": [s for s, _ in after],
                   "donated_after_write": [d for _, d in after],
                   "rss_before_bytes": before, "rss_high_bytes": high})
  peak_rss = _peak_rss()
  stats = jax.devices()[0].memory_stats() or {}
  # The last checkpoint holds the state as it was when saved (checked on one leaf).
  restored, _, _ = checkpointer.restore(state)
  checkpointer.close()
  if not np.array_equal(np.asarray(jax.tree.leaves(restored.params)[-1]), head):
    raise AssertionError(f"{variant}: the checkpoint does not hold the values at its save")
  return {"variant": variant, "state_bytes": state_bytes, "parameters": parameters,
          "warmup_s": warmup_s, "steady_steps_s": steady, "cycles": cycles,
          "rss_before_first_save_bytes": cycles[0]["rss_before_bytes"],
          "peak_rss_bytes": peak_rss, "device_peak_bytes_in_use": stats.get("peak_bytes_in_use"),
          "steps": count}


def run_in_subprocess(variant: str, config: dict) -> dict:
  """`measure(variant, config)` in a fresh Python process; `{"error": ...}` if it fails."""
  env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
  with tempfile.TemporaryDirectory(prefix=f"bench-ckpt-{variant}-") as tmp:
    result = Path(tmp) / "result.json"
    done = subprocess.run([sys.executable, "-m", "bench.checkpoint_save", variant,
                           json.dumps(config), str(Path(tmp) / "checkpoints"), str(result)],
                          cwd=_ROOT, env=env, capture_output=True, text=True)
    if done.returncode == 0 and result.exists():
      return json.loads(result.read_text())
    return {"variant": variant, "error": f"exit code {done.returncode}: "
                                         f"{(done.stdout + done.stderr)[-_OUTPUT_TAIL:]}"}


# --- both, side by side --------------------------------------------------------------------


def _mib(values) -> dict:
  return spread(v / _MIB for v in values)


def summarize(records: list[dict]) -> dict:
  """One variant's processes (rounds) pooled: min/median/max of each quantity."""
  cycles = [c for r in records for c in r["cycles"]]
  during = [s for c in cycles for s in c["steps_during_write_s"]]
  donated = [d for c in cycles for d in c["donated_during_write"]]
  donated_after = [d for c in cycles for d in c["donated_after_write"]]
  summary = {
      "steady_step_s": spread(s for r in records for s in r["steady_steps_s"]),
      "save_call_s": spread(c["save_s"] for c in cycles),
      "first_step_after_save_s": spread(c["steps_during_write_s"][0] for c in cycles),
      "steps_during_write_s": spread(during),
      "wait_s": spread(c["wait_s"] for c in cycles),
      "steps_after_write_s": spread(s for c in cycles for s in c["steps_after_write_s"]),
      "donated_during_write": f"{sum(donated)}/{len(donated)}",
      "donated_after_write": f"{sum(donated_after)}/{len(donated_after)}",
      "peak_rss_mib": _mib(r["peak_rss_bytes"] for r in records),
      "rss_before_first_save_mib": _mib(r["rss_before_first_save_bytes"] for r in records),
      "rss_rise_during_save_mib": _mib(c["rss_high_bytes"] - c["rss_before_bytes"]
                                       for c in cycles),
      "warmup_s": spread(r["warmup_s"] for r in records),
  }
  device_peaks = [r["device_peak_bytes_in_use"] for r in records
                  if r["device_peak_bytes_in_use"] is not None]
  if device_peaks:
    summary["device_peak_mib"] = _mib(device_peaks)
  # A save costs the loop its blocking call plus what the steps during the write lose
  # against a steady step (per save, medians and means).
  steady = summary["steady_step_s"]["median"]
  summary["save_cost_s"] = (summary["save_call_s"]["median"]
                            + sum(s - steady for s in during) / len(cycles))
  return summary


def run(args: argparse.Namespace) -> int:
  """Alternates the variants, one fresh process each, over `args.runs` rounds."""
  config = _config(args)
  names = list(VARIANTS)
  raw = {name: [] for name in names}
  for round_index in range(args.runs):
    order = names[round_index % len(names):] + names[:round_index % len(names)]
    for name in order:
      record = run_in_subprocess(name, config)
      if "error" in record:
        print(f"{name}: {record['error']}", file=sys.stderr)
        return 1
      raw[name].append(record)
  first = raw[names[0]][0]
  variants = {name: {"description": VARIANTS[name], **summarize(raw[name])} for name in names}
  record = {
      "benchmark": "checkpoint_save",
      "model": (f"MLP(widths={tuple(config['widths'])}, num_outputs=10), "
                f"{config['input_dim']} float32 inputs, Adam"),
      "parameters": first["parameters"], "state_bytes": first["state_bytes"],
      "state_mib": first["state_bytes"] / _MIB, "config": config, "rounds": args.runs,
      "method": ("each variant in a fresh process per round, order rotating; steps "
                 "timed to the end of their work (block_until_ready); RSS sampled every "
                 "1 ms from /proc/self/statm, MALLOC_MMAP_THRESHOLD_=65536"),
      "variants": variants,
      "over_device_copy": {name: {
          key: variants[name][key]["median"] / variants["device_copy"][key]["median"]
          for key in ("save_call_s", "first_step_after_save_s", "peak_rss_mib")}
          for name in names if name != "device_copy"},
      "raw": raw,
  }
  path = write_result(args, "checkpoint_save", record)
  print(f"state {record['state_mib']:.1f} MiB; medians over {args.runs} round(s):")
  for name, entry in variants.items():
    print(f"  {name:<12} save call {entry['save_call_s']['median'] * 1e3:7.1f} ms   first "
          f"step after {entry['first_step_after_save_s']['median'] * 1e3:7.1f} ms   steady "
          f"{entry['steady_step_s']['median'] * 1e3:6.1f} ms   peak RSS "
          f"{entry['peak_rss_mib']['median']:7.1f} MiB   RSS rise in save "
          f"{entry['rss_rise_during_save_mib']['median']:6.1f} MiB   donated during write "
          f"{entry['donated_during_write']}   save cost {entry['save_cost_s'] * 1e3:6.1f} ms")
  print(f"wrote {path}")
  return 0


def main(argv: list[str]) -> int:
  """The worker: `python -m bench.checkpoint_save VARIANT CONFIG_JSON DIRECTORY RESULT_JSON`."""
  variant, config, directory, result = argv
  record = measure(variant, json.loads(config), Path(directory))
  Path(result).write_text(json.dumps(record))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
