"""A fit run fed by a grain pipeline, for test_grain.py's kill -9 and resume (a subprocess).

    python tests/dlopt/train/grain_job.py WORKDIR [--resume]

Digits through `grain.MapDataset`, reshuffled every epoch (`shuffle(seed).repeat()`), with a
checkpoint every 3 steps; the final parameters land in WORKDIR's checkpoints.
"""

from __future__ import annotations

import sys

import grain
import numpy as np

from dlopt.data import load_digits
from dlopt.models import MLP
from dlopt.train import FitConfig, GrainBatches, fit

BATCH = 64


def pipeline():
  x, y = load_digits()
  x = x.reshape(len(x), -1)
  rows = grain.MapDataset.range(len(x)).shuffle(seed=0).repeat()
  return GrainBatches(rows.map(lambda i: (x[i], y[i])).batch(BATCH), len(x) // BATCH)


def main(argv) -> int:
  workdir, resume = argv[0], "--resume" in argv
  x, y = load_digits()
  val = (x.reshape(len(x), -1)[:200], y[:200])
  fit(MLP(widths=(32,), num_outputs=10), pipeline(), val_data=val, workdir=workdir,
      resume=resume, config=FitConfig(epochs=4, batch_size=BATCH, checkpoint_every=3,
                                      keep_last_n=100, progress=False, plot=False))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
