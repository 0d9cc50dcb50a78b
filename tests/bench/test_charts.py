"""`bench.charts`: PNGs from small synthetic results, the same bytes twice, the backend kept."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.image
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is run from the repository root, not installed
  sys.path.insert(0, str(ROOT))

from bench import charts, tables  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _timing(seconds: float, tflops: float | None = None) -> dict:
  return {"median_s": seconds, **({"tflops": tflops} if tflops is not None else {})}


def _attention_point(impl: str, seq: int, causal: bool = False) -> dict:
  tflops = 0.01 * seq / 256 * (2 if impl == "xla_chunked" else 1)
  return {"impl": impl, "batch": 1, "seq": seq, "heads": 4, "kv_heads": 4, "head_dim": 64,
          "causal": causal, "dtype": "float32", "fwd": _timing(0.1, tflops),
          "fwd_bwd": _timing(0.3, tflops / 2)}


def _attention_record() -> dict:
  crossover = [_attention_point(impl, seq) for seq in (256, 512, 1024)
               for impl in ("xla", "xla_chunked")]
  crossover.append({**_attention_point("xla", 2048), "fwd_bwd": {"error": "OOM"}})
  target = {"causal": {impl: _attention_point(impl, 2048, causal=True)
                       for impl in ("xla", "xla_chunked")}}
  return {"device": {"backend": "cpu"}, "config": {"tokens": 4096}, "crossover": crossover,
          "cpu_target": target}


def _accuracy_record() -> dict:
  def peer(walls, accuracies, **extra):
    epochs = [{"epoch": i + 1, "wall_s": w, "test_accuracy": a}
              for i, (w, a) in enumerate(zip(walls, accuracies))]
    return {"runs": [{"per_epoch": epochs}], **extra}

  return {"device": {"backend": "cpu"}, "target": 0.99, "data": {"name": "mnist"},
          "peers": {"dlopt": peer([10, 20], [0.985, 0.992], seconds_to_target={"median": 20}),
                    "torch": peer([15, 30, 45], [0.97, 0.98, 0.985]),
                    "keras": {"skipped": "keras not installed", "runs": []}}}


def _conv_record() -> dict:
  def layer(name, fused_s, xla_s):
    pair = {"fused": _timing(fused_s), "xla": _timing(xla_s)}
    return {"layer": name, "batch": 32, "dtype": "float32", "fused_impl": "xla_implicit_gemm",
            "fwd": pair, "fwd_bwd": {"fused": {"error": "boom"}, "xla": _timing(xla_s)}}

  return {"device": {"backend": "cpu"},
          "records": [layer("conv_a", 0.5, 1.0), layer("conv_b", 2.0, 1.0),
                      {"layer": "cnn_step", "batch": 64, "step": {}}]}


def _write(results: Path) -> Path:
  results.mkdir(parents=True, exist_ok=True)
  for name, record in (("attention_cpu", _attention_record()),
                       ("time_to_accuracy_cpu", _accuracy_record()),
                       ("conv_cpu", _conv_record())):
    (results / f"{name}.json").write_text(json.dumps(record))
  return results


@pytest.mark.parametrize("name, draw, size", [
    ("attention", lambda: charts.attention_chart([_attention_record()]), (800, 420)),
    ("time_to_accuracy", lambda: charts.time_to_accuracy_chart(_accuracy_record()), (800, 450)),
    ("conv", lambda: charts.conv_chart([_conv_record()]), (800, 264)),
])
def test_each_chart_is_a_png_of_its_size_and_the_same_bytes_twice(tmp_path, name, draw, size):
  png = charts.render(draw())
  assert png.startswith(PNG_SIGNATURE)
  assert b"Software" not in png and b"tIME" not in png  # no version, no timestamp
  path = tmp_path / f"{name}.png"
  path.write_bytes(png)
  height, width, _ = matplotlib.image.imread(path).shape
  assert (width, height) == size
  assert charts.render(draw()) == png


def test_charts_name_what_they_show():
  fig = charts.attention_chart([_attention_record()])
  axes = fig.get_axes()
  assert [ax.get_title() for ax in axes] == ["forward", "forward+backward"]
  assert all(ax.get_xscale() == "log" and "sequence length" in ax.get_xlabel() for ax in axes)
  labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
  assert labels == ["xla", "xla, causal", "xla_chunked", "xla_chunked, causal"]
  # The failed forward+backward point at 2048 is left out; the forward one is drawn.
  assert [len(line.get_xdata()) for line in axes[0].get_lines()] == [4, 1, 3, 1]
  assert [len(line.get_xdata()) for line in axes[1].get_lines()] == [3, 1, 3, 1]
  (ax,) = charts.time_to_accuracy_chart(_accuracy_record()).get_axes()
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      "Keras (skipped)", "PyTorch (target not reached)", "dlopt (20 s to target)",
      "target 99.0%"]
  (ax,) = charts.conv_chart([_conv_record()]).get_axes()
  assert [t.get_text() for t in ax.get_yticklabels()] == ["conv_a, batch 32", "conv_b, batch 32"]
  assert "XLA time / xla_implicit_gemm time" in ax.get_xlabel() and ax.get_xscale() == "log"


def test_no_results_no_chart(tmp_path):
  assert charts.attention_chart([]) is None
  assert charts.conv_chart([{"records": [{"layer": "step", "step": {}}]}]) is None
  assert charts.time_to_accuracy_chart({"peers": {"keras": {"skipped": "no"}}}) is None
  assert charts.update(tmp_path / "none") == []
  assert charts.update(tmp_path) == [] and not list(tmp_path.iterdir())


def test_update_writes_once_and_tables_check_sees_stale_charts(tmp_path):
  results = _write(tmp_path / "results")
  readme = tmp_path / "README.md"
  readme.write_text("# x\n")
  args = argparse.Namespace(readme=readme, results=results, check=True)
  assert tables.run(args) == 1  # the charts are missing
  args.check = False
  assert tables.run(args) == 0
  names = sorted(path.name for path in results.glob("*.png"))
  assert names == sorted(charts.CHARTS)
  first = {name: (results / name).read_bytes() for name in names}
  assert all(not stale for _, stale in charts.update(results))
  assert {name: (results / name).read_bytes() for name in names} == first
  args.check = True
  assert tables.run(args) == 0
  record = _conv_record()
  record["records"][0]["fwd"]["xla"]["median_s"] = 3.0
  (results / "conv_cpu.json").write_text(json.dumps(record))
  assert tables.run(args) == 1
  assert [path.name for path, stale in charts.update(results, write=False) if stale] == [
      "conv_speedup.png"]


def test_drawing_leaves_the_backend_and_pyplot_alone(tmp_path):
  before = matplotlib.get_backend()
  charts.update(_write(tmp_path / "results"))
  assert matplotlib.get_backend() == before
  # In a fresh interpreter: drawing neither imports pyplot nor picks a backend.
  script = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {str(ROOT)!r})
      import matplotlib
      from pathlib import Path
      from bench import charts
      raw = dict.__getitem__(matplotlib.rcParams, "backend")
      assert len(charts.update(Path({str(tmp_path / 'fresh')!r}))) == 0
      import shutil
      shutil.copytree({str(tmp_path / 'results')!r}, {str(tmp_path / 'fresh')!r})
      assert len(charts.update(Path({str(tmp_path / 'fresh')!r}))) == 3
      assert "matplotlib.pyplot" not in sys.modules
      assert dict.__getitem__(matplotlib.rcParams, "backend") == raw == "svg"
  """)
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env={**os.environ, "MPLBACKEND": "svg"})
  assert done.returncode == 0, done.stderr[-2000:]
