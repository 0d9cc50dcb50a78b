"""conv2d and causal_conv1d through the Pallas kernels (interpret mode), end to end.

The kernel files' own tests check the canonical kernels; these run the public functions,
layout and custom_vjp included, forward and gradients against the float64 reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.conv import BlockSizes
from kernels.conv.reference import causal_conv1d_reference

IMPLS = ["pallas_gpu", "pallas_tpu"]
SMALL = BlockSizes(block_m=16, block_n=16, block_k=16)

CASES = [  # (x_shape, w_shape, options, activation, dtype)
    ((2, 9, 11, 5), (3, 3, 5, 6), dict(stride=2, padding="SAME"), "gelu", jnp.float32),
    ((1, 9, 10, 6), (3, 2, 2, 9), dict(padding=((2, 0), (1, 3)), dilation=2, groups=3),
     "silu", jnp.float32),
    ((2, 8, 9, 4), (3, 3, 1, 8), dict(stride=2, groups=4), "relu", jnp.float32),
    ((2, 7, 9, 3), (1, 7, 3, 4), dict(padding="VALID"), None, jnp.bfloat16),
    ((2, 8, 8, 1), (3, 3, 1, 8), dict(padding=1), "relu", jnp.float32),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv2d_pallas_matches_reference(conv_cases, impl, case):
  x_shape, w_shape, options, activation, dtype = CASES[case]
  conv_cases.check_against_reference(impl, x_shape, w_shape, dtype=dtype,
                                     activation=activation, block_sizes=SMALL, seed=case,
                                     **options)


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_conv1d_pallas_matches_reference(conv_cases, impl):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 21, 5), np.float32))
  w = jnp.asarray(rng.standard_normal((4, 5), np.float32))
  b = jnp.asarray(rng.standard_normal(5, np.float32))
  ct = jnp.asarray(rng.standard_normal((2, 21, 5), np.float32))
  loss = lambda fn: lambda x, w, b: jnp.sum(fn(x, w, b) * ct.astype(x.dtype))
  pallas = lambda x, w, b: kernels.causal_conv1d(x, w, b, activation="silu", impl=impl,
                                                 block_sizes=SMALL)
  with jax.enable_x64(True):
    args64 = [jnp.asarray(np.asarray(a, np.float64)) for a in (x, w, b)]
    reference = lambda x, w, b: causal_conv1d_reference(x, w, b, activation="silu")
    expected = np.asarray(reference(*args64))
    expected_grads = jax.grad(loss(reference), argnums=(0, 1, 2))(*args64)
  conv_cases.assert_close(pallas(x, w, b), expected, jnp.float32)
  for got, want in zip(jax.grad(loss(pallas), argnums=(0, 1, 2))(x, w, b), expected_grads):
    conv_cases.assert_close(got, np.asarray(want), jnp.float32, "grad")
