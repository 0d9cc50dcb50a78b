"""Checkpoints through orbax-checkpoint: the state pytree plus a JSON record of the loop.

A checkpoint at step `s` holds `state` (the `TrainState`'s arrays, and the best parameters
so far when early stopping keeps them) and `meta` (epoch, position in the epoch, history,
early-stopping record). Orbax writes into a temporary directory and renames it when done,
so a run killed while saving leaves the previous checkpoint intact.

With several processes every process saves and restores (orbax writes each process's
shards, process 0 the metadata; the directory must be shared). Arrays are restored onto
the shardings of the template's arrays, so a checkpoint written on 8 devices or 2
processes resumes on 1, and the other way round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from dlopt.train.state import TrainState

__all__ = ["Checkpointer"]

_STATE_FIELDS = ("step", "params", "opt_state", "model_state", "rng", "ema_params")
_HOST_MEMORY_KINDS = ("pinned_host", "unpinned_host")


def _state_tree(state: TrainState, best: Any) -> dict:
  tree = {name: getattr(state, name) for name in _STATE_FIELDS}
  if state.ema_params is None:
    del tree["ema_params"]
  if best is not None:
    tree["best"] = best
  return tree


def _host_copy_is_a_view(leaf: Any) -> bool:
  """Whether orbax's copy of `leaf` to host memory would view `leaf`'s own buffers.

  It does for an array on CPU devices (their memory is the host's; `np.asarray` of a shard
  is zero-copy) or in a host memory kind; an array in a GPU's or TPU's memory is copied.
  """
  if not isinstance(leaf, jax.Array):
    return False
  sharding = leaf.sharding
  return (sharding.memory_kind in _HOST_MEMORY_KINDS
          or any(device.platform == "cpu" for device in sharding.device_set))


def _snapshot(leaf: Any) -> Any:
  """A copy of `leaf` where orbax's host copy would be a view of it, else `leaf` itself."""
  if not _host_copy_is_a_view(leaf):
    return leaf
  # Same sharding, a new buffer per shard: each process copies only its own shards.
  return jax.device_put(leaf, leaf.sharding, may_alias=False)


class Checkpointer:
  """Saves and restores `TrainState`s under one directory, keeping the last `keep_last_n`.

  Args:
    directory: where the numbered checkpoints live (created if missing).
    keep_last_n: how many of the newest checkpoints stay on disk.
  """

  def __init__(self, directory: str | Path, keep_last_n: int = 3):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep_last_n, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of the checkpoints on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, state: TrainState, meta: dict, best: Any = None) -> None:
    """Saves `state` (and `best`, a pytree) with the JSON-serializable `meta` at `state.step`.

    With several processes, all call it with the same values (each array may be sharded).
    """
    # Orbax writes both items in a background thread after `save` returns, while the loop
    # goes on mutating its records and donating the state's buffers. The records are
    # copied here. Of the arrays, orbax copies each addressable shard to host memory before
    # it returns (no device-host byte limit is set, so no transfer is left for later) and
    # writes from that copy; numpy leaves it deep-copies. From a GPU's or TPU's memory that
    # is a buffer of its own, so those arrays go as they are: no second state on the device.
    # On CPU it is a view of the array's own buffer. Handing that over uncopied works today
    # (the view holds the buffer, and XLA's CPU client, rather than donate it, copies it
    # inside the next step) but saves nothing: the state is doubled all the same, and the
    # time the copy takes moves from here into that step (bench/checkpoint_save.py). XLA's
    # source marks that fallback as one it may drop, so CPU arrays are copied here.
    meta = json.loads(json.dumps({**meta, "has_best": best is not None}))
    tree = jax.tree.map(_snapshot, _state_tree(state, best))
    args = ocp.args.Composite(state=ocp.args.StandardSave(tree),
                              meta=ocp.args.JsonSave(meta))
    self._manager.save(int(state.step), args=args, force=True)

  def restore(self, state: TrainState, best: Any = None, step: int | None = None
              ) -> tuple[TrainState, dict, Any]:
    """Restores the checkpoint at `step` (default: the latest) into the structure of `state`.

    Args:
      state: a freshly created state of the same model and optimizer (the template); its
        arrays' shardings are the restored arrays' (numpy leaves restore as numpy).
      best: a template for the best parameters, used when the checkpoint holds them.
      step: which checkpoint; None for the latest.

    Returns:
      `(state, meta, best)` as saved.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    meta = dict(self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    has_best = meta.pop("has_best")
    if has_best and best is None:
      raise ValueError(f"checkpoint {step} in {self.directory} holds best parameters; "
                       "pass a template for them as best=")
    template = _state_tree(state, best if has_best else None)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))
    tree = dict(restored.state)
    saved_best = tree.pop("best", None)
    return state.replace(**tree), meta, saved_best

  def wait(self) -> None:
    """Blocks until every pending (asynchronous) save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.close()
