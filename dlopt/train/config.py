"""`FitConfig`: every knob of the `fit` loop, validated on construction.

What is minimized is `dlopt.train.Objective` and how, the optimizer (`OptimizerConfig` or
any optax transformation): both are `fit`'s arguments beside the config.
"""

from __future__ import annotations

import dataclasses

__all__ = ["FitConfig"]

MONITORS = ("val_loss", "val_accuracy", "val_macro_f1")
PARALLEL_MODES = ("auto", "none", "pmap", "mesh", "fsdp")


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """How `fit` trains, evaluates, stops and saves.

  Attributes:
    epochs: passes over the training split.
    batch_size: examples per train step.
    eval_batch_size: examples per eval step (the last batch is padded, never dropped).
    seed: the one seed of the run: split, shuffling, init and dropout derive from it.
    val_fraction: share of the examples held out for validation when `fit` splits arrays.
    test_fraction: share held out for the final test when `fit` splits arrays.
    patience: stop after this many epochs without improvement of `monitor`; None: never.
    min_delta: the least change of `monitor` that counts as improvement.
    monitor: "val_loss" (minimized), "val_accuracy" or "val_macro_f1" (maximized).
    restore_best: at the end, return (and save) the parameters of the best epoch.
    checkpoint_every: also save every this many steps inside an epoch; None: epoch ends only.
    keep_last_n: checkpoints kept on disk.
    log_every: steps between metric flushes (progress bar, `on_metrics` callbacks,
      non-finite-loss checks) and between the processes' checks for a stop signal.
    progress: show a progress bar.
    plot: write `curves.png` (loss and accuracy per epoch) into the workdir.
    tensorboard: also write TensorBoard events (every step's and epoch's metrics, the
      configuration as hparams) into `<workdir>/tensorboard` (the `tensorboard` extra).
    parallel: how the steps use the devices of every process (`jax.devices()`):
      "none" (one device), "pmap" (`jax.pmap` per-device steps, gradients and batch-norm
      statistics averaged with `lax.pmean`), "mesh" (`jax.jit` over a device mesh, batches
      sharded along its `data` axis, parameters and optimizer state replicated), "fsdp"
      (as "mesh", with large parameters and their optimizer state sharded too) or "auto"
      ("mesh" when there is more than one device, else "none"). In every mode but "none",
      `batch_size` is the global batch and must divide by the device count.
  """

  epochs: int = 10
  batch_size: int = 64
  eval_batch_size: int = 500
  seed: int = 0
  val_fraction: float = 0.1
  test_fraction: float = 0.1
  patience: int | None = None
  min_delta: float = 0.0
  monitor: str = "val_loss"
  restore_best: bool = True
  checkpoint_every: int | None = None
  keep_last_n: int = 3
  log_every: int = 50
  progress: bool = True
  plot: bool = True
  tensorboard: bool = False
  parallel: str = dataclasses.field(default="auto", metadata={
      "help": "auto (mesh on several devices), none, pmap, mesh or fsdp"})

  def __post_init__(self):
    positive = ("epochs", "batch_size", "eval_batch_size", "keep_last_n", "log_every")
    for name in positive:
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"FitConfig.{name} must be an integer >= 1; got {value!r}")
    for name in ("patience", "checkpoint_every"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"FitConfig.{name} must be None or an integer >= 1; got {value!r}")
    for name in ("val_fraction", "test_fraction"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ValueError(f"FitConfig.{name} must be in [0, 1); got {value}")
    if self.val_fraction + self.test_fraction >= 1.0:
      raise ValueError("FitConfig.val_fraction + test_fraction must be < 1; got "
                       f"{self.val_fraction} + {self.test_fraction}")
    if self.monitor not in MONITORS:
      raise ValueError(f"FitConfig.monitor must be one of {', '.join(MONITORS)}; "
                       f"got {self.monitor!r}")
    if self.parallel not in PARALLEL_MODES:
      raise ValueError(f"FitConfig.parallel must be one of {', '.join(PARALLEL_MODES)}; "
                       f"got {self.parallel!r}")
    if self.min_delta < 0:
      raise ValueError(f"FitConfig.min_delta must be >= 0; got {self.min_delta}")

  @property
  def monitor_mode(self) -> str:
    """"min" for losses, "max" for accuracy-like metrics."""
    return "min" if self.monitor.endswith("loss") else "max"
