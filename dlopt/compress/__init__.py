"""Model compression: magnitude pruning, int8 weight quantization, distillation.

All functions are pure and work on Flax parameter pytrees (``variables["params"]``).

- Pruning (`pruning`): `magnitude_masks` picks, under one global threshold, the
  smallest-magnitude kernel weights; `apply_masks` zeroes them; `keep_masked`, chained
  after any optax optimizer, keeps them zero while fine-tuning; `sparsity_report` and
  `sparse_bytes` measure the result.
- Quantization (`quantize`): `quantize_params` turns kernels into `QuantizedArray`
  (int8 values, one float32 scale per output channel), about 4x smaller
  (`param_bytes`); `quantized_apply` runs the model on them.
- Distillation (`distill`): `teacher_logits` precomputes soft targets;
  `distillation_objective_loss` mixes the temperature-softened KL with the
  hard-label cross-entropy.

>>> import jax, jax.numpy as jnp, optax
>>> from dlopt import compress
>>> from dlopt.models import CNN
>>> model = CNN(num_classes=10, features=(8,), dense_width=16)
>>> x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
>>> variables = model.init(jax.random.key(1), x)
>>> masks = compress.magnitude_masks(variables["params"], 0.9)
>>> pruned = compress.apply_masks(variables["params"], masks)
>>> round(compress.sparsity_report(pruned, masks)["overall"], 3)
0.9
>>> tx = optax.chain(optax.adamw(1e-3), compress.keep_masked(masks))  # fine-tune
>>> qparams = compress.quantize_params(variables["params"])
>>> logits = compress.quantized_apply(model.apply, {"params": qparams}, x, train=False)
>>> soft = compress.teacher_logits(model.apply, variables, x, batch_size=2)
>>> logits.shape, soft.shape
((4, 10), (4, 10))
"""

from dlopt.compress.distill import distillation_objective_loss
from dlopt.compress.distill import teacher_logits
from dlopt.compress.pruning import apply_masks
from dlopt.compress.pruning import keep_masked
from dlopt.compress.pruning import magnitude_masks
from dlopt.compress.pruning import prunable
from dlopt.compress.pruning import sparse_bytes
from dlopt.compress.pruning import sparsity_report
from dlopt.compress.quantize import QMAX
from dlopt.compress.quantize import QuantizedArray
from dlopt.compress.quantize import dequantize_params
from dlopt.compress.quantize import param_bytes
from dlopt.compress.quantize import quantize_array
from dlopt.compress.quantize import quantize_params
from dlopt.compress.quantize import quantized_apply

__all__ = [
    "QMAX",
    "QuantizedArray",
    "apply_masks",
    "dequantize_params",
    "distillation_objective_loss",
    "keep_masked",
    "magnitude_masks",
    "param_bytes",
    "prunable",
    "quantize_array",
    "quantize_params",
    "quantized_apply",
    "sparse_bytes",
    "sparsity_report",
    "teacher_logits",
]
