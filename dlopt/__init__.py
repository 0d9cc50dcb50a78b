"""dlopt: deep-learning models as pure JAX functions, trained with optax.

>>> import dlopt
>>> x, y = dlopt.data.load_digits()
>>> result = dlopt.train.fit(dlopt.models.MLP(widths=(64, 64)), (x, y),
...                          optimizer=dlopt.optim.OptimizerConfig("adam", 1e-3),
...                          config=dlopt.train.FitConfig(epochs=5))   # doctest: +SKIP
"""

from dlopt import data, losses, metrics, models, optim, train

__version__ = "0.1.0"

__all__ = ["data", "losses", "metrics", "models", "optim", "train", "__version__"]
