"""Plain Flax Linen and optax, the loop of Flax's MNIST example, no dlopt.

`nn.Conv(padding="VALID")`, `nn.max_pool`, `nn.Dense`; a `flax.training.train_state
.TrainState` with `optax.adam`; one `jax.jit` train step returning the loss and accuracy;
each epoch shuffles with a numpy permutation, slices batches on the host, and reads the
step metrics back once at its end. Test accuracy is computed by a jitted step over
batches of 1000.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

DESCRIPTION = ("hand-written Flax Linen module, `optax.adam`, `jax.jit` train step "
               "(Flax's MNIST example loop)")
RECIPE = {"optimizer": "optax.adam (defaults: eps 1e-8)", "learning_rate": 1e-3,
          "schedule": "constant", "batch_size": 128,
          "epochs": "until the target or --max-epochs",
          "source": "Flax's MNIST example loop with optax.adam(1e-3)"}
TEST_BATCH_SIZE = 1000


def environment() -> dict:
  """The JAX backend and devices."""
  return {"backend": f"jax {jax.default_backend()}", "devices": [str(d) for d in jax.devices()]}


class CNN(nn.Module):
  """The peers' network in Flax Linen (NHWC)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(features=32, kernel_size=(3, 3), padding="VALID")(x))
    x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))  # [B, 13, 13, 32]
    x = nn.relu(nn.Conv(features=64, kernel_size=(3, 3), padding="VALID")(x))
    x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))  # [B, 5, 5, 64]
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(features=64)(x))
    return nn.Dense(features=10)(x)


def create_train_state(rng, learning_rate: float) -> train_state.TrainState:
  """Initial parameters and the Adam state."""
  model = CNN()
  params = model.init(rng, jnp.ones([1, 28, 28, 1]))["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=optax.adam(learning_rate))


@jax.jit
def train_step(state, images, labels):
  """One Adam step on a batch; returns the new state, the loss and the accuracy."""

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state.apply_gradients(grads=grads), loss, accuracy


@jax.jit
def correct_count(state, images, labels):
  """How many of the batch's images the model classifies right."""
  logits = state.apply_fn({"params": state.params}, images)
  return jnp.sum(jnp.argmax(logits, -1) == labels)


def train_epoch(state, x, y, batch_size: int, rng: np.random.Generator):
  """One shuffled pass (the last partial batch dropped, as Flax's example does)."""
  steps = len(x) // batch_size
  perm = rng.permutation(len(x))[:steps * batch_size].reshape(steps, batch_size)
  metrics = []
  for indices in perm:
    state, loss, accuracy = train_step(state, x[indices], y[indices])
    metrics.append((loss, accuracy))
  metrics = jax.device_get(metrics)  # the epoch's only wait on the device
  return state, float(np.mean([loss for loss, _ in metrics]))


def test_accuracy(state, x, y) -> float:
  """Accuracy over `(x, y)` in batches of `TEST_BATCH_SIZE`."""
  correct = sum(int(correct_count(state, x[i:i + TEST_BATCH_SIZE], y[i:i + TEST_BATCH_SIZE]))
                for i in range(0, len(x), TEST_BATCH_SIZE))
  return correct / len(x)


def throughput(x, y, *, steps: int, batch_size: int) -> dict:
  """Two epochs of `steps` batches; the second is the steady one."""
  start = time.perf_counter()
  state = create_train_state(jax.random.key(0), 1e-3)
  rng = np.random.default_rng(0)
  seconds = []
  for _ in range(2):
    epoch_start = time.perf_counter()
    state, _ = train_epoch(state, x, y, batch_size, rng)
    seconds.append(time.perf_counter() - epoch_start)
  return {"epoch_seconds": seconds, "total_seconds": time.perf_counter() - start}


def time_to_accuracy(x, y, x_test, y_test, *, max_epochs: int, target: float | None) -> dict:
  """Train and test epoch by epoch until the test accuracy reaches `target`."""
  start = time.perf_counter()
  state = create_train_state(jax.random.key(0), RECIPE["learning_rate"])
  rng = np.random.default_rng(0)
  per_epoch = []
  for epoch in range(1, max_epochs + 1):
    state, _ = train_epoch(state, x, y, RECIPE["batch_size"], rng)
    accuracy = test_accuracy(state, x_test, y_test)
    per_epoch.append({"epoch": epoch, "wall_s": time.perf_counter() - start,
                      "test_accuracy": accuracy})
    if target is not None and accuracy >= target:
      break
  return {"per_epoch": per_epoch, "total_seconds": time.perf_counter() - start}
