"""The public conv2d / causal_conv1d: argument checking, impl dispatch, options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.conv import BlockSizes

X = jnp.ones((2, 8, 8, 4)) * jnp.arange(4.0)
W = jnp.ones((3, 3, 4, 6)) * 0.1


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=jnp.ones((8, 8, 4))), r"x must be \[batch, height, width, in_channels\]"),
    (dict(x=jnp.ones((2, 8, 8, 4), jnp.int32)), r"x.dtype must be float32"),
    (dict(w=jnp.ones((3, 3, 4))), r"w must be \[kernel_h, kernel_w"),
    (dict(w=jnp.ones((3, 3, 4, 6), jnp.bfloat16)), r"w must have x's dtype"),
    (dict(w=jnp.ones((3, 3, 3, 6))), r"w.shape\[2\] must be in_channels / groups = 4"),
    (dict(groups=3), r"must be multiples of groups \(3\)"),
    (dict(groups=0), r"groups must be an int >= 1"),
    (dict(b=jnp.ones(5)), r"b must be None or a float array of shape \(6,\)"),
    (dict(stride=0), r"stride must be an int >= 1"),
    (dict(stride=(1, 2, 3)), r"stride must be an int >= 1 or a pair"),
    (dict(dilation=-1), r"dilation must be an int >= 1"),
    (dict(padding="FULL"), r"padding must be 'SAME', 'VALID'"),
    (dict(padding=-1), r"padding must be 'SAME', 'VALID', an int >= 0"),
    (dict(padding=((1, 2), (3,))), r"padding must be"),
    (dict(activation="tanh"), r"activation must be one of"),
    (dict(impl="cudnn"), r"impl must be one of auto, xla, xla_implicit_gemm"),
    (dict(block_sizes=dict(block_m=64)), r"block_sizes must be None or a kernels.conv"),
    (dict(residual=jnp.ones((2, 8, 8, 5))), r"residual must be None or float32 of the "
                                            r"output's shape \(2, 8, 8, 6\)"),
    (dict(residual=jnp.ones((2, 8, 8, 6), jnp.bfloat16)), r"residual must be None or float32"),
    (dict(x=jnp.ones((2, 2, 2, 4)), padding="VALID"), r"the output would be empty"),
    (dict(x=np.ones((2, 8, 8, 4)), w=np.ones((3, 3, 4, 6)), impl="pallas"),
     r"impl='pallas_gpu' does not support float64 inputs; impl='xla' and "
     r"'xla_implicit_gemm' take float64"),
])
def test_conv2d_rejects_bad_arguments(kwargs, match):
  args = dict(x=X, w=W, b=None)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    kernels.conv2d(args.pop("x"), args.pop("w"), args.pop("b"), **args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=jnp.ones((2, 5))), r"x must be \[batch, seq, channels\]"),
    (dict(w=jnp.ones((3, 4))), r"w must be \[kernel, channels\] with channels = x.shape\[2\] = 6"),
    (dict(w=jnp.ones((3,))), r"w must be \[kernel, channels\]"),
    (dict(b=jnp.ones(4)), r"b must be None or a float array of shape \(6,\)"),
    (dict(activation="elu"), r"activation must be one of"),
    (dict(impl="fast"), r"impl must be one of"),
])
def test_causal_conv1d_rejects_bad_arguments(kwargs, match):
  args = dict(x=jnp.ones((2, 5, 6)), w=jnp.ones((3, 6)), b=None)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    kernels.causal_conv1d(args.pop("x"), args.pop("w"), args.pop("b"), **args)


def test_block_sizes_are_validated():
  with pytest.raises(ValueError, match=r"BlockSizes.block_m must be a power of two >= 8"):
    BlockSizes(block_m=100)
  with pytest.raises(ValueError, match=r"BlockSizes.num_warps must be None or an integer"):
    BlockSizes(num_warps=0)


@pytest.mark.parametrize("padding,expected", [
    ("SAME", (2, 4, 4, 6)), ("valid", (2, 3, 3, 6)), (1, (2, 4, 4, 6)), ((0, 1), (2, 3, 4, 6)),
    (((2, 0), (0, 0)), (2, 4, 3, 6)),
])
def test_padding_forms(padding, expected):
  assert kernels.conv2d(X, W, stride=2, padding=padding, impl="xla_implicit_gemm").shape == expected


def test_same_padding_matches_lax():
  x = jax.random.normal(jax.random.key(0), (1, 9, 10, 4))
  for stride in (1, 2, 3):
    want = jax.lax.conv_general_dilated(x, W, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = kernels.conv2d(x, W, stride=stride, padding="SAME")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_auto_on_cpu_matches_reference():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  b = jnp.arange(6.0)
  auto = kernels.conv2d(x, W, b, activation="relu", impl="auto")
  ref = kernels.conv2d(x, W, b, activation="relu", impl="xla")
  np.testing.assert_allclose(np.asarray(auto), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_shape,options,expected", [
    ((1, 1, 4, 6), dict(stride=(1, 1), padding=((0, 0), (0, 0)), groups=1), "xla_implicit_gemm"),
    ((1, 1, 4, 6), dict(stride=(2, 2), padding=((0, 0), (0, 0)), groups=1), "xla"),
    ((1, 1, 2, 6), dict(stride=(1, 1), padding=((0, 0), (0, 0)), groups=2), "xla"),
    ((3, 3, 4, 6), dict(stride=(1, 1), padding=((1, 1), (1, 1)), groups=1), "xla"),
])
def test_auto_on_cpu_takes_the_measured_path(w_shape, options, expected):
  from kernels.conv.api import _cpu_choice
  from kernels.conv.layout import geometry
  geo = geometry((2, 8, 8, 4), w_shape, dilation=(1, 1), **options)
  assert _cpu_choice(geo) == expected
  assert _cpu_choice(None) == "xla"  # causal_conv1d: the reference measured faster


def test_old_name_of_the_implicit_gemm_still_works_with_a_warning():
  with pytest.warns(DeprecationWarning, match="'xla_gemm' is now called 'xla_implicit_gemm'"):
    old = kernels.conv2d(X, W, impl="xla_gemm")
  np.testing.assert_array_equal(old, kernels.conv2d(X, W, impl="xla_implicit_gemm"))


def test_registry_says_where_each_path_runs():
  from kernels.conv import IMPLEMENTATIONS
  assert IMPLEMENTATIONS["pallas_gpu"].supported_on("cpu")  # interpreted
  assert IMPLEMENTATIONS["xla_implicit_gemm"].supported_on("tpu")
  assert set(IMPLEMENTATIONS) | {"auto", "pallas"} == set(kernels.conv.IMPLS)
