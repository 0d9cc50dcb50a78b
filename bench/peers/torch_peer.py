"""PyTorch eager on the CPU, written as PyTorch's MNIST example writes it.

An `nn.Module` (NCHW), `torch.optim.Adam`, `F.cross_entropy` on logits, a `DataLoader`
over a `TensorDataset` with `shuffle=True`, and the default thread settings
(`torch.get_num_threads()` is recorded). The images are turned into NCHW tensors before
any clock starts, as torchvision hands them over.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

DESCRIPTION = "PyTorch eager `nn.Module` (NCHW), `torch.optim.Adam`, `DataLoader`; CPU"
RECIPE = {"optimizer": "torch.optim.Adam (defaults: lr 1e-3, eps 1e-8)", "learning_rate": 1e-3,
          "schedule": "constant", "batch_size": 128,
          "epochs": "until the target or --max-epochs",
          "source": "PyTorch's MNIST example loop with Adam at its default rate; "
                    "test batches of 1000"}
TEST_BATCH_SIZE = 1000  # as PyTorch's MNIST example evaluates


def environment() -> dict:
  """The device and thread counts torch runs with."""
  return {"backend": "torch cpu", "devices": ["cpu"], "threads": torch.get_num_threads(),
          "interop_threads": torch.get_num_interop_threads()}


class Net(nn.Module):
  """The peers' network in NCHW."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 32, 3)
    self.conv2 = nn.Conv2d(32, 64, 3)
    self.fc1 = nn.Linear(64 * 5 * 5, 64)
    self.fc2 = nn.Linear(64, 10)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # [B, 32, 13, 13]
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # [B, 64, 5, 5]
    x = torch.flatten(x, 1)
    return self.fc2(F.relu(self.fc1(x)))


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
  """NHWC float32 images and int labels as an NCHW `TensorDataset`."""
  images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  return TensorDataset(images, torch.from_numpy(y.astype(np.int64)))


def train_epoch(model: Net, optimizer, loader: DataLoader) -> float:
  """One pass over `loader`; returns the last batch's loss."""
  model.train()
  for images, labels in loader:
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
  return float(loss)


def test_accuracy(model: Net, dataset: TensorDataset) -> float:
  """Accuracy over `dataset`, in batches of `TEST_BATCH_SIZE`."""
  model.eval()
  correct = 0
  with torch.no_grad():
    for images, labels in DataLoader(dataset, batch_size=TEST_BATCH_SIZE):
      correct += int((model(images).argmax(1) == labels).sum())
  return correct / len(dataset)


def throughput(x, y, *, steps: int, batch_size: int) -> dict:
  """Two epochs of `steps` batches; the second is the steady one."""
  dataset = _tensors(x, y)
  start = time.perf_counter()
  torch.manual_seed(0)
  model = Net()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
  seconds = []
  for _ in range(2):
    epoch_start = time.perf_counter()
    train_epoch(model, optimizer, loader)
    seconds.append(time.perf_counter() - epoch_start)
  return {"epoch_seconds": seconds, "total_seconds": time.perf_counter() - start}


def time_to_accuracy(x, y, x_test, y_test, *, max_epochs: int, target: float | None) -> dict:
  """Train and test epoch by epoch until the test accuracy reaches `target`."""
  train, test = _tensors(x, y), _tensors(x_test, y_test)
  start = time.perf_counter()
  torch.manual_seed(0)
  model = Net()
  optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["learning_rate"])
  loader = DataLoader(train, batch_size=RECIPE["batch_size"], shuffle=True)
  per_epoch = []
  for epoch in range(1, max_epochs + 1):
    train_epoch(model, optimizer, loader)
    accuracy = test_accuracy(model, test)
    per_epoch.append({"epoch": epoch, "wall_s": time.perf_counter() - start,
                      "test_accuracy": accuracy})
    if target is not None and accuracy >= target:
      break
  return {"per_epoch": per_epoch, "total_seconds": time.perf_counter() - start}
