"""Fixtures shared by every test folder."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def x64():
  """`jax_enable_x64` on for one test, as scientific code sets it, and put back after.

  The flag is process-global and each xdist worker runs many tests in one process, so the
  previous value is restored whatever the test does.
  """
  before = jax.config.read("jax_enable_x64")
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", before)
