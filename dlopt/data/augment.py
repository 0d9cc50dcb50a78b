"""On-device image augmentation: pure, jittable functions of a key and a batch.

Every function takes a `jax.random` key and images `[B, H, W, C]` of a float
dtype, draws one random transform per example, and returns a batch of the
same shape and dtype; the same key gives the same result. Arguments other than
`key` and `images` are static Python numbers (close over them, or mark them
static, under `jax.jit`). Normalization needs nothing here: `normalize` from
`dlopt.data.normalize` is plain arithmetic on a NamedTuple of statistics, so it
runs inside the same jitted step.

Example:

  >>> import jax
  >>> import jax.numpy as jnp
  >>> from dlopt.data.augment import AugmentConfig, augment
  >>> config = AugmentConfig(flip=True, crop_padding=2, max_rotation=10.0)
  >>> images = jnp.ones((4, 8, 8, 3))
  >>> out = jax.jit(augment, static_argnums=2)(jax.random.key(0), images, config)
  >>> out.shape, out.dtype
  ((4, 8, 8, 3), dtype('float32'))
  >>> bool(jnp.array_equal(augment(jax.random.key(0), images, AugmentConfig()), images))
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
from jax.scipy import ndimage

__all__ = [
    "AugmentConfig",
    "augment",
    "random_crop",
    "random_flip",
    "random_rotate",
    "rotate",
]

MAX_DEGREES = 180.0  # a uniform angle in [-180, 180] already covers every rotation


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        "images must be a float array [B, H, W, C]; got"
        f" images.shape={images.shape} and images.dtype={images.dtype}."
    )


def _check_prob(prob: float) -> None:
  if not (_is_number(prob) and 0.0 <= prob <= 1.0):
    raise ValueError(f"prob must be a number in [0, 1]; got prob={prob!r}.")


def _check_padding(padding: int, name: str = "padding") -> None:
  if not (_is_int(padding) and padding >= 0):
    raise ValueError(f"{name} must be an int >= 0; got {name}={padding!r}.")


def _check_degrees(degrees: float, name: str = "max_degrees") -> None:
  if not (_is_number(degrees) and 0.0 <= degrees <= MAX_DEGREES):
    raise ValueError(
        f"{name} must be a number in [0, {MAX_DEGREES:g}]; got {name}={degrees!r}."
    )


def random_flip(key: jax.Array, images: jax.Array, *, prob: float = 0.5) -> jax.Array:
  """Mirrors each image left to right with probability `prob`.

  Args:
    key: a `jax.random` key.
    images: float `[B, H, W, C]`.
    prob: chance that an example is flipped, a Python number in [0, 1].

  Returns:
    `[B, H, W, C]`, the dtype of `images`; example `b` is `images[b, :, ::-1]`
    or `images[b]`.

  Raises:
    ValueError: `images` is not a float `[B, H, W, C]` array, or `prob` is
      out of range.
  """
  _check_images(images)
  _check_prob(prob)
  flip = jax.random.bernoulli(key, float(prob), (images.shape[0],))  # [B]
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def _crop_one(image: jax.Array, offset: jax.Array, height: int, width: int) -> jax.Array:
  start = (offset[0], offset[1], 0)
  return lax.dynamic_slice(image, start, (height, width, image.shape[-1]))


def random_crop(key: jax.Array, images: jax.Array, *, padding: int) -> jax.Array:
  """Zero-pads each image by `padding` pixels per side, then crops `H x W` back.

  The crop offset is uniform over the `(2 * padding + 1) ** 2` positions, drawn
  per example, so each image shifts by up to `padding` pixels in each direction.

  Args:
    key: a `jax.random` key.
    images: float `[B, H, W, C]`.
    padding: pixels of zeros added on each side, a Python int >= 0.

  Returns:
    `[B, H, W, C]`, the dtype of `images`; `padding=0` returns `images`.

  Raises:
    ValueError: `images` is not a float `[B, H, W, C]` array, or `padding` is
      not an int >= 0.
  """
  _check_images(images)
  _check_padding(padding)
  if padding == 0:
    return images
  batch, height, width, _ = images.shape
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  padded = jnp.pad(images, pad)  # [B, H + 2p, W + 2p, C]
  offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)  # [B, 2]
  return jax.vmap(_crop_one, in_axes=(0, 0, None, None))(padded, offsets, height, width)


def _rotate_one(image: jax.Array, degrees: jax.Array) -> jax.Array:
  """Rotates `image` `[H, W, C]` counter-clockwise by `degrees` about its centre."""
  height, width, _ = image.shape
  cy, cx = (height - 1) / 2, (width - 1) / 2
  theta = jnp.deg2rad(degrees.astype(jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  ys, xs = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32) - cy,
      jnp.arange(width, dtype=jnp.float32) - cx,
      indexing="ij",
  )  # [H, W] each, output pixel offsets from the centre
  # Each output pixel samples the input at its position rotated back by -theta
  # (rows point down, so counter-clockwise on screen is this sign convention).
  coords = [cos * ys + sin * xs + cy, -sin * ys + cos * xs + cx]
  sample = lambda channel: ndimage.map_coordinates(
      channel, coords, order=1, mode="constant", cval=0.0)
  channels = jnp.moveaxis(image.astype(jnp.float32), -1, 0)  # [C, H, W]
  return jnp.moveaxis(jax.vmap(sample)(channels), 0, -1).astype(image.dtype)


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
  """Rotates each image counter-clockwise about its centre, bilinearly.

  Pixels that fall outside the input read as zeros. At 90 degrees a square
  image matches `jnp.rot90(image, 1, axes=(0, 1))` (up to float rounding).

  Args:
    images: float `[B, H, W, C]`.
    degrees: angles `[B]` (or a scalar for all examples), any real dtype.

  Returns:
    `[B, H, W, C]`, the dtype of `images`.

  Raises:
    ValueError: `images` is not a float `[B, H, W, C]` array, or `degrees`
      does not broadcast to `[B]`.
  """
  _check_images(images)
  degrees = jnp.asarray(degrees)
  if degrees.ndim > 1 or degrees.size not in (1, images.shape[0]):
    raise ValueError(
        f"degrees must be a scalar or of shape [B]=({images.shape[0]},); got"
        f" degrees.shape={degrees.shape}."
    )
  degrees = jnp.broadcast_to(degrees, (images.shape[0],))
  return jax.vmap(_rotate_one)(images, degrees)


def random_rotate(key: jax.Array, images: jax.Array, *, max_degrees: float) -> jax.Array:
  """Rotates each image by an angle uniform in `[-max_degrees, max_degrees]`.

  Args:
    key: a `jax.random` key.
    images: float `[B, H, W, C]`.
    max_degrees: largest rotation, a Python number in [0, 180].

  Returns:
    `[B, H, W, C]`, the dtype of `images`; see `rotate` for the interpolation.

  Raises:
    ValueError: `images` is not a float `[B, H, W, C]` array, or
      `max_degrees` is out of range.
  """
  _check_images(images)
  _check_degrees(max_degrees)
  degrees = jax.random.uniform(
      key, (images.shape[0],), minval=-max_degrees, maxval=max_degrees)  # [B]
  return rotate(images, degrees)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Which augmentations `augment` applies; all off by default.

  Attributes:
    flip: mirror left to right with probability 1/2.
    crop_padding: pixels of zero padding for `random_crop`; 0 disables it.
    max_rotation: largest rotation in degrees for `random_rotate`, in
      [0, 180]; 0 disables it.
  """

  flip: bool = False
  crop_padding: int = 0
  max_rotation: float = 0.0

  def __post_init__(self):
    if not isinstance(self.flip, bool):
      raise ValueError(f"AugmentConfig.flip must be a bool; got flip={self.flip!r}.")
    _check_padding(self.crop_padding, "AugmentConfig.crop_padding")
    _check_degrees(self.max_rotation, "AugmentConfig.max_rotation")

  @property
  def enabled(self) -> bool:
    """Whether any augmentation is switched on."""
    return self.flip or self.crop_padding > 0 or self.max_rotation > 0


def augment(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
  """Applies the augmentations enabled in `config`: crop, then flip, then rotate.

  The key is split into three, `crop_key, flip_key, rotate_key =
  jax.random.split(key, 3)`, whatever is enabled, so switching one step on or
  off leaves the draws of the others unchanged.

  Args:
    key: a `jax.random` key.
    images: float `[B, H, W, C]`.
    config: the augmentations (static under `jax.jit`; it is hashable).

  Returns:
    `[B, H, W, C]`, the dtype of `images`; `images` itself when nothing is
    enabled.

  Raises:
    ValueError: `images` is not a float `[B, H, W, C]` array, or `config` is
      not an `AugmentConfig`.
  """
  if not isinstance(config, AugmentConfig):
    raise ValueError(f"config must be an AugmentConfig; got {type(config).__name__}.")
  _check_images(images)
  if not config.enabled:
    return images
  crop_key, flip_key, rotate_key = jax.random.split(key, 3)
  if config.crop_padding:
    images = random_crop(crop_key, images, padding=config.crop_padding)
  if config.flip:
    images = random_flip(flip_key, images)
  if config.max_rotation:
    images = random_rotate(rotate_key, images, max_degrees=config.max_rotation)
  return images
