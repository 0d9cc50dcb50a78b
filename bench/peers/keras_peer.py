"""Keras 3 on its JAX backend, written as Keras' MNIST convnet example writes it.

`Sequential` + `compile(optimizer="adam", loss="sparse_categorical_crossentropy",
metrics=["accuracy"])` + `fit(batch_size=128)`. The last layer carries the softmax, as in
Keras' example, because the string loss expects probabilities; the network is otherwise
the peers' one. Epoch times come from a callback's clock around each epoch.
"""

from __future__ import annotations

import os
import time

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported

import jax  # noqa: E402
import keras  # noqa: E402

DESCRIPTION = ("Keras 3 `Sequential`, `compile('adam', 'sparse_categorical_crossentropy', "
               "metrics=['accuracy'])`, `fit`; JAX backend")
RECIPE = {"optimizer": "adam (Keras defaults: lr 1e-3, eps 1e-7)", "learning_rate": 1e-3,
          "schedule": "constant", "batch_size": 128,
          "epochs": "until the target (a callback stops fit) or --max-epochs",
          "source": "Keras' MNIST convnet example, with its optimizer='adam'"}


def environment() -> dict:
  """The backend and devices Keras trains on."""
  return {"backend": f"keras {keras.backend.backend()}",
          "devices": [str(d) for d in jax.devices()]}


def build_model() -> keras.Model:
  """The peers' network as a Keras `Sequential`, compiled the way the example does."""
  model = keras.Sequential([
      keras.Input(shape=(28, 28, 1)),
      keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
      keras.layers.MaxPooling2D(pool_size=(2, 2)),
      keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
      keras.layers.MaxPooling2D(pool_size=(2, 2)),
      keras.layers.Flatten(),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(10, activation="softmax"),
  ])
  model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
  return model


class EpochClock(keras.callbacks.Callback):
  """Records each epoch's seconds, its wall time since `start` and its validation accuracy;
  stops training once that accuracy reaches `target`."""

  def __init__(self, start: float, target: float | None = None):
    super().__init__()
    self.start, self.target = start, target
    self.seconds, self.per_epoch = [], []

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch_start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    now = time.perf_counter()
    self.seconds.append(now - self.epoch_start)
    if logs and "val_accuracy" in logs:
      accuracy = float(logs["val_accuracy"])
      self.per_epoch.append({"epoch": epoch + 1, "wall_s": now - self.start,
                             "test_accuracy": accuracy})
      if self.target is not None and accuracy >= self.target:
        self.model.stop_training = True


def throughput(x, y, *, steps: int, batch_size: int) -> dict:
  """Two epochs of `steps` batches in one `fit`; the second is the steady one."""
  start = time.perf_counter()
  keras.utils.set_random_seed(0)
  model = build_model()
  clock = EpochClock(start)
  model.fit(x, y, batch_size=batch_size, epochs=2, verbose=0, callbacks=[clock])
  return {"epoch_seconds": clock.seconds, "total_seconds": time.perf_counter() - start}


def time_to_accuracy(x, y, x_test, y_test, *, max_epochs: int, target: float | None) -> dict:
  """`fit` with the test set as validation data until its accuracy reaches `target`."""
  start = time.perf_counter()
  keras.utils.set_random_seed(0)
  model = build_model()
  clock = EpochClock(start, target)
  model.fit(x, y, batch_size=RECIPE["batch_size"], epochs=max_epochs, verbose=0,
            validation_data=(x_test, y_test), callbacks=[clock])
  return {"per_epoch": clock.per_epoch, "total_seconds": time.perf_counter() - start}
