"""Timing of one jitted function: compile time apart, warm-up, repeated runs, memory."""

from __future__ import annotations

import statistics
import time

import jax

__all__ = ["compare", "measure"]


def measure(fn, args, reps: int) -> dict:
  """Compiles `jax.jit(fn)` on `args` and times it: compile apart, one warm-up, `reps` runs."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  memory_bytes = None if memory is None else int(memory.temp_size_in_bytes
                                                 + memory.output_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return {"compile_s": round(compile_s, 3), "median_s": statistics.median(times),
          "min_s": min(times), "max_s": max(times), "reps": reps,
          "memory_bytes": memory_bytes}


def compare(fns: dict, args, reps: int) -> dict:
  """Times several jitted functions on the same `args`, interleaved run by run.

  Interleaving puts each path under the same machine noise, so their ratios hold even
  where absolute times drift. Returns `{name: measure-like dict}`; a path that fails to
  compile or run gets `{"error": ...}` instead.
  """
  compiled, results = {}, {}
  for name, fn in fns.items():
    try:
      start = time.perf_counter()
      compiled[name] = jax.jit(fn).lower(*args).compile()
      memory = compiled[name].memory_analysis()
      results[name] = {
          "compile_s": round(time.perf_counter() - start, 3), "reps": reps,
          "memory_bytes": None if memory is None else int(memory.temp_size_in_bytes
                                                          + memory.output_size_in_bytes)}
      jax.block_until_ready(compiled[name](*args))
    except Exception as error:  # noqa: BLE001 - an unsupported shape is a result
      compiled.pop(name, None)
      results[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
  times = {name: [] for name in compiled}
  order = list(compiled)
  for rep in range(reps):
    # Rotate the order each round: whichever path runs right after another pays for the
    # caches that one left behind, so no path should always follow the same one.
    for name in order[rep % len(order):] + order[:rep % len(order)]:
      start = time.perf_counter()
      jax.block_until_ready(compiled[name](*args))
      times[name].append(time.perf_counter() - start)
  for name, samples in times.items():
    results[name].update(median_s=statistics.median(samples), min_s=min(samples),
                         max_s=max(samples))
  return results
