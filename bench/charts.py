"""README's benchmark charts, drawn from the JSON under bench/results/ as PNG files there.

    from pathlib import Path
    from bench import charts
    charts.update(Path("bench/results"))               # [(path, stale)]: draws, writes changed
    charts.update(Path("bench/results"), write=False)  # only says which are missing or stale

`python -m bench tables` calls `update` after rewriting README's tables, and
`python -m bench tables --check` fails when a chart is stale. Three charts, each drawn from the
results its README table reads:

  attention_tflops.png   attention TFLOP/s against sequence length, one line per path and mask
                         (attention_*.json: the sweep, the crossover and the CPU target points);
  time_to_accuracy.png   the peers' test accuracy against wall-clock seconds
                         (time_to_accuracy_*.json);
  conv_speedup.png       the fused conv's speed-up over XLA's convolution per layer, forward
                         and forward+backward (conv_*.json).

Every chart is drawn on a `matplotlib.figure.Figure` of its own, never through pyplot, so the
caller's matplotlib backend is left as it was. The PNG carries no timestamp nor software
version (`savefig(..., metadata=...)`), so drawing the same results twice gives the same bytes
(with the same matplotlib and FreeType), which is what lets `--check` compare them.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Callable

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter

__all__ = ["CHARTS", "attention_chart", "conv_chart", "render", "time_to_accuracy_chart",
           "update"]

DPI = 100           # pixels per inch: an 8-inch-wide chart is 800 px, about README's width
WIDTH_IN = 8.0      # inches
_METADATA = {"Software": None}  # PNG text chunks: none, so the bytes depend on the data only
_PEERS_ORDER = ("keras", "torch", "flax", "dlopt")
_PEER_NAMES = {"keras": "Keras", "torch": "PyTorch", "flax": "Flax"}
_MASK_STYLE = {False: "-", True: "--"}
_PLAIN = FuncFormatter(lambda value, _: f"{value:g}")  # 0.02, not 2x10^-2; 1024, not 1.02e3


def _minor_label(value: float, _) -> str:
  """A log axis' minor tick labelled at 2, 3 and 5 times a power of ten only."""
  mantissa = value / 10**math.floor(math.log10(value))
  return f"{value:g}" if round(mantissa, 6) in (2, 3, 5) else ""


def render(fig: Figure) -> bytes:
  """The PNG bytes of `fig` at `DPI`, with no timestamp or software version in them."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI, metadata=_METADATA)
  return buffer.getvalue()


# --- attention -----------------------------------------------------------------------------


def _attention_points(record: dict):
  """(panel key, record of one path at one shape) over every point an attention result has."""
  backend = record.get("device", {}).get("backend", "?")
  tokens = record.get("config", {}).get("tokens")
  targets = [entry[impl] for mask in ("full", "causal")
             for entry in [record.get("cpu_target", {}).get(mask) or {}]
             for impl in ("xla", "xla_chunked") if impl in entry]
  for source, points in (("sweep", record.get("sweep", [])),
                         ("batch 1", record.get("crossover", []) + targets)):
    for point in points:
      batch = f"batch x seq = {tokens}" if source == "sweep" and tokens else source
      yield (backend, point["dtype"], point["head_dim"], point["heads"],
             point.get("kv_heads", point["heads"]), batch), point


def _pow2_ticks(ax, values) -> None:
  """A base-2 log axis labelled at the powers of two in `values`' range, plain integers."""
  low, high = min(values), max(values)
  ax.set_xscale("log", base=2)
  ax.set_xticks([2**e for e in range(math.ceil(math.log2(low)), math.floor(math.log2(high)) + 1)])
  ax.xaxis.set_major_formatter(_PLAIN)
  ax.set_xticks(sorted(set(values)), minor=True)
  ax.xaxis.set_minor_formatter(NullFormatter())


def attention_chart(records: list[dict]) -> Figure | None:
  """TFLOP/s against sequence length: a row of panels per configuration, a line per path.

  Args:
    records: attention results (the JSON of `python -m bench attention`, one per backend).
      Points of the sweep, the crossover and the CPU target are drawn; points that failed
      are left out.

  Returns:
    The figure: a row per (backend, dtype, head dim, heads, batch rule), forward on the left,
    forward+backward on the right; color per path, solid full mask, dashed causal. None when
    the records hold no timed point.
  """
  panels: dict[tuple, dict[tuple, dict]] = {}
  for record in records:
    for key, point in _attention_points(record):
      line = panels.setdefault(key, {}).setdefault((point["impl"], point["causal"]), {})
      for part in ("fwd", "fwd_bwd"):
        if "tflops" in point.get(part, {}):
          line.setdefault(part, {})[point["seq"]] = point[part]["tflops"]
  panels = {key: lines for key, lines in panels.items()
            if any(line for line in lines.values())}
  if not panels:
    return None
  impls = sorted({impl for lines in panels.values() for impl, _ in lines})
  colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
  fig = Figure(figsize=(WIDTH_IN, 0.6 + 3.6 * len(panels)), layout="constrained")
  fig.suptitle("Attention throughput by sequence length (higher is better)")
  rows = fig.subfigures(len(panels), 1, squeeze=False)[:, 0]
  for subfig, ((backend, dtype, head_dim, heads, kv_heads, batch), lines) in zip(
      rows, sorted(panels.items(), key=lambda item: str(item[0]))):
    group = f", {kv_heads} kv heads" if kv_heads != heads else ""
    subfig.suptitle(f"{backend}, {dtype}, head dim {head_dim}, {heads} heads{group}, {batch}",
                    fontsize=10)
    for ax, part, what in zip(subfig.subplots(1, 2), ("fwd", "fwd_bwd"),
                              ("forward", "forward+backward")):
      seqs = []
      for (impl, causal), line in sorted(lines.items()):
        points = sorted(line.get(part, {}).items())
        if not points:
          continue
        seqs += [seq for seq, _ in points]
        ax.plot(*zip(*points), _MASK_STYLE[causal], marker="s" if causal else "o",
                markersize=4, color=colors[impl], label=f"{impl}{', causal' if causal else ''}")
      if seqs:
        _pow2_ticks(ax, seqs)
      ax.set_yscale("log")
      ax.yaxis.set_major_formatter(_PLAIN)
      ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
      ax.tick_params(axis="y", which="minor", labelsize=7)
      ax.set_title(what, fontsize=10)
      ax.set_xlabel("sequence length (tokens, log scale)")
      ax.set_ylabel("TFLOP/s (log scale)")
      ax.grid(True, which="both", alpha=0.3)
      ax.legend(fontsize=8)
  return fig


# --- time to accuracy ----------------------------------------------------------------------


def time_to_accuracy_chart(record: dict) -> Figure | None:
  """Test accuracy after each epoch against wall-clock seconds, a line per peer.

  Args:
    record: a time-to-accuracy result (`python -m bench time-to-accuracy`): `peers` maps a
      name to its `runs`, each with `per_epoch` entries of `wall_s` and `test_accuracy`.

  Returns:
    The figure, with the target accuracy as a dashed line; every run of a peer in its color,
    a skipped or failed peer named in the legend. None when no peer has an epoch.
  """
  peers = record.get("peers", {})
  names = sorted(peers, key=lambda n: (_PEERS_ORDER + (n,)).index(n))
  if not any(run.get("per_epoch") for p in peers.values() for run in p.get("runs", [])):
    return None
  fig = Figure(figsize=(WIDTH_IN, 4.5), layout="constrained")
  ax = fig.subplots()
  for i, name in enumerate(names):
    entry = peers[name]
    runs = [run["per_epoch"] for run in entry.get("runs", []) if run.get("per_epoch")]
    if not runs:
      why = "skipped" if entry.get("skipped") else "failed"
      ax.plot([], [], color=f"C{i}", label=f"{_PEER_NAMES.get(name, name)} ({why})")
      continue
    seconds = entry.get("seconds_to_target") or {}
    reached = (f"{seconds['median']:.0f} s to target" if "median" in seconds
               else "target not reached")
    for run, epochs in enumerate(runs):
      ax.plot([e["wall_s"] for e in epochs], [e["test_accuracy"] for e in epochs],
              marker="o", markersize=4, color=f"C{i}", alpha=1.0 if run == 0 else 0.4,
              label=f"{_PEER_NAMES.get(name, name)} ({reached})" if run == 0 else None)
  target = record.get("target")
  if target is not None:
    ax.axhline(target, color="0.4", linestyle="--", linewidth=1,
               label=f"target {target:.1%}")
  data = record.get("data", {})
  backend = record.get("device", {}).get("backend", "?")
  ax.set_title(f"Time to accuracy: {data.get('name', '?')}, {backend}, one point per epoch "
               "(compilation and evaluation included)", fontsize=10)
  ax.set_xlabel("wall-clock seconds from building the model")
  ax.set_ylabel("test accuracy (%)")
  ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
  ax.set_xlim(left=0)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  return fig


# --- conv ----------------------------------------------------------------------------------


def _speedup(pair: dict) -> float:
  """xla time / fused time of one layer part, or nan where either failed."""
  if all("median_s" in pair.get(impl, {}) for impl in ("fused", "xla")):
    return pair["xla"]["median_s"] / pair["fused"]["median_s"]
  return math.nan


def conv_chart(records: list[dict]) -> Figure | None:
  """The fused conv's speed-up over XLA per layer, forward and forward+backward bars.

  Args:
    records: conv results (`python -m bench conv`, one per backend): `records` holds a
      `layer`, `batch`, and `fwd` / `fwd_bwd` timings of `fused` and `xla` per entry; the
      whole-step entries (`step`) are left out.

  Returns:
    The figure: a panel per result, a pair of horizontal bars per (layer, batch) on a log
    axis, 1x marked (right of it the fused path is faster). None without layer entries.
  """
  panels = [(record, [e for e in record.get("records", []) if "fwd" in e])
            for record in records]
  panels = [(record, layers) for record, layers in panels if layers]
  if not panels:
    return None
  rows = sum(len(layers) for _, layers in panels)
  fig = Figure(figsize=(WIDTH_IN, 1.0 + 1.0 * len(panels) + 0.32 * rows), layout="constrained")
  axes = fig.subplots(len(panels), 1, squeeze=False,
                      height_ratios=[len(layers) + 2 for _, layers in panels])[:, 0]
  for ax, (record, layers) in zip(axes, panels):
    fused = next((e["fused_impl"] for e in layers if "fused_impl" in e), "fused")
    labels = [f"{e['layer']}, batch {e['batch']}" for e in layers]
    y = range(len(layers))
    for offset, part, what, color in ((-0.2, "fwd", "forward", "C0"),
                                      (0.2, "fwd_bwd", "forward+backward", "C1")):
      speedups = [_speedup(e[part]) for e in layers]
      # From 1x, so that a bar goes right where the fused path is faster and left where slower.
      bars = ax.barh([i + offset for i in y], [s - 1 for s in speedups], left=1, height=0.4,
                     color=color, label=what)
      ax.bar_label(bars, [f"{s:.2f}x" if s == s else "error" for s in speedups], padding=2,
                   fontsize=7)
    ax.axvline(1.0, color="0.2", linewidth=1)
    ax.set_xscale("log")
    low = min(min(_speedup(e[p]) for p in ("fwd", "fwd_bwd")) for e in layers)
    high = max(max(_speedup(e[p]) for p in ("fwd", "fwd_bwd")) for e in layers)
    ax.set_xlim(min(low, 1.0) / 1.6, max(high, 1.0) * 1.6)  # room for the value labels
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: _minor_label(v, _) and f"{v:g}x"))
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed-up: XLA time / {fused} time (log scale; right of 1x, {fused} "
                  "is faster)")
    backend = record.get("device", {}).get("backend", "?")
    dtype = next((e["dtype"] for e in layers if "dtype" in e), "")
    ax.set_title(f"Conv layers: {fused} vs XLA's convolution ({backend}, {dtype})",
                 fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8)
  return fig


# --- files ---------------------------------------------------------------------------------


def _loads(results: Path, pattern: str) -> list[dict]:
  return [json.loads(path.read_text()) for path in sorted(results.glob(pattern))]


def _time_to_accuracy(results: Path) -> Figure | None:
  """The CPU record (the one README's table reads), else the first other backend's."""
  records = _loads(results, "time_to_accuracy_cpu.json") or _loads(results,
                                                                   "time_to_accuracy_*.json")
  return time_to_accuracy_chart(records[0]) if records else None


CHARTS: dict[str, Callable[[Path], Figure | None]] = {
    "attention_tflops.png": lambda results: attention_chart(_loads(results, "attention_*.json")),
    "time_to_accuracy.png": _time_to_accuracy,
    "conv_speedup.png": lambda results: conv_chart(_loads(results, "conv_*.json")),
}
"""Each chart's file name under the results directory, and how it is drawn from there."""


def update(results: Path, *, write: bool = True) -> list[tuple[Path, bool]]:
  """Draws every chart whose results exist; writes those that differ from the file there.

  Args:
    results: the directory of result JSON files; the PNGs go there too.
    write: False: change nothing, only say which charts are missing or out of date.

  Returns:
    `(path, stale)` per chart drawn: stale means the file was missing or had other bytes
    (and, with `write`, has been rewritten). Charts without results are not listed.
  """
  status = []
  for name, draw in CHARTS.items():
    fig = draw(results) if results.is_dir() else None
    if fig is None:
      continue
    path, png = results / name, render(fig)
    stale = not path.exists() or path.read_bytes() != png
    if stale and write:
      path.write_bytes(png)
    status.append((path, stale))
  return status
