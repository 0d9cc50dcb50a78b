"""Runs the examples in the module docstrings of dlopt.data."""

import doctest
import importlib

import pytest

MODULES = [
    "dlopt.data",
    "dlopt.data.batching",
    "dlopt.data.datasets",
    "dlopt.data.normalize",
    "dlopt.data.splits",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0
