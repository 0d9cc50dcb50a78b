"""The Checkpointer saves what it was given at the moment of `save`, not later."""

import ctypes
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlopt.models import MLP
from dlopt.train import Checkpointer, checkpoint, create_train_state


def _state(widths=(8,), seed=0):
  return create_train_state(MLP(widths=widths, num_outputs=3), optax.adam(1e-3),
                            jnp.ones((2, 64)), seed=seed)


def test_save_snapshots_meta_and_arrays_before_returning(tmp_path):
  state = _state()
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


def _overwrite(state):
  """A donating step that changes every leaf (in place, where XLA may donate)."""
  return jax.tree.map(lambda x: x * 0 + 7 if jnp.issubdtype(x.dtype, jnp.floating) else x + 1,
                      state)


def _save_then_donate(tmp_path):
  """Saves a ~13 MB state and at once runs a compiled step that donates and overwrites it.

  The step is compiled before the save and the state is large enough for orbax to be still
  writing when the step runs, so a host copy that aliased the donated buffers would show.

  Returns:
    `(saved, restored, donated)`: the state's values at the save (numpy), the restored
    state, and whether the step could donate the saved state's buffers.
  """
  state = jax.tree.map(lambda x: x + 0, _state(widths=(1024, 1024)))  # buffers of its own
  step = jax.jit(_overwrite, donate_argnums=0)
  jax.block_until_ready(step(jax.tree.map(jnp.copy, state)))  # compile outside the save
  saved = jax.tree.map(np.array, state)
  best = {"params": jax.tree.map(np.array, state.params)}  # numpy leaves, as fit keeps them
  checkpointer = Checkpointer(tmp_path)
  checkpointer.save(state, {"epoch": 1}, best)
  watched = state.params["Dense_1"]["kernel"]
  new = step(state)
  jax.block_until_ready(new)
  donated = watched.is_deleted()
  assert not np.array_equal(new.params["Dense_1"]["kernel"], saved.params["Dense_1"]["kernel"])
  checkpointer.wait()
  restored, meta, restored_best = checkpointer.restore(_state(widths=(1024, 1024), seed=1),
                                                       best=best)
  checkpointer.close()
  assert meta == {"epoch": 1}
  jax.tree.map(np.testing.assert_array_equal, restored_best, best)
  del new  # alive until the write is over (the raw aliases below read its memory)
  return saved, restored, donated


def test_a_donating_step_right_after_save_does_not_reach_the_checkpoint(tmp_path):
  saved, restored, donated = _save_then_donate(tmp_path)
  assert int(restored.step) == int(saved.step)
  jax.tree.map(np.testing.assert_array_equal, restored.params, saved.params)
  jax.tree.map(np.testing.assert_array_equal, restored.opt_state, saved.opt_state)
  # On CPU orbax views the buffers it writes from; were they the state's own (no copy in
  # `save`), XLA would decline this donation and copy the state inside the step instead.
  assert donated


def test_the_check_above_sees_a_host_copy_that_aliases_without_holding(tmp_path, monkeypatch):
  # What the copy in `save` and the hold of orbax's host view guard against together: with
  # no copy, and orbax's host arrays replaced by raw aliases of the same memory (views that
  # do not hold it), the step donates and overwrites the buffers under orbax's write, and
  # the checkpoint no longer holds the values at the save.
  replica_slices = pytest.importorskip("orbax.checkpoint._src.serialization.replica_slices")
  if jax.default_backend() != "cpu" or not hasattr(replica_slices, "transfer_arrays_to_host"):
    pytest.skip("needs orbax's CPU host transfer (replica_slices.transfer_arrays_to_host)")
  transfer = replica_slices.transfer_arrays_to_host

  def raw(data):
    if not isinstance(data, np.ndarray) or data.nbytes == 0:
      return data
    memory = (ctypes.c_char * data.nbytes).from_address(data.ctypes.data)
    return np.frombuffer(memory, dtype=data.dtype).reshape(data.shape)

  def aliasing(*args, **kwargs):
    return [dataclasses.replace(slices, replica_slices=[
        dataclasses.replace(piece, unsliced_data=raw(piece.unsliced_data))
        for piece in slices.replica_slices]) for slices in transfer(*args, **kwargs)]

  monkeypatch.setattr(checkpoint, "_snapshot", lambda leaf: leaf)
  monkeypatch.setattr(replica_slices, "transfer_arrays_to_host", aliasing)
  saved, restored, donated = _save_then_donate(tmp_path)
  assert donated
  assert not np.array_equal(restored.params["Dense_1"]["kernel"],
                            saved.params["Dense_1"]["kernel"])
