"""Convolutional image classifiers: a plain conv-pool net and a residual net.

>>> import jax, jax.numpy as jnp
>>> from dlopt.models import ResidualCNN
>>> model = ResidualCNN(num_classes=10, stem_features=8, stage_features=(8,),
...                     blocks_per_stage=(1,), norm="batch")
>>> x = jnp.ones((2, 16, 16, 3))
>>> variables = model.init(jax.random.key(0), x)
>>> sorted(variables)
['batch_stats', 'params']
>>> logits, updates = model.apply(variables, x, train=True,
...                               mutable=["batch_stats"])
>>> logits.shape, sorted(updates)
((2, 10), ['batch_stats'])
"""

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlopt.models import _utils
from dlopt.models.conv import FusedConv, check_conv_impl

__all__ = ["CNN", "NORMS", "ResidualBlock", "ResidualCNN"]

NORMS = ("batch", "group", "none")
BATCH_NORM_MOMENTUM = 0.9
_IMAGES = "images [batch, height, width, channels]"
_PADDINGS = ("SAME", "VALID")


def _check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}; got norm={norm!r}")


def _norm_layer(norm: str, norm_groups: int, train: bool,
                name: str | None = None,
                axis_name: str | None = None, dtype=None,
                param_dtype=jnp.float32) -> nn.Module:
  # Flax's norms compute their mean and variance in at least float32 and keep
  # batch norm's running averages in float32, whatever `dtype`.
  if norm == "batch":
    return nn.BatchNorm(use_running_average=not train,
                        momentum=BATCH_NORM_MOMENTUM, axis_name=axis_name,
                        dtype=dtype, param_dtype=param_dtype, name=name)
  return nn.GroupNorm(num_groups=norm_groups, dtype=dtype,
                      param_dtype=param_dtype, name=name)


class CNN(nn.Module):
  """Conv3x3 -> relu -> maxpool2x2 per entry of `features`, then a dense head.

  After the conv stages: flatten -> Dense(dense_width) -> relu -> dropout ->
  Dense(num_classes). Each pool halves height and width (rounding down).

  Attributes:
    num_classes: number of logits, >= 1.
    features: output channels of each conv stage, each >= 1 (stored as a
      tuple, like every sequence field here, so modules stay hashable).
    dense_width: width of the hidden dense layer, >= 1.
    dropout_rate: dropout before the last layer, 0 <= rate < 1; active only
      when `train=True`, drawing from the 'dropout' RNG stream.
    conv_impl: the `impl` of `kernels.conv2d` for the convs, each fused with
      its bias, relu and pool ("auto", "xla", "xla_implicit_gemm", "pallas", ...).
    padding: the convs' padding, "SAME" (keeps height and width) or "VALID"
      (shrinks them by 2, as Keras' `Conv2D` does by default).
    dtype: the computation dtype of every layer (jnp.bfloat16 for mixed
      precision); None promotes the inputs' and parameters' dtypes, as Flax
      layers do. bfloat16 needs no loss scaling: it has float32's exponent
      range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
  """

  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  dense_width: int = 128
  dropout_rate: float = 0.0
  conv_impl: str = "auto"
  padding: str = "SAME"
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    self.features = tuple(self.features)
    _utils.check_positive("num_classes", self.num_classes)
    _utils.check_positive_all("features", self.features)
    _utils.check_positive("dense_width", self.dense_width)
    _utils.check_dropout_rate(self.dropout_rate)
    check_conv_impl(self.conv_impl)
    if self.padding not in _PADDINGS:
      raise ValueError(f"padding must be one of {_PADDINGS}; got padding={self.padding!r}")
    _utils.set_dtypes(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Classifies a batch of images.

    Args:
      x: float images [batch, height, width, channels].
      train: enables dropout (needs `rngs={"dropout": key}` when
        `dropout_rate > 0`).

    Returns:
      Logits [batch, num_classes], float32 whatever `dtype` computed them
      (cast at the end, as MaxText's `cast_logits_to_fp32` does), so the loss
      runs in float32.

    Raises:
      ValueError: if `x` is not 4-D.
    """
    _utils.check_ndim("CNN", x, 4, _IMAGES)
    for i, f in enumerate(self.features):
      # Named as flax.linen.Conv would be, so parameter trees match nn.Conv's.
      x = FusedConv(f, (3, 3), padding=self.padding, activation="relu", pool=2,
                    impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"Conv_{i}")(x)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(dense(self.dense_width)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return _utils.float32_logits(dense(self.num_classes)(x))


class ResidualBlock(nn.Module):
  """conv3x3 -> norm -> relu -> conv3x3 -> norm, plus shortcut, then relu.

  The shortcut is the identity, or a strided 1x1 conv followed by a norm when
  `strides != 1` or the channel count changes. Convs have no bias (the norm
  supplies one).

  With `norm="none"` the convs carry biases and fuse their epilogues:
  conv1 + bias + relu, then conv2 + bias + shortcut + relu in one kernel;
  conv2's kernel starts at zero, so each block starts as its shortcut
  (SkipInit, De & Smith 2020), which lets the net train without a norm.

  Attributes:
    features: output channels, >= 1.
    strides: stride of the first conv and of the projection, >= 1.
    norm: "batch" (running statistics in the 'batch_stats' collection),
      "group" (no state) or "none".
    norm_groups: groups of `nn.GroupNorm`; must divide `features` when
      `norm="group"`.
    conv_impl: the `impl` of `kernels.conv2d` for the convs.
    norm_axis_name: with `norm="batch"`, the mapped device axis over which
      batch statistics are averaged in per-device code (`jax.pmap`,
      `jax.shard_map`), so that they are the global batch's; None: local.
    dtype: the computation dtype of every layer (jnp.bfloat16 for mixed
      precision); None promotes the inputs' and parameters' dtypes, as Flax
      layers do. bfloat16 needs no loss scaling: it has float32's exponent
      range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
  """

  features: int
  strides: int = 1
  norm: str = "batch"
  norm_groups: int = 8
  conv_impl: str = "auto"
  norm_axis_name: str | None = None
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    _utils.check_positive("features", self.features)
    _utils.check_positive("strides", self.strides)
    _check_norm(self.norm)
    _utils.check_positive("norm_groups", self.norm_groups)
    if self.norm == "group" and self.features % self.norm_groups:
      raise ValueError(
          f"norm_groups must divide features when norm='group'; "
          f"got {self.norm_groups=}, {self.features=}")
    check_conv_impl(self.conv_impl)
    _utils.set_dtypes(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Applies the block.

    Args:
      x: float feature maps [batch, height, width, channels].
      train: batch norm uses batch statistics and updates 'batch_stats' when
        true, running averages when false. It may be passed by position, as
        `nn.remat(ResidualBlock, static_argnums=(2,))` needs it.

    Returns:
      Feature maps [batch, ceil(height / strides), ceil(width / strides),
      features], in the computation dtype (`dtype`, or the promoted one).

    Raises:
      ValueError: if `x` is not 4-D.
    """
    _utils.check_ndim("ResidualBlock", x, 4, _IMAGES)
    fused = self.norm == "none"
    conv = functools.partial(FusedConv, impl=self.conv_impl, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = functools.partial(_norm_layer, self.norm, self.norm_groups, train,
                             axis_name=self.norm_axis_name, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    residual = _utils.cast_dtype(x, self.dtype)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = conv(self.features, (1, 1), self.strides, padding="VALID",
                      use_bias=fused, name="proj_conv")(x)
      if not fused:
        residual = norm("proj_norm")(residual)
    y = conv(self.features, (3, 3), self.strides, use_bias=fused,
             activation="relu" if fused else None, name="conv1")(x)
    if fused:
      return conv(self.features, (3, 3), activation="relu", name="conv2",
                  kernel_init=nn.initializers.zeros_init())(y, residual)
    y = nn.relu(norm("norm1")(y))
    y = conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
    y = norm("norm2")(y)
    return nn.relu(y + residual)


class ResidualCNN(nn.Module):
  """A small ResNet: stem, stages of `ResidualBlock`s, pooled dense head.

  Stem: conv3x3(stem_features) -> norm -> relu. Stage `i` holds
  `blocks_per_stage[i]` blocks of `stage_features[i]` channels; the first
  block of every stage but the first has stride 2. Head: global average
  pool -> dropout -> Dense(num_classes).

  Variables: 'params', plus 'batch_stats' when `norm="batch"`; apply with
  `mutable=["batch_stats"]` when `train=True` to get the updated statistics.

  Attributes:
    num_classes: number of logits, >= 1.
    stem_features: channels of the stem conv, >= 1.
    stage_features: channels of each stage, each >= 1.
    blocks_per_stage: blocks in each stage, each >= 1, same length as
      `stage_features`.
    norm: "batch" (`nn.BatchNorm`, momentum 0.9), "group" (`nn.GroupNorm`)
      or "none" (biased convs with fused epilogues, see `ResidualBlock`).
    norm_groups: groups of `nn.GroupNorm`; must divide `stem_features` and
      every entry of `stage_features` when `norm="group"`.
    dropout_rate: dropout before the head, 0 <= rate < 1; active only when
      `train=True`, drawing from the 'dropout' RNG stream.
    conv_impl: the `impl` of `kernels.conv2d` for every conv.
    norm_axis_name: with `norm="batch"`, the mapped device axis over which
      batch statistics are averaged in per-device code (`jax.pmap`,
      `jax.shard_map`; `dlopt.train.fit` sets it in its pmap mode); None:
      statistics of the batch the module sees (under `jax.jit` over a mesh
      that is the global batch already).
    dtype: the computation dtype of every layer (jnp.bfloat16 for mixed
      precision); None promotes the inputs' and parameters' dtypes, as Flax
      layers do. bfloat16 needs no loss scaling: it has float32's exponent
      range.
    param_dtype: the parameters' dtype (float32 also with a bfloat16 `dtype`).
    remat: rematerialize each residual block (`nn.remat`): its activations
      are recomputed in the backward pass instead of kept from the forward
      one, trading compute for memory. Same parameters, outputs and gradients.
  """

  num_classes: int = 10
  stem_features: int = 32
  stage_features: Sequence[int] = (32, 64)
  blocks_per_stage: Sequence[int] = (1, 1)
  norm: str = "batch"
  norm_groups: int = 8
  dropout_rate: float = 0.0
  conv_impl: str = "auto"
  norm_axis_name: str | None = None
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def __post_init__(self):
    self.stage_features = tuple(self.stage_features)
    self.blocks_per_stage = tuple(self.blocks_per_stage)
    _utils.check_positive("num_classes", self.num_classes)
    _utils.check_positive("stem_features", self.stem_features)
    _utils.check_positive_all("stage_features", self.stage_features,
                              allow_empty=False)
    _utils.check_positive_all("blocks_per_stage", self.blocks_per_stage)
    if len(self.stage_features) != len(self.blocks_per_stage):
      raise ValueError(
          f"stage_features and blocks_per_stage must have the same length; "
          f"got {self.stage_features=}, {self.blocks_per_stage=}")
    _check_norm(self.norm)
    _utils.check_positive("norm_groups", self.norm_groups)
    if self.norm == "group":
      widths = (self.stem_features, *self.stage_features)
      if any(w % self.norm_groups for w in widths):
        raise ValueError(
            f"norm_groups must divide stem_features and every stage_features "
            f"entry when norm='group'; got {self.norm_groups=}, "
            f"{self.stem_features=}, {self.stage_features=}")
    _utils.check_dropout_rate(self.dropout_rate)
    check_conv_impl(self.conv_impl)
    _utils.set_dtypes(self)
    _utils.check_bool("remat", self.remat)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Classifies a batch of images.

    Args:
      x: float images [batch, height, width, channels].
      train: batch norm uses batch statistics and updates 'batch_stats', and
        dropout is active (needs `rngs={"dropout": key}` when
        `dropout_rate > 0`); otherwise running averages and no dropout.

    Returns:
      Logits [batch, num_classes], float32 whatever `dtype` computed them
      (cast at the end, as MaxText's `cast_logits_to_fp32` does), so the loss
      runs in float32.

    Raises:
      ValueError: if `x` is not 4-D.
    """
    _utils.check_ndim("ResidualCNN", x, 4, _IMAGES)
    fused = self.norm == "none"
    dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    x = FusedConv(self.stem_features, (3, 3), use_bias=fused,
                  activation="relu" if fused else None, impl=self.conv_impl,
                  name="stem_conv", **dtypes)(x)
    if not fused:
      x = nn.relu(_norm_layer(self.norm, self.norm_groups, train, "stem_norm",
                              self.norm_axis_name, **dtypes)(x))
    # static_argnums counts `self` as 0: `train` (argument 2) stays a Python bool.
    block_cls = (nn.remat(ResidualBlock, static_argnums=(2,)) if self.remat
                 else ResidualBlock)
    for i, (features, blocks) in enumerate(
        zip(self.stage_features, self.blocks_per_stage)):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(features, strides, self.norm, self.norm_groups,
                      self.conv_impl, self.norm_axis_name, **dtypes,
                      name=f"stage{i}_block{j}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return _utils.float32_logits(nn.Dense(self.num_classes, name="head", **dtypes)(x))
