"""The peers: one network trained by Keras, PyTorch, plain Flax and dlopt, side by side.

The network is Keras' MNIST convnet: Conv2D(32, 3x3, relu, VALID) -> MaxPool 2x2 ->
Conv2D(64, 3x3, relu, VALID) -> MaxPool 2x2 -> Flatten -> Dense(64, relu) -> Dense(10),
trained with Adam on sparse categorical cross-entropy, 28x28x1 float32 inputs in [0, 1],
batch 128. Each peer module writes it the way that framework's users do:

- `keras_peer`: a Keras 3 `Sequential`, `compile("adam", "sparse_categorical_crossentropy",
  metrics=["accuracy"])` and `fit`, on the JAX backend;
- `torch_peer`: a PyTorch eager `nn.Module` (NCHW), `torch.optim.Adam`, a `DataLoader`
  over a `TensorDataset`, on the CPU with the default thread settings;
- `flax_peer`: a hand-written Flax Linen module and an optax.adam train step under
  `jax.jit`, the loop of Flax's MNIST example (no dlopt);
- `dlopt_peer`: `dlopt.train.fit` on `dlopt.models.CNN(padding="VALID")`.

Every peer module has `DESCRIPTION`, `RECIPE` (what its time-to-accuracy run uses),
`environment()`, `throughput(x, y, *, steps, batch_size)` and
`time_to_accuracy(x, y, x_test, y_test, *, max_epochs, target)`. They run one per
process (`python -m bench.peers._worker`), so that no framework's thread pools or caches
touch another's; this package's `__init__` imports none of them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["PEERS", "Peer", "missing", "run_in_subprocess"]

_ROOT = Path(__file__).resolve().parents[2]
_OUTPUT_TAIL = 3000  # characters of a failed worker's output kept in the result


@dataclasses.dataclass(frozen=True)
class Peer:
  """One framework's entry: its module here and the distributions it needs."""

  module: str
  requires: tuple[str, ...]


PEERS = {
    "keras": Peer("bench.peers.keras_peer", ("keras", "jax")),
    "torch": Peer("bench.peers.torch_peer", ("torch",)),
    "flax": Peer("bench.peers.flax_peer", ("flax", "optax", "jax")),
    "dlopt": Peer("bench.peers.dlopt_peer", ("dlopt", "jax")),
}


def missing(name: str) -> str | None:
  """Why peer `name` cannot run here (a package it needs is not installed), or None."""
  absent = [package for package in PEERS[name].requires
            if importlib.util.find_spec(package) is None]
  if not absent:
    return None
  return (f"skipped: {', '.join(absent)} not installed (`python3 scripts/bench.py "
          "peers-throughput` installs the peers, or pip install -e '.[bench]')")


def run_in_subprocess(task: str, name: str, data_dir: Path, config: dict) -> dict:
  """Runs peer `name`'s `task` in a fresh Python process; returns its record.

  A missing package gives `{"skipped": why}`; a failure `{"error": traceback or output}`.
  """
  why = missing(name)
  if why:
    return {"skipped": why}
  with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
    result = Path(tmp) / "result.json"
    done = subprocess.run([sys.executable, "-m", "bench.peers._worker", task, name,
                           str(data_dir), json.dumps(config), str(result)],
                          cwd=_ROOT, capture_output=True, text=True)
    if result.exists():
      record = json.loads(result.read_text())
    else:
      record = {"error": f"exit code {done.returncode}, no result: "
                         f"{(done.stdout + done.stderr)[-_OUTPUT_TAIL:]}"}
  if "error" in record:
    record["output"] = (done.stdout + done.stderr)[-_OUTPUT_TAIL:]
  return record
