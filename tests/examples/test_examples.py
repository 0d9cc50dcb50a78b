"""Every example trainer, as a user runs it: --help, a bad flag, and its --tiny smoke run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dlopt.data import fetch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["mlp_digits", "linear_regression", "resnet_fashion", "transformer_charlm",
            "compress", "lstm_timeseries"]
# The registry data set each example reads (None: bundled with a dependency).
NEEDS = {"resnet_fashion": "fashion_mnist", "transformer_charlm": "canterbury",
         "compress": "mnist", "lstm_timeseries": "ucr"}


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", EXAMPLES)
def test_help_and_bad_flags(name, capsys):
  example = _load(name)
  with pytest.raises(SystemExit) as exit_info:
    example.main(["--help"])
  assert exit_info.value.code == 0
  assert "--tiny" in capsys.readouterr().out
  with pytest.raises(SystemExit) as exit_info:
    example.main(["--epochs", "0"])
  assert exit_info.value.code == 2
  assert "--epochs must be an integer >= 1; got 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_tiny_run_writes_its_run_directory(name, tmp_path):
  needed = NEEDS.get(name)
  if needed and fetch.status(needed) != "valid":
    pytest.skip(f"needs `python -m dlopt.data fetch {needed}` (scripts/test.py runs it)")
  workdir = tmp_path / "run"
  assert _load(name).main(["--tiny", "--workdir", str(workdir), "--progress", "false"]) == 0
  summary = json.loads((workdir / "final_metrics.json").read_text())["summary"]
  assert summary
  assert list(workdir.rglob("metrics.jsonl")) and list(workdir.rglob("*.png"))


def test_linear_regression_rejects_bad_rates(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _load("linear_regression").main(["--sgd-lr", "-1"])
  assert exit_info.value.code == 2
  assert "--sgd-lr must be > 0; got -1.0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_mnist_cnn_on_fetched_sets_with_augmentation(dataset, tmp_path):
  if fetch.status(dataset) != "valid":
    pytest.skip(f"needs `python -m dlopt.data fetch {dataset}` (scripts/test.py runs it)")
  workdir = tmp_path / "run"
  argv = ["--tiny", "--dataset", dataset, "--augment", "--workdir", str(workdir),
          "--progress", "false"]
  assert _load("mnist_cnn").main(argv) == 0
  summary = json.loads((workdir / "final_metrics.json").read_text())["summary"]
  assert summary["dataset"] == dataset and summary["augment"] is True


def test_charlm_holds_out_spread_blocks_of_every_text():
  split_texts = _load("transformer_charlm").split_texts
  texts = {"a": "".join(chr(97 + i % 26) for i in range(10_000)), "b": "XYZ" * 3_000}
  parts = split_texts(texts, block=100, period=20)
  runs = {name: part.split("\n") for name, part in parts.items()}
  assert sum(len(run) for part in runs.values() for run in part) == 19_000   # all, once
  # Validation takes blocks 9, 29, ... and test blocks 19, 39, ... of each text.
  assert runs["val"] == [texts["a"][i * 100:(i + 1) * 100] for i in (9, 29, 49, 69, 89)] + [
      texts["b"][i * 100:(i + 1) * 100] for i in (9, 29, 49, 69, 89)]
  assert runs["test"] == [texts["a"][i * 100:(i + 1) * 100] for i in (19, 39, 59, 79, 99)] + [
      texts["b"][i * 100:(i + 1) * 100] for i in (19, 39, 59, 79)]
  assert runs["train"][0] == texts["a"][:900]            # adjacent train blocks stay one run


@pytest.mark.parametrize("length", [9, 20, 21, 130])
def test_charlm_context_windows_score_every_character_once_with_context(length):
  context_windows = _load("transformer_charlm").context_windows
  codes = np.arange(length)
  x, y, weights = context_windows(codes, 8)
  np.testing.assert_array_equal(y, x + 1)
  np.testing.assert_array_equal(np.sort(y[weights > 0]), np.arange(1, length))   # once each
  if len(x) > 1:
    assert np.argmax(weights[1:] > 0, axis=1).min() >= 4   # >= context // 2 before each
  with pytest.raises(ValueError, match="context=8"):
    context_windows(np.arange(8), 8)


def test_charlm_bits_per_char_is_the_mean_cross_entropy_in_bits():
  import jax
  import optax

  from dlopt.models import DecoderLM
  bits_per_char = _load("transformer_charlm").bits_per_char
  model = DecoderLM(vocab_size=7, num_layers=1, width=8, num_heads=2, max_len=12)
  codes = np.random.default_rng(0).integers(0, 7, 13).astype(np.int32)   # one window
  params = model.init(jax.random.key(0), codes[None, :12])["params"]
  logits = model.apply({"params": params}, codes[None, :12])
  nats = optax.softmax_cross_entropy_with_integer_labels(logits, codes[None, 1:]).mean()
  assert abs(bits_per_char(model, params, codes) - float(nats) / np.log(2)) < 1e-5
