"""README's benchmark tables, regenerated from the JSON under bench/results/.

    python -m bench tables                   # rewrite the tables in README.md
    python -m bench tables --check           # exit 1 if README.md or a chart is not up to date
    python -m bench tables --results DIR --readme PATH

Each table sits between two marker comments in README.md,
`<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`; only the text between them is
rewritten, so the rest of README stays as written, and running it twice changes nothing
the second time. Blocks: `results` (default trainer, fit vs a hand loop), `peers`
(throughput and time to accuracy of Keras, PyTorch, Flax and dlopt), `attention` and
`conv` (the CPU kernel benchmarks), `checkpoint-save` (step time and memory around a
checkpoint save). A result that is missing gives a line saying which command writes it.
The charts README shows under the tables (`bench.charts`) are redrawn into the results
directory at the same time.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bench import charts
from bench._env import RESULTS

ROOT = Path(__file__).resolve().parents[1]
_PEERS_ORDER = ("keras", "torch", "flax", "dlopt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench tables`."""
  parser.add_argument("--results", type=Path, default=RESULTS,
                      help="the directory of result JSON files (default bench/results)")
  parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                      help="the file whose marked blocks are rewritten (default README.md)")
  parser.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 if the file is not up to date")


def run(args: argparse.Namespace) -> int:
  """Rewrites the marked blocks of `args.readme` and the charts (or checks them)."""
  text = args.readme.read_text()
  new, names = regenerate(text, args.results)
  drawn = charts.update(args.results, write=not args.check)
  changed = [path.name for path, stale in drawn if stale]
  listed = f"charts: {len(drawn)} drawn, {'stale' if args.check else 'rewrote'}: " + (
      ", ".join(changed) or "none")
  if args.check:
    stale = new != text
    print(f"{args.readme}: {'out of date' if stale else 'up to date'} "
          f"(blocks: {', '.join(names) or 'none'}); {listed}")
    return int(stale or bool(changed))
  if new != text:
    args.readme.write_text(new)
  print(f"{args.readme}: {'rewrote' if new != text else 'unchanged'} "
        f"(blocks: {', '.join(names) or 'none'}); {listed}")
  return 0


def regenerate(text: str, results: Path) -> tuple[str, list[str]]:
  """`text` with every known marked block rewritten from `results`; and the blocks' names.

  Raises:
    ValueError: a start marker without its end marker, or an unknown block name.
  """
  names = []

  def replace(match: re.Match) -> str:
    name = match.group(1)
    if name not in BLOCKS:
      raise ValueError(f"unknown block {name!r} in a bench marker; known: {', '.join(BLOCKS)}")
    names.append(name)
    body = BLOCKS[name](results).strip("\n")
    return f"<!-- bench:{name}:start -->\n{body}\n<!-- bench:{name}:end -->"

  # Markers count only on lines of their own, so that prose may quote them.
  pattern = re.compile(r"^<!-- bench:([\w-]+):start -->$.*?^<!-- bench:\1:end -->$",
                       re.DOTALL | re.MULTILINE)
  new = pattern.sub(replace, text)
  for start in re.findall(r"^<!-- bench:([\w-]+):start -->$", text, re.MULTILINE):
    if not re.search(f"^<!-- bench:{re.escape(start)}:end -->$", text, re.MULTILINE):
      raise ValueError(f"README has <!-- bench:{start}:start --> without its "
                       f"<!-- bench:{start}:end -->")
  return new, names


# --- helpers -------------------------------------------------------------------------------


def _load(results: Path, name: str) -> dict | None:
  path = results / f"{name}.json"
  return json.loads(path.read_text()) if path.exists() else None


def _missing(name: str, command: str) -> str:
  return (f"_No result yet: `{command}` writes `bench/results/{name}.json`; "
          "`python -m bench tables` puts it here._")


def _median(value):
  """A timed quantity's median: the value itself in older records, or `value["median"]`."""
  return value["median"] if isinstance(value, dict) else value


def _range(value: dict | None, spec: str, unit: str = "") -> str:
  """`min-max` of a spread with more than one sample, else ''."""
  if not isinstance(value, dict) or len(value.get("samples", [])) < 2:
    return ""
  return f"{format(value['min'], spec)}-{format(value['max'], spec)}{unit}"


def _plural(count: int, word: str) -> str:
  return f"{count} {word}{'' if count == 1 else 's'}"


def _provenance(record: dict, extra: str = "", unit: str = "run") -> str:
  """One line: date, command, run count, machine, device and versions."""
  machine, versions = record["machine"], record["versions"]
  used = ", ".join(f"{name} {version}" for name, version in versions.items()
                   if version and name != "orbax-checkpoint")
  runs = record.get("runs")
  tiny = " **Smoke run (`--tiny`): not a measurement.**" if record.get("tiny") else ""
  return (f"Measured {record['date'][:10]} with `{record['command']}`"
          f"{f' ({_plural(runs, unit)})' if runs else ''}{extra}: {machine['cpu_count']} CPU cores "
          f"({machine['platform']}), JAX backend {record['device']['backend']}; "
          f"{used}.{tiny}")


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


# --- blocks --------------------------------------------------------------------------------


def results_block(results: Path) -> str:
  """The default trainer and fit-vs-hand-loop rows of README's Results table."""
  rows = ["| what | command | result |", "| --- | --- | --- |"]
  trainer = _load(results, "default_trainer")
  if trainer is None:
    rows.append("| default trainer | `python3 scripts/train.py` | "
                + _missing("default_trainer", "python -m bench default-trainer") + " |")
  else:
    summary, wall = trainer["summary"], trainer.get("wall_seconds_spread",
                                                    trainer["wall_seconds"])
    spread = _range(wall, ".0f", " s")
    flags = " ".join(trainer.get("flags") or [])
    rows.append(
        f"| default trainer, {trainer['data']} | `python3 scripts/train.py"
        f"{' ' + flags if flags else ''}` | test accuracy "
        f"**{summary['test_accuracy']:.1%}** (macro F1 {summary['test_macro_f1']:.3f}) after "
        f"{summary['epochs']} epochs (best epoch {trainer['best_epoch']} restored), "
        f"{summary['seconds']:.0f} s in `fit`, {_median(wall):.0f} s wall"
        f"{f' (median; {spread})' if spread else ''} (`{trainer['command']}`) |")
  loop = _load(results, "fit_throughput")
  if loop is None:
    rows.append("| `fit` loop vs a hand-written jitted loop, steps/s | | "
                + _missing("fit_throughput", "python -m bench fit-throughput") + " |")
  else:
    rates = loop.get("steps_per_second", {})
    ranges = {name: _range(rates.get(name), ".1f") for name in ("fit", "hand")}
    ranges = {name: f" ({text})" if text else "" for name, text in ranges.items()}
    rows.append(
        f"| `fit` loop vs a hand-written jitted loop, steps/s | `{loop['command']}` | "
        f"fit {loop['fit_steps_per_second']:.1f}{ranges['fit']} vs hand-written "
        f"{loop['hand_steps_per_second']:.1f}{ranges['hand']} steps/s: ratio "
        f"**{loop['fit_over_hand_throughput']:.3f}** (median of "
        f"{len(loop['hand_epoch_seconds'])} epochs each, interleaved runs) |")
  return "\n".join(rows)


def _recipe(recipe: dict) -> str:
  """A peer's time-to-accuracy recipe in a few words."""
  name = str(recipe.get("optimizer", "?")).split(" (")[0]
  parts = [f"{name} {recipe.get('learning_rate', 0):g}", str(recipe.get("schedule", ""))]
  if recipe.get("warmup_epochs"):
    parts[-1] += f" (warmup {recipe['warmup_epochs']:g} epoch)"
  if recipe.get("weight_decay"):
    parts.append(f"weight decay {recipe['weight_decay']:g}")
  parts.append(f"batch {recipe.get('batch_size', '?')}")
  if isinstance(recipe.get("epochs"), int):
    parts.append(f"{recipe['epochs']} epochs")
  return ", ".join(parts)


def _peer_rows(record: dict):
  peers = record["peers"]
  for name in sorted(peers, key=lambda n: (_PEERS_ORDER + (n,)).index(n)):
    yield name, peers[name], peers[name].get("skipped") or peers[name].get("error")


def _skipped_row(name: str, why: str) -> str:
  """A six-column row for a peer that was skipped or failed: the last line of why."""
  return f"| {name} | {_cell(why.strip().splitlines()[-1])} | | | | |"


def peers_block(results: Path) -> str:
  """The peers' throughput and time-to-accuracy tables."""
  parts = []
  throughput = _load(results, "peers_throughput_cpu")
  parts.append("**Training throughput** of one network (Keras' MNIST convnet: conv 32 - pool - "
               "conv 64 - pool - dense 64 - dense 10, VALID convs, Adam, batch 128) in "
               "Keras, PyTorch, plain Flax and dlopt, images/s:")
  if throughput is None:
    parts.append(_missing("peers_throughput_cpu", "python -m bench peers-throughput"))
  else:
    rows = ["| peer | what runs | images/s: median (min-max) | vs torch | vs dlopt | "
            "start-up s |", "| --- | --- | --- | --- | --- | --- |"]
    for name, entry, why in _peer_rows(throughput):
      if why:
        rows.append(_skipped_row(name, why))
        continue
      rate = entry["images_per_s"]
      ratios = [f"{entry[key]:.2f}x" if key in entry else "-" for key in ("vs_torch", "vs_dlopt")]
      spread = _range(rate, ".0f")
      rows.append(f"| {name} | {_cell(entry['description'])} | **{rate['median']:.0f}**"
                  f"{f' ({spread})' if spread else ''} | {' | '.join(ratios)} | "
                  f"{entry['startup_s']['median']:.1f} |")
    parts.append("\n".join(rows))
    parts.append(
        f"Each peer trains in its own process on the same {throughput['data']['images']:,} "
        f"{throughput['data']['name']} images: two epochs of {throughput['steps']} steps, the "
        "second timed; start-up is the whole run less two steady epochs (building, tracing, "
        "compiling). Rounds run every peer once, the order rotated each round. "
        + _provenance(throughput, unit="round"))
  accuracy = _load(results, "time_to_accuracy_cpu")
  parts.append("**Time to accuracy**: wall-clock seconds from building the model (data in "
               "memory) to a test accuracy at or above the target, compilation and the "
               "evaluation after every epoch included:")
  if accuracy is None:
    parts.append(_missing("time_to_accuracy_cpu", "python -m bench time-to-accuracy"))
  else:
    target = accuracy["target"]
    rows = [f"| peer | recipe | seconds to {target:.1%} | epochs | best test accuracy | "
            "test accuracy after each epoch (wall s) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, entry, why in _peer_rows(accuracy):
      if why:
        rows.append(_skipped_row(name, why))
        continue
      seconds = entry["seconds_to_target"]
      if seconds:
        spread = _range(seconds, ".0f")
        reached = f"**{seconds['median']:.1f}**{f' ({spread})' if spread else ''}"
      else:
        reached = f"not reached ({entry['total_seconds']['median']:.0f} s in all)"
      epochs = [e for e in entry["epochs_to_target"] if e is not None]
      history = ", ".join(f"{e['test_accuracy']:.2%} ({e['wall_s']:.0f})"
                          for e in entry["runs"][0]["per_epoch"])
      recipe = _recipe(entry["recipe"])
      if isinstance(entry["recipe"].get("epochs"), int) and (
          entry["recipe"]["epochs"] > accuracy["max_epochs"]):
        recipe += f" (capped at {accuracy['max_epochs']})"
      rows.append(f"| {name} | {_cell(recipe)} | {reached} | "
                  f"{epochs[0] if epochs else '-'} | {entry['best_accuracy']['max']:.2%} | "
                  f"{history} |")
    parts.append("\n".join(rows))
    data = accuracy["data"]
    parts.append(
        f"On {data['name']} ({data['train']:,} train, {data['test']:,} test images), at most "
        f"{_plural(accuracy['max_epochs'], 'epoch')}. Keras, PyTorch and Flax train as their tutorials "
        "do (Adam 1e-3, batch 128, constant rate) and stop at the target; dlopt runs its "
        "own recipe's schedule to the end, its clock stopped at the target. "
        + _provenance(accuracy))
  return "\n\n".join(parts)


def attention_block(results: Path) -> str:
  """The CPU target of the chunked attention path against the reference."""
  record = _load(results, "attention_cpu")
  if record is None or "cpu_target" not in record:
    return _missing("attention_cpu",
                    "python -m bench attention --quick --no-sweep --crossover --cpu-target")
  rows = ["| path | time | compiled memory |", "| --- | --- | --- |"]
  for mask in ("full", "causal"):
    entry = record["cpu_target"].get(mask)
    if not entry or "time_ratio" not in entry:
      continue
    suffix = ", causal" if mask == "causal" else ""
    ref, chunked = entry["xla"]["fwd_bwd"], entry["xla_chunked"]["fwd_bwd"]
    rows.append(f"| `xla` (reference){suffix} | {ref['median_s']:.1f} s | "
                f"{ref['memory_bytes'] / 2**20:,.0f} MiB |")
    rows.append(f"| `xla_chunked`{suffix} | {chunked['median_s']:.1f} s "
                f"({entry['time_ratio']:.2f}x) | {chunked['memory_bytes'] / 2**20:,.1f} MiB "
                f"(1/{1 / entry['memory_ratio']:.0f}) |")
  reps = record.get("config", {}).get("reps")
  return "\n".join(rows) + "\n\n" + _provenance(record, f", median of {reps} runs"
                                                if reps and not record.get("runs") else "")


def conv_block(results: Path) -> str:
  """The CPU conv layer table and the MNIST CNN's training step per conv_impl."""
  record = _load(results, "conv_cpu")
  if record is None:
    return _missing("conv_cpu", "python -m bench conv")
  fused = next((r.get("fused_impl") for r in record["records"] if "fused_impl" in r), "fused")
  rows = [f"| layer | batch | forward: {fused} / xla | fwd speedup | fwd+bwd: {fused} / xla | "
          "fwd+bwd speedup |", "| --- | --- | --- | --- | --- | --- |"]
  steps = []
  for entry in record["records"]:
    if "step" in entry:
      impls = list(entry["step"])
      times = " / ".join(f"{entry['step'][impl]['median_s'] * 1e3:.0f}"
                         if "median_s" in entry["step"][impl] else "error" for impl in impls)
      steps.append((impls, f"batch {entry['batch']}: {times} ms"))
      continue
    cells = [f"`{entry['layer']}`", str(entry["batch"])]
    for part in ("fwd", "fwd_bwd"):
      pair = entry[part]
      if all("median_s" in pair[k] for k in ("fused", "xla")):
        cells.append(f"{pair['fused']['median_s'] * 1e3:.1f} / "
                     f"{pair['xla']['median_s'] * 1e3:.1f} ms")
        cells.append(f"{pair['speedup']:.2f}x")
      else:
        cells += ["error", "-"]
    rows.append("| " + " | ".join(cells) + " |")
  text = "\n".join(rows)
  if steps:
    text += (f"\n\nThe MNIST CNN's whole training step (AdamW), `conv_impl=` "
             f"{' / '.join(steps[0][0])}: {'; '.join(line for _, line in steps)}.")
  reps = record.get("reps")
  return text + "\n\n" + _provenance(record, f", median of {reps} interleaved runs"
                                     if reps and not record.get("runs") else "")


def cpu_speed_block(results: Path) -> str:
  """Every attempt at the CNN's CPU train step, images/s and the ratio to plain Flax."""
  record = _load(results, "cpu_speed")
  if record is None:
    return _missing("cpu_speed", "python -m bench cpu-speed")
  rows = ["| variant | images/s (median) | range | vs plain Flax | kept | what it is |",
          "| --- | --- | --- | --- | --- | --- |"]
  for entry in record["variants"]:
    images = entry["images_per_s"]
    ratio = "" if entry.get("vs_flax") is None else f"{entry['vs_flax']:.2f}x"
    rows.append(f"| `{entry['variant']}` | {_median(images):,.0f} | "
                f"{_range(images, ',.0f')} | {ratio} | {'yes' if entry['kept'] else 'no'} | "
                f"{_cell(entry['note'])} |")
  return "\n".join(rows) + "\n\n" + _provenance(
      record, f", {record['steps_per_round']} steps per variant per round", unit="round")


def _kernel(name: str) -> str:
  """A program's kernel: its name without XLA's `__N` suffix for a second instance."""
  return re.sub(r"__\d+$", "", name)


def _by_kernel(record: dict | None) -> dict:
  """`{(kernel, dtype): [programs]}` over a gpu-compile record's cases."""
  groups = {}
  for case in (record or {}).get("cases", ()):
    for program in case.get("programs", ()):
      groups.setdefault((_kernel(program["name"]), case["dtype"]), []).append(
          {**program, "compile_seconds": case["compile_seconds"]})
  return groups


def _compile_stats(programs: list[dict]) -> dict:
  """Spilling count, worst spill, max registers, min blocks/SM, max compile s of programs."""
  return {"spilling": sum(bool(p["spill_store_bytes"] or p["spill_load_bytes"])
                          for p in programs),
          "spill": max(p["spill_store_bytes"] for p in programs),
          "registers": max(p["registers"] for p in programs),
          "blocks": min(p["blocks_per_sm"] for p in programs),
          "seconds": f"{max(p['compile_seconds'] for p in programs):.0f}"}


def gpu_compile_block(results: Path) -> str:
  """Registers, spills and blocks per SM of every Pallas GPU kernel for sm_90a, before/after."""
  after = _load(results, "gpu_compile_sm90")
  if after is None:
    return _missing("gpu_compile_sm90", "python3 scripts/gpu_compile.py")
  before = _by_kernel(_load(results, "gpu_compile_sm90_before"))
  rows = ["| kernel | dtype | spilling programs: before -> now | worst spill, bytes/thread: "
          "before -> now | registers (max) | blocks/SM (min) | compile s (max): before -> now |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
  for (kernel, dtype), programs in sorted(_by_kernel(after).items()):
    old = before.get((kernel, dtype))
    then = _compile_stats(old) if old else dict.fromkeys(_compile_stats(programs), "-")
    now = _compile_stats(programs)
    rows.append(f"| `{kernel}` | {dtype} | {then['spilling']}/{len(old or ())} -> "
                f"**{now['spilling']}/{len(programs)}** | {then['spill']} -> {now['spill']} | "
                f"{now['registers']} | {now['blocks']} | {then['seconds']} -> "
                f"{now['seconds']} |")
  summary = after["summary"]
  text = "\n".join(rows) + (
      f"\n\n{summary['cases']} compiles ({summary['programs']} kernel programs) for "
      f"`{after['target']}` (sm_90a), {summary['errors']} failed, "
      f"{summary['spilling_programs']} spilling, {summary['single_block_programs']} with "
      f"fewer than 2 blocks per SM; {summary['compile_seconds_total']:.0f} s of compiling. ")
  return text + _provenance(after, unit="run of the grid")


def checkpoint_save_block(results: Path) -> str:
  """Step time and memory around a checkpoint save: each way of copying the state, or not."""
  record = _load(results, "checkpoint_save")
  if record is None:
    return _missing("checkpoint_save", "python -m bench checkpoint-save")
  rows = ["| save | save call, ms | first step after, ms | save cost, ms | steady step, ms | "
          "steps donating while orbax writes | RSS rise in a save, MiB | peak RSS, MiB |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  names = {"device_copy": "every array copied on device (`Checkpointer.save` before)",
           "no_copy": "no copy (orbax's host copy only)",
           "checkpointer": "`Checkpointer.save` now (a copy where orbax's would be a view)"}

  def cell(value: dict, scale: float) -> str:
    value = {**value, **{k: value[k] * scale for k in ("min", "median", "max")}}
    spread = _range(value, ".0f")
    return f"{value['median']:.0f}{f' ({spread})' if spread else ''}"

  for name, entry in record["variants"].items():
    rows.append(
        f"| {names.get(name, name)} | {cell(entry['save_call_s'], 1e3)} | "
        f"{cell(entry['first_step_after_save_s'], 1e3)} | {entry['save_cost_s'] * 1e3:.0f} | "
        f"{cell(entry['steady_step_s'], 1e3)} | {entry['donated_during_write']} | "
        f"{cell(entry['rss_rise_during_save_mib'], 1)} | {cell(entry['peak_rss_mib'], 1)} |")
  config = record["config"]
  orbax = record["versions"].get("orbax-checkpoint")
  return "\n".join(rows) + (
      f"\n\n{record['model']}: {record['state_mib']:.0f} MiB of parameters and Adam moments, "
      f"batch {config['batch_size']}, the train step jitted with the state donated. Each way "
      f"runs in a fresh process per round: {config['steady_steps']} steady steps, then "
      f"{_plural(config['saves'], 'save')}, each followed by {config['steps_after_save']} "
      "steps while orbax writes and as many after; medians (min-max). Save cost: the save "
      "call plus what the steps during the write took over a steady step, per save. Steps "
      "donating: those of the steps while orbax writes that could donate the state's "
      "buffers (on CPU, XLA copies a buffer that orbax still views instead of donating it). "
      "RSS: the resident set's highest value during a save less its value before, and the "
      "process's peak. " + _provenance(record, f", with orbax-checkpoint {orbax}", unit="round"))


def remat_block(results: Path) -> str:
  """Compiled train-step memory and step time with and without `remat`, per model."""
  record = _load(results, "remat")
  if record is None:
    return _missing("remat", "python -m bench remat")
  rows = ["| model | variant | temporaries, MiB | vs plain | peak, MiB | step, ms | vs plain |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
  names = {"plain": "`remat=False` (what `fit` compiles)",
           "remat": "`remat=True`, XLA's default passes",
           "plain_keep_barriers": "`remat=False`, barriers kept",
           "remat_keep_barriers": "`remat=True`, barriers kept (what `fit` compiles)"}
  for model, entry in record["models"].items():
    for variant, data in entry["variants"].items():
      step = {**data["step_s"], **{k: data["step_s"][k] * 1e3 for k in ("min", "median", "max")}}
      spread = _range(step, ".1f")
      rows.append(f"| {model} | {names.get(variant, variant)} | "
                  f"{data['memory']['temp_mib']:,.1f} | {data['temp_vs_plain']:.2f}x | "
                  f"{data['memory']['peak_mib']:,.1f} | {step['median']:.1f}"
                  f"{f' ({spread})' if spread else ''} | {data['step_time_vs_plain']:.2f}x |")
  models = "; ".join(f"{name}: {_cell(entry['description'])}"
                     for name, entry in record["models"].items())
  agree = "agree" if record.get("first_step_losses_agree") else "**disagree**"
  return "\n".join(rows) + (
      f"\n\n{models}; Adam, dlopt's jitted train step with the state donated, compiled "
      "with `jax.jit(...).lower(...).compile()`; memory from XLA's `memory_analysis()` "
      "(temporaries: activations kept for the backward pass and working buffers; peak: "
      "arguments + outputs + temporaries - donated). \"Barriers kept\": compiled with "
      f"`{record['keep_barriers_options']}`: on the CPU, XLA removes the optimization "
      "barriers `jax.checkpoint` sets and then eliminates common subexpressions again, "
      "which merges the recomputation back into the forward pass, so `remat` alone saves "
      f"nothing there. The first step's losses of all variants {agree}. Step times: "
      f"medians (min-max) over rounds of {record['steps_per_round']} steps, the variants "
      "interleaved. " + _provenance(record, unit="round"))


BLOCKS = {"results": results_block, "peers": peers_block, "attention": attention_block,
          "conv": conv_block, "cpu-speed": cpu_speed_block, "gpu-compile": gpu_compile_block,
          "checkpoint-save": checkpoint_save_block,
          "remat": remat_block}
