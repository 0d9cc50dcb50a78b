"""`dlopt.models.summary`: layers named, parameters that add up, FLOPs that scale with batch."""

import doctest
import importlib
import re

import jax
import jax.numpy as jnp
import pytest

from dlopt import models

summary_module = importlib.import_module("dlopt.models.summary")


def _total_flops(text: str) -> float:
  match = re.search(r"; ([\d.]+) ([KMGTP]?) ?FLOPs per call", text)
  assert match, text
  return float(match.group(1)) * 1000.0 ** " KMGTP".index(match.group(2) or " ")


def _total_params(text: str) -> int:
  match = re.search(r"total: ([\d,]+) params", text)
  assert match, text
  return int(match.group(1).replace(",", ""))


CASES = {
    "mlp": (models.MLP(widths=(32, 16), num_outputs=10, dropout_rate=0.5), (8, 8),
            ["Dense_0", "Dense_1", "Dense_2", "Dropout_0"]),
    "cnn": (models.CNN(features=(8, 16), dense_width=32), (28, 28, 1),
            ["Conv_0", "Conv_1", "FusedConv", "Dense_0", "Dense_1"]),
}


@pytest.mark.parametrize("name", CASES)
def test_summary_names_layers_counts_params_and_flops(name):
  model, shape, layers = CASES[name]
  x = jnp.ones((2, *shape))
  text = models.summary(model, x)
  params = model.init(jax.random.key(0), x, train=False)["params"]
  assert _total_params(text) == models.count_params(params)
  rows = text.splitlines()
  assert rows[0] == f"{type(model).__name__} on float32[2,{','.join(map(str, shape))}] " \
                    "(train=False)"
  assert rows[1].split() == ["path", "module", "output", "params", "FLOPs"]
  body = [row.split() for row in rows[3:-1]]
  named = {cells[0] for cells in body} | {cells[1] for cells in body}  # paths and types
  assert set(layers) <= named, (layers, named)
  # The per-layer counts add up to the total.
  assert sum(int(cells[3].replace(",", "")) for cells in body) == _total_params(text)
  assert body[0][:2] == ["(model)", type(model).__name__]
  assert body[-1][2] == "float32[2,10]"
  flops = _total_flops(text)
  assert flops > 0
  doubled = _total_flops(models.summary(model, jnp.ones((4, *shape))))
  assert doubled / flops == pytest.approx(2.0, rel=0.05)


def test_summary_of_a_model_with_two_inputs_and_batch_stats():
  model = models.RecurrentClassifier(num_classes=3, hidden_size=8)
  x, lengths = jnp.ones((2, 5, 4)), jnp.array([5, 3])
  text = models.summary(model, x, lengths)
  assert text.splitlines()[0].startswith("RecurrentClassifier on float32[2,5,4], int32[2]")
  params = model.init(jax.random.key(0), x, lengths, train=False)["params"]
  assert _total_params(text) == models.count_params(params)
  text = models.summary(models.ResidualCNN(norm="batch"), jnp.ones((1, 8, 8, 1)))
  assert "batch_stats" in text.splitlines()[1] and " batch_stats; " in text


def test_summary_depth_keeps_the_total():
  model, shape, _ = CASES["cnn"]
  x = jnp.ones((1, *shape))
  shallow = models.summary(model, x, depth=0)
  assert len(shallow.splitlines()) == 5  # title, header, rule, the model, total
  assert _total_params(shallow) == _total_params(models.summary(model, x))


def test_summary_needs_an_input():
  with pytest.raises(ValueError, match="needs at least one sample input"):
    models.summary(models.MLP())


def test_doctests():
  assert doctest.testmod(summary_module, raise_on_error=False).failed == 0


def test_run_fit_takes_one_example_of_each_form_of_data():
  from dlopt import runner
  from dlopt.data import BatchIterator

  x, lengths, y = jnp.ones((6, 5, 4)), jnp.arange(6), jnp.zeros(6, jnp.int32)
  shapes = lambda inputs: [leaf.shape for leaf in inputs]  # noqa: E731
  assert shapes(runner._sample_inputs((x, y))) == [(1, 5, 4)]
  assert shapes(runner._sample_inputs(((x, lengths), y))) == [(1, 5, 4), (1,)]
  assert shapes(runner._sample_inputs([(x[:3], y[:3]), (x[3:], y[3:])])) == [(1, 5, 4)]
  batches = BatchIterator(((x, lengths), y), batch_size=2, seed=0)
  assert shapes(runner._sample_inputs(batches)) == [(1, 5, 4), (1,)]
