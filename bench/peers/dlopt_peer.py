"""dlopt: `dlopt.train.fit` on `dlopt.models.CNN(padding="VALID")`, as its users call it.

Throughput: `fit` over exactly `steps * batch_size` images for two epochs with plain Adam
at 1e-3 (the same update as the other peers); the epoch times are the ones `fit` records
in `result.history` ("epoch_seconds"). Time to accuracy: `fit` with its own `RECIPE`
below and the test set as `val_data`, so that `fit` evaluates it after every epoch.
`fit` runs its whole schedule (it has no stop-at-accuracy switch); the clock stops at the
first epoch that reaches the target, later epochs are not counted.
"""

from __future__ import annotations

import dataclasses
import time

import jax

from dlopt.models import CNN
from dlopt.optim import OptimizerConfig
from dlopt.train import FitConfig, fit

DESCRIPTION = ("`dlopt.train.fit` on `dlopt.models.CNN(features=(32, 64), dense_width=64, "
               "padding='VALID')`")
MODEL = CNN(num_classes=10, features=(32, 64), dense_width=64, padding="VALID")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """dlopt's time-to-accuracy recipe: every knob in one place.

  Attributes:
    epochs: passes over the training images (capped by --max-epochs).
    batch_size: images per step.
    optimizer: "adam" or "adamw" (`OptimizerConfig.name`).
    learning_rate: the schedule's peak learning rate.
    warmup_epochs: linear warmup from 0 to the peak, in epochs.
    final_lr_fraction: the cosine decay ends at this fraction of the peak.
    weight_decay: decoupled weight decay (biases not decayed); 0 for none.
  """

  epochs: int = 3
  batch_size: int = 128
  optimizer: str = "adam"
  learning_rate: float = 5e-3
  warmup_epochs: float = 0.3
  final_lr_fraction: float = 0.0
  weight_decay: float = 0.0

  def optimizer_config(self, steps_per_epoch: int) -> OptimizerConfig:
    """The `OptimizerConfig` of this recipe for `steps_per_epoch` train steps per epoch."""
    return OptimizerConfig(self.optimizer, self.learning_rate, schedule="warmup_cosine",
                           warmup_steps=round(self.warmup_epochs * steps_per_epoch),
                           final_lr_fraction=self.final_lr_fraction,
                           weight_decay=self.weight_decay)


RECIPE_SETTINGS = Recipe()  # change dlopt's time-to-accuracy recipe here
RECIPE = {**dataclasses.asdict(RECIPE_SETTINGS), "schedule": "warmup_cosine",
          "source": "dlopt's own recipe (bench/peers/dlopt_peer.py, Recipe)"}


def environment() -> dict:
  """The JAX backend and devices."""
  return {"backend": f"jax {jax.default_backend()}", "devices": [str(d) for d in jax.devices()]}


def _config(epochs: int, batch_size: int) -> FitConfig:
  return FitConfig(epochs=epochs, batch_size=batch_size, val_fraction=0.0, test_fraction=0.0,
                   progress=False, plot=False, seed=0)


def throughput(x, y, *, steps: int, batch_size: int) -> dict:
  """Two epochs of `fit` over `steps * batch_size` images; the second is the steady one."""
  if len(x) != steps * batch_size:
    raise ValueError(f"x must hold steps * batch_size = {steps * batch_size} images; "
                     f"got {len(x)}")
  start = time.perf_counter()
  result = fit(MODEL, (x, y), optimizer=OptimizerConfig("adam", 1e-3),
               config=_config(2, batch_size))
  seconds = [record["epoch_seconds"] for record in result.history]
  steps_run = [record["step"] for record in result.history]
  if steps_run != [steps, 2 * steps]:
    raise RuntimeError(f"fit ran steps {steps_run}; expected {[steps, 2 * steps]}")
  return {"epoch_seconds": seconds, "total_seconds": time.perf_counter() - start}


def time_to_accuracy(x, y, x_test, y_test, *, max_epochs: int, target: float | None) -> dict:
  """`fit` with `RECIPE_SETTINGS`; per-epoch wall times from its history.

  `fit` reports each epoch's seconds (training and the test-set evaluation); the wall
  time at the end of epoch e is the whole call's time less the seconds of the epochs
  after e: the set-up before the first epoch counts, and so does the little `fit` does
  after its last one (an upper bound, never an underestimate).
  """
  recipe = RECIPE_SETTINGS
  epochs = min(recipe.epochs, max_epochs)
  steps_per_epoch = len(x) // recipe.batch_size
  start = time.perf_counter()
  result = fit(MODEL, (x, y), val_data=(x_test, y_test),
               optimizer=recipe.optimizer_config(steps_per_epoch),
               config=_config(epochs, recipe.batch_size))
  total = time.perf_counter() - start
  seconds = [record["epoch_seconds"] for record in result.history]
  per_epoch = [{"epoch": record["epoch"], "wall_s": total - sum(seconds[i + 1:]),
                "test_accuracy": record["val_accuracy"]}
               for i, record in enumerate(result.history)]
  return {"per_epoch": per_epoch, "total_seconds": total, "epochs_run": epochs,
          "stops_at_target": False}
