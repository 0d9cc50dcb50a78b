"""The Checkpointer saves what it was given at the moment of `save`, not later."""

import jax.numpy as jnp
import numpy as np
import optax

from dlopt.models import MLP
from dlopt.train import Checkpointer, create_train_state


def test_save_snapshots_meta_and_arrays_before_returning(tmp_path):
  state = create_train_state(MLP(widths=(8,), num_outputs=3), optax.adam(1e-3), jnp.ones((2, 4)),
                             seed=0)
  checkpointer = Checkpointer(tmp_path, keep_last_n=2)
  meta = {"history": [{"epoch": 1}], "sums": {"loss": 1.0}}
  checkpointer.save(state, meta)
  meta["history"].append({"epoch": 2})  # the loop goes on while orbax writes in the background
  meta["sums"]["loss"] = 99.0
  checkpointer.wait()
  restored, saved_meta, best = checkpointer.restore(state)
  checkpointer.close()
  assert saved_meta == {"history": [{"epoch": 1}], "sums": {"loss": 1.0}}
  assert best is None
  np.testing.assert_array_equal(restored.params["Dense_0"]["kernel"],
                                state.params["Dense_0"]["kernel"])
