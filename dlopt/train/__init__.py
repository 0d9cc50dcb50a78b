"""Training: `TrainState`, pure jitted train/eval steps, and the `fit` loop.

>>> from dlopt.data import load_mnist_subset
>>> from dlopt.models import CNN
>>> from dlopt.optim import OptimizerConfig
>>> from dlopt.train import FitConfig, fit
>>> x, y = load_mnist_subset()
>>> result = fit(CNN(), (x, y), optimizer=OptimizerConfig("adam", 1e-3),
...              config=FitConfig(epochs=1), workdir="runs/demo")   # doctest: +SKIP
"""

from dlopt.train.callbacks import EarlyStopping, plot_curves
from dlopt.train.checkpoint import Checkpointer
from dlopt.train.config import FitConfig
from dlopt.train.distributed import initialize as initialize_distributed
from dlopt.train.evaluate import evaluate
from dlopt.train.fit import FitResult, NonFiniteLossError, fit
from dlopt.train.objective import Objective
from dlopt.train.parallel import DataParallel, ProcessLocal, process_shard
from dlopt.train.state import TrainState, create_train_state
from dlopt.train.steps import eval_step, make_eval_step, make_train_step, train_step
from dlopt.train.xla_options import step_compiler_options

__all__ = [
    "step_compiler_options",
    "Checkpointer", "DataParallel", "EarlyStopping", "FitConfig", "FitResult",
    "NonFiniteLossError", "Objective", "ProcessLocal", "TrainState", "create_train_state",
    "eval_step", "evaluate", "fit", "initialize_distributed", "make_eval_step",
    "make_train_step", "plot_curves", "process_shard", "train_step",
]
