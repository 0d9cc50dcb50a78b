"""Tests for dlopt.data.augment."""

import dataclasses
import doctest
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt.cli import ConfigParser

augment_module = importlib.import_module("dlopt.data.augment")
AugmentConfig = augment_module.AugmentConfig
augment = augment_module.augment
random_crop = augment_module.random_crop
random_flip = augment_module.random_flip
random_rotate = augment_module.random_rotate
rotate = augment_module.rotate

FULL = AugmentConfig(flip=True, crop_padding=2, max_rotation=20.0)

# name -> (key, images) -> images; every random op with its arguments fixed.
OPS = {
    "flip": functools.partial(random_flip, prob=0.5),
    "crop": functools.partial(random_crop, padding=2),
    "rotate": functools.partial(random_rotate, max_degrees=30.0),
    "augment": functools.partial(augment, config=FULL),
}


def _images(shape=(8, 6, 7, 3), seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


def _unique_images(shape=(16, 5, 6, 2)):
  """Images of distinct values > 0 (no value is a padding zero)."""
  return jnp.arange(1, np.prod(shape) + 1, dtype=jnp.float32).reshape(shape)


def _blob(size=21, centre=(10.0, 10.0), sigma=2.0):
  ys, xs = np.mgrid[:size, :size]
  blob = np.exp(-((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2) / (2 * sigma**2))
  return jnp.asarray(blob, jnp.float32)[None, :, :, None]  # [1, H, W, 1]


# Shapes, dtypes, keys.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", OPS)
def test_shape_and_dtype_kept(name, dtype):
  images = _images(dtype=dtype)
  out = OPS[name](jax.random.key(0), images)
  assert isinstance(out, jax.Array)
  assert out.shape == images.shape and out.dtype == dtype


@pytest.mark.parametrize("name", OPS)
def test_same_key_same_result_other_key_other_result(name):
  images = _images()
  first = OPS[name](jax.random.key(1), images)
  again = OPS[name](jax.random.key(1), images)
  other = OPS[name](jax.random.key(2), images)
  np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
  assert not np.array_equal(np.asarray(first), np.asarray(other))


@pytest.mark.parametrize("name", OPS)
def test_each_example_draws_its_own_transform(name):
  images = jnp.broadcast_to(_unique_images((1, 6, 7, 1)), (16, 6, 7, 1))
  out = np.asarray(OPS[name](jax.random.key(3), images))
  assert len({example.tobytes() for example in out}) > 1


@pytest.mark.parametrize("name", OPS)
def test_jit_matches_eager(name):
  images = _images()
  key = jax.random.key(4)
  eager = OPS[name](key, images)
  jitted = jax.jit(OPS[name])(key, images)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)


def test_static_arguments_under_jit():
  images, key = _images(), jax.random.key(5)
  flip = jax.jit(random_flip, static_argnames="prob")(key, images, prob=0.3)
  crop = jax.jit(random_crop, static_argnames="padding")(key, images, padding=1)
  rot = jax.jit(random_rotate, static_argnames="max_degrees")(key, images, max_degrees=5.0)
  aug = jax.jit(augment, static_argnums=2)(key, images, FULL)
  np.testing.assert_array_equal(flip, random_flip(key, images, prob=0.3))
  np.testing.assert_array_equal(crop, random_crop(key, images, padding=1))
  np.testing.assert_allclose(rot, random_rotate(key, images, max_degrees=5.0), atol=1e-5)
  np.testing.assert_allclose(aug, augment(key, images, FULL), atol=1e-5)


def test_raw_uint32_keys_work():
  images = _images()
  out = augment(jax.random.PRNGKey(0), images, FULL)
  assert out.shape == images.shape


# random_flip.


def test_flip_gives_the_image_or_its_exact_mirror():
  images = _images((64, 4, 5, 2))
  out = np.asarray(random_flip(jax.random.key(0), images))
  x = np.asarray(images)
  same = np.all(out == x, axis=(1, 2, 3))
  mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert same.any() and mirrored.any()


@pytest.mark.parametrize("prob, expect_mirror", [(0.0, False), (1.0, True), (1, True)])
def test_flip_probability_extremes(prob, expect_mirror):
  images = _images()
  out = np.asarray(random_flip(jax.random.key(0), images, prob=prob))
  expected = np.asarray(images)[:, :, ::-1] if expect_mirror else np.asarray(images)
  np.testing.assert_array_equal(out, expected)


def test_flip_rate_follows_prob():
  images = _images((2000, 2, 3, 1))
  out = np.asarray(random_flip(jax.random.key(0), images, prob=0.25))
  mirrored = np.all(out == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
  assert 0.2 < mirrored.mean() < 0.3


# random_crop.


def test_crop_without_padding_is_identity():
  images = _images()
  np.testing.assert_array_equal(random_crop(jax.random.key(0), images, padding=0), images)


@pytest.mark.parametrize("padding", [1, 3, 7])
def test_every_crop_is_a_window_of_the_padded_image(padding):
  images = _unique_images()
  out = np.asarray(random_crop(jax.random.key(padding), images, padding=padding))
  _, h, w, _ = images.shape
  padded = np.pad(np.asarray(images), ((0, 0), (padding,) * 2, (padding,) * 2, (0, 0)))
  offsets = set()
  for b in range(images.shape[0]):
    windows = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
               if np.array_equal(padded[b, dy:dy + h, dx:dx + w], out[b])]
    assert windows, f"example {b} is no window of the padded image"
    if len(windows) == 1:  # padding 7 > H allows all-zero crops, which fit many windows
      offsets.add(windows[0])
  assert len(offsets) > 1


def test_crop_offsets_cover_every_position():
  padding, images = 1, _unique_images((400, 3, 3, 1))
  out = np.asarray(random_crop(jax.random.key(0), images, padding=padding))
  # Example b's value images[b, 1, 1] lands at (1 + p - dy, 1 + p - dx).
  centres = np.asarray(images)[:, 1, 1, 0]
  positions = {tuple(np.argwhere(out[b, :, :, 0] == centres[b])[0]) for b in range(400)}
  assert positions == {(y, x) for y in range(3) for x in range(3)}


# rotate and random_rotate.


def test_rotate_by_zero_is_identity():
  images = _images()
  np.testing.assert_allclose(rotate(images, 0.0), images, atol=1e-6)
  np.testing.assert_allclose(
      random_rotate(jax.random.key(0), images, max_degrees=0.0), images, atol=1e-6)


@pytest.mark.parametrize("degrees, k", [(90.0, 1), (-90.0, -1), (180.0, 2), (270.0, 3)])
@pytest.mark.parametrize("size", [6, 7])
def test_right_angles_match_rot90(degrees, k, size):
  images = _images((3, size, size, 2))
  out = np.asarray(rotate(images, degrees))
  expected = np.rot90(np.asarray(images), k, axes=(1, 2))
  np.testing.assert_allclose(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-4)


def test_per_example_angles():
  images = _images((2, 5, 5, 1))
  out = np.asarray(rotate(images, jnp.array([90.0, 0.0])))
  np.testing.assert_allclose(out[0], np.rot90(np.asarray(images[0]), 1), atol=1e-4)
  np.testing.assert_allclose(out[1], np.asarray(images[1]), atol=1e-6)


@pytest.mark.parametrize("degrees", [3.0, -7.5, 12.0])
def test_small_rotation_roughly_preserves_mass(degrees):
  image = _blob()
  out = rotate(image, degrees)
  assert float(out.min()) >= 0.0
  np.testing.assert_allclose(float(out.sum()), float(image.sum()), rtol=0.02)


def test_rotation_leaves_zeros_in_the_corners():
  out = np.asarray(rotate(jnp.ones((1, 9, 9, 1)), 45.0))
  assert out[0, 0, 0, 0] == 0.0 and out[0, 4, 4, 0] == pytest.approx(1.0)


def test_random_angles_stay_within_max_degrees():
  # A blob right of the centre: its centroid's angle is the rotation's angle.
  max_degrees, n = 30.0, 64
  images = jnp.broadcast_to(_blob(centre=(10.0, 16.0), sigma=1.5), (n, 21, 21, 1))
  out = np.asarray(random_rotate(jax.random.key(0), images, max_degrees=max_degrees))[..., 0]
  ys, xs = np.mgrid[:21, :21]
  mass = out.sum(axis=(1, 2))
  cy = (out * ys).sum(axis=(1, 2)) / mass
  cx = (out * xs).sum(axis=(1, 2)) / mass
  angles = np.degrees(np.arctan2(-(cy - 10.0), cx - 10.0))  # counter-clockwise, rows down
  assert np.all(np.abs(angles) <= max_degrees + 1.0)
  assert angles.min() < -max_degrees / 2 and angles.max() > max_degrees / 2


# AugmentConfig and augment.


def test_config_defaults_disable_everything_and_augment_is_identity():
  config = AugmentConfig()
  assert not config.enabled
  images = _images()
  assert augment(jax.random.key(0), images, config) is images


@pytest.mark.parametrize(
    "changes", [{"flip": True}, {"crop_padding": 1}, {"max_rotation": 0.5}])
def test_config_enabled(changes):
  assert AugmentConfig(**changes).enabled


def test_config_is_frozen_and_hashable():
  with pytest.raises(dataclasses.FrozenInstanceError):
    FULL.flip = False
  assert hash(FULL) == hash(AugmentConfig(flip=True, crop_padding=2, max_rotation=20.0))


def test_augment_uses_fixed_split_keys():
  images, key = _images(), jax.random.key(7)
  crop_key, flip_key, rotate_key = jax.random.split(key, 3)
  np.testing.assert_array_equal(
      augment(key, images, AugmentConfig(flip=True)), random_flip(flip_key, images))
  np.testing.assert_array_equal(
      augment(key, images, AugmentConfig(crop_padding=2)),
      random_crop(crop_key, images, padding=2))
  expected = random_rotate(
      rotate_key,
      random_flip(flip_key, random_crop(crop_key, images, padding=2)),
      max_degrees=20.0)
  np.testing.assert_allclose(augment(key, images, FULL), expected, atol=1e-6)


def test_config_becomes_command_line_flags():
  parser = ConfigParser("test")
  parser.add_config("augment", AugmentConfig())
  parsed = parser.parse(["--flip", "true", "--crop-padding", "4", "--max-rotation", "15"])
  assert parsed.configs["augment"] == AugmentConfig(flip=True, crop_padding=4, max_rotation=15.0)
  with pytest.raises(SystemExit):
    parser.parse(["--crop-padding", "-1"])


# Bad arguments.


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize(
    "images",
    [jnp.ones((4, 4, 3)), jnp.ones((2, 4, 4, 3, 1)), jnp.ones((2, 4, 4, 3), jnp.int32)],
    ids=["3d", "5d", "int"])
def test_bad_images_raise(name, images):
  with pytest.raises(ValueError, match="images must be a float array"):
    OPS[name](jax.random.key(0), images)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda k, x: random_flip(k, x, prob=1.5), "prob"),
        (lambda k, x: random_flip(k, x, prob=-0.1), "prob"),
        (lambda k, x: random_flip(k, x, prob=True), "prob"),
        (lambda k, x: random_flip(k, x, prob=float("nan")), "prob"),
        (lambda k, x: random_crop(k, x, padding=-1), "padding"),
        (lambda k, x: random_crop(k, x, padding=1.0), "padding"),
        (lambda k, x: random_rotate(k, x, max_degrees=-5.0), "max_degrees"),
        (lambda k, x: random_rotate(k, x, max_degrees=181.0), "max_degrees"),
        (lambda k, x: random_rotate(k, x, max_degrees=float("inf")), "max_degrees"),
        (lambda k, x: rotate(x, jnp.zeros(3)), "degrees"),
        (lambda k, x: rotate(x, jnp.zeros((2, 1))), "degrees"),
        (lambda k, x: augment(k, x, {"flip": True}), "config"),
    ],
)
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call(jax.random.key(0), jnp.ones((2, 4, 4, 1)))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"flip": 1}, "flip"),
        ({"crop_padding": -2}, "crop_padding"),
        ({"crop_padding": 2.0}, "crop_padding"),
        ({"max_rotation": -1.0}, "max_rotation"),
        ({"max_rotation": 270.0}, "max_rotation"),
        ({"max_rotation": float("nan")}, "max_rotation"),
    ],
)
def test_bad_config_raises(changes, field):
  with pytest.raises(ValueError, match=f"AugmentConfig.{field}"):
    AugmentConfig(**changes)


def test_docstring_example_runs():
  result = doctest.testmod(augment_module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
