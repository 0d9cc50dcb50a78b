"""Training: `TrainState`, pure jitted train/eval steps, and the `fit` loop.

>>> from dlopt.data import load_mnist_subset
>>> from dlopt.models import CNN
>>> from dlopt.optim import OptimizerConfig
>>> from dlopt.train import FitConfig, fit
>>> x, y = load_mnist_subset()
>>> result = fit(CNN(), (x, y), optimizer=OptimizerConfig("adam", 1e-3),
...              config=FitConfig(epochs=1), workdir="runs/demo")   # doctest: +SKIP

The pieces of `fit`, each usable alone: `inputs` (the batch-source protocol and its
adapters), `parallel` (placement strategies), `loop` (`Loop`, `LoopState`), `callbacks`,
`workdir` (the run directory), `checkpoint`, `steps`, `state`.
"""

from dlopt.train.callbacks import (Callback, Checkpoint, EarlyStop, EarlyStopping, MetricLog,
                                   PlotCurves, ProgressBar, StopOnSignal, Validation,
                                   plot_curves)
from dlopt.train.checkpoint import Checkpointer
from dlopt.train.config import FitConfig
from dlopt.train.distributed import initialize as initialize_distributed
from dlopt.train.evaluate import evaluate
from dlopt.train.fit import FitResult, fit
from dlopt.train.grain_input import GrainBatches
from dlopt.train.inputs import BatchSource, IterableBatches, ProcessLocal
from dlopt.train.interrupt import Interrupted
from dlopt.train.loop import Loop, LoopState, NonFiniteLossError
from dlopt.train.objective import Objective
from dlopt.train.parallel import DataParallel, PmapParallel, placement, process_shard
from dlopt.train.state import TrainState, create_train_state
from dlopt.train.steps import eval_step, make_eval_step, make_train_step, train_step
from dlopt.train.writers import JsonlWriter, MetricWriter, TensorBoardWriter, WriteMetrics
from dlopt.train.xla_options import step_compiler_options

__all__ = [
    "BatchSource", "Callback", "Checkpoint", "Checkpointer", "DataParallel", "EarlyStop",
    "EarlyStopping", "FitConfig", "FitResult", "GrainBatches", "Interrupted", "IterableBatches",
    "JsonlWriter", "Loop", "MetricWriter", "TensorBoardWriter", "WriteMetrics",
    "LoopState", "MetricLog", "NonFiniteLossError", "Objective", "PlotCurves", "PmapParallel",
    "ProcessLocal", "ProgressBar", "StopOnSignal", "TrainState", "Validation",
    "create_train_state", "eval_step", "evaluate", "fit", "initialize_distributed",
    "make_eval_step", "make_train_step", "placement", "plot_curves", "process_shard",
    "step_compiler_options", "train_step",
]
