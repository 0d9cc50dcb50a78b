"""dlopt: deep-learning models as pure JAX functions, trained with optax.

>>> import dlopt
>>> x, y = dlopt.data.load_digits()
>>> result = dlopt.train.fit(dlopt.models.MLP(widths=(64, 64)), (x, y),
...                          optimizer=dlopt.optim.OptimizerConfig("adam", 1e-3),
...                          config=dlopt.train.FitConfig(epochs=5))   # doctest: +SKIP
"""

import importlib.metadata as _metadata

import kernels as _kernels

if not getattr(_kernels, "__dlopt_kernels__", False):
  raise ImportError(
      f"the `kernels` package found at {getattr(_kernels, '__file__', None) or _kernels} is "
      "not dlopt's own `kernels` (its Pallas kernels) but another package of that name, "
      "e.g. Hugging Face's `kernels` from PyPI, which shadows it: pip uninstall kernels "
      "(then reinstall dlopt), or keep the two in separate virtual environments")

from dlopt import data, losses, metrics, models, optim, train  # noqa: E402

try:
  __version__ = _metadata.version("dlopt")  # the one version string: pyproject.toml's
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
  __version__ = "0+unknown"

__all__ = ["data", "losses", "metrics", "models", "optim", "train", "__version__"]
