"""`fit` in 64-bit mode (`jax_enable_x64`, as scientific code often sets it).

A CNN whose convolutions run the Pallas kernel (interpret mode on the CPU) trains one short
epoch with the flag on, keeps every array of its state in the dtype it has without the
flag (float32 parameters, int32 step), and ends where the same run without the flag ends.
"""

import jax
import numpy as np

from dlopt.data import load_digits
from dlopt.models import CNN
from dlopt.train import FitConfig, fit

CONFIG = FitConfig(epochs=1, batch_size=32, progress=False, plot=False)


def _run():
  x, y = load_digits()
  model = CNN(features=(4,), dense_width=8, conv_impl="pallas")
  return fit(model, (x[:160], y[:160]), config=CONFIG)


def test_fit_with_x64_keeps_dtypes_and_matches_the_run_without(x64):
  assert jax.config.read("jax_enable_x64")
  wide = _run()
  jax.config.update("jax_enable_x64", False)  # the fixture restores the value it found
  narrow = _run()
  leaves = jax.tree.leaves(wide.state), jax.tree.leaves(narrow.state)
  assert [a.dtype for a in leaves[0]] == [a.dtype for a in leaves[1]]
  assert {str(a.dtype) for a in jax.tree.leaves(wide.state.params)} == {"float32"}
  assert wide.state.step.dtype == np.int32 and int(wide.state.step) == int(narrow.state.step)
  for a, b in zip(*leaves):
    # optax's bias correction is one float64 scalar under x64: ulps apart, no more.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  for key in ("train_loss", "val_loss", "val_accuracy"):
    np.testing.assert_allclose(wide.history[-1][key], narrow.history[-1][key], rtol=1e-5)
  assert np.isfinite(wide.test_metrics["loss"])
