"""Tests for dlopt.models: shapes, exact parameter counts, train/eval modes."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from dlopt import models
from dlopt.models import cnn as cnn_module
from dlopt.models import linear as linear_module
from dlopt.models import mlp as mlp_module

BATCH = 4

CASES = {
    "linear": (lambda: models.LinearRegression(features=3), (BATCH, 5)),
    "mlp": (lambda: models.MLP(widths=(16, 8), num_outputs=10,
                               dropout_rate=0.5), (BATCH, 8, 8)),
    "cnn": (lambda: models.CNN(num_classes=10, features=(4, 8), dense_width=16,
                               dropout_rate=0.5), (BATCH, 8, 8, 1)),
    "resnet_batch": (lambda: models.ResidualCNN(
        num_classes=10, stem_features=8, stage_features=(8, 16),
        blocks_per_stage=(1, 1), norm="batch", dropout_rate=0.5),
                     (BATCH, 8, 8, 3)),
    "resnet_group": (lambda: models.ResidualCNN(
        num_classes=10, stem_features=8, stage_features=(8, 16),
        blocks_per_stage=(2, 1), norm="group", norm_groups=4,
        dropout_rate=0.5), (BATCH, 8, 8, 3)),
}
OUT_FEATURES = {"linear": 3, "mlp": 10, "cnn": 10, "resnet_batch": 10,
                "resnet_group": 10}
DROPOUT_CASES = ["mlp", "cnn", "resnet_batch", "resnet_group"]


def _normal(shape, seed=0):
  """Standard-normal float32 array (numpy: no per-shape PRNG compile)."""
  return jnp.asarray(
      np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _random_variables(model, x, seed=1):
  """Variables shaped like `model.init(key, x)`, every entry random, nonzero.

  Flax's own init draws each parameter with a separately compiled PRNG
  kernel (about a second each on a small CPU); numpy keeps the tests fast.
  """
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  filled = {}
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    noise = rng.standard_normal(leaf.shape)
    if path[-1] == "kernel":
      value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
    elif path[-1] in ("scale", "var"):
      value = 1.0 + 0.2 * np.abs(noise)
    else:
      value = 0.1 * noise
    filled[path] = jnp.asarray(value, leaf.dtype)
  return traverse_util.unflatten_dict(filled)


@functools.cache
def _setup(name):
  """Returns (model, variables, x) for a case, cached across tests."""
  make, shape = CASES[name]
  model = make()
  x = _normal(shape, seed=0)
  return model, _random_variables(model, x), x


def _forward(model, variables, x, *, train, rng=None):
  """Applies `model` as a train step would: (output, batch_stats updates)."""
  rngs = None if rng is None else {"dropout": rng}
  return model.apply(variables, x, train=train, rngs=rngs,
                     mutable=["batch_stats"])


_jit_forward = jax.jit(_forward, static_argnums=0, static_argnames="train")


def _rng_for(train):
  """Dropout key in training; none in evaluation, as an eval step would."""
  return jax.random.key(3) if train else None


def _replace_tail(x):
  """`x` with every example but the first replaced by other random data."""
  return x.at[1:].set(_normal(x[1:].shape, seed=11))


def _shapes(tree):
  flat = traverse_util.flatten_dict(tree, sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def test_count_params_counts_every_scalar():
  tree = {"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4), jnp.zeros(())]}
  assert models.count_params(tree) == 2 * 3 + 4 + 1
  assert models.count_params(jax.eval_shape(lambda: tree)) == 11
  assert models.count_params({}) == 0


def test_linear_param_count():
  model = models.LinearRegression(features=3)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.ones((2, 5)))
  assert list(variables) == ["params"]
  assert models.count_params(variables) == 5 * 3 + 3


def test_mlp_param_count_on_digits():
  model = models.MLP(widths=(64, 64), num_outputs=10)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.ones((2, 8, 8)))
  expected = (8 * 8 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)
  assert expected == 8970
  assert models.count_params(variables["params"]) == expected


def test_cnn_param_count_on_mnist():
  model = models.CNN()
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.ones((2, 28, 28, 1)))
  conv1 = 3 * 3 * 1 * 32 + 32
  conv2 = 3 * 3 * 32 * 64 + 64
  flat = (28 // 2 // 2) * (28 // 2 // 2) * 64
  dense = flat * 128 + 128
  head = 128 * 10 + 10
  expected = conv1 + conv2 + dense + head
  assert expected == 421_642
  assert list(variables) == ["params"]
  assert models.count_params(variables["params"]) == expected


def test_cnn_pools_odd_sizes_down():
  model = models.CNN(features=(4, 4), dense_width=8)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.ones((1, 9, 11, 2)))
  assert variables["params"]["Dense_0"]["kernel"].shape == (2 * 2 * 4, 8)


def test_residual_cnn_structure():
  model = models.ResidualCNN(num_classes=10, stem_features=8,
                             stage_features=(8, 16), blocks_per_stage=(1, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.ones((2, 8, 8, 3)))
  assert sorted(variables) == ["batch_stats", "params"]

  def norm(prefix, c):
    return {f"{prefix}/scale": (c,), f"{prefix}/bias": (c,)}

  def stats(prefix, c):
    return {f"{prefix}/mean": (c,), f"{prefix}/var": (c,)}

  expected_params = {
      "stem_conv/kernel": (3, 3, 3, 8), **norm("stem_norm", 8),
      "stage0_block0/conv1/kernel": (3, 3, 8, 8),
      **norm("stage0_block0/norm1", 8),
      "stage0_block0/conv2/kernel": (3, 3, 8, 8),
      **norm("stage0_block0/norm2", 8),
      "stage1_block0/conv1/kernel": (3, 3, 8, 16),
      **norm("stage1_block0/norm1", 16),
      "stage1_block0/conv2/kernel": (3, 3, 16, 16),
      **norm("stage1_block0/norm2", 16),
      "stage1_block0/proj_conv/kernel": (1, 1, 8, 16),
      **norm("stage1_block0/proj_norm", 16),
      "head/kernel": (16, 10), "head/bias": (10,),
  }
  expected_stats = {
      **stats("stem_norm", 8),
      **stats("stage0_block0/norm1", 8), **stats("stage0_block0/norm2", 8),
      **stats("stage1_block0/norm1", 16), **stats("stage1_block0/norm2", 16),
      **stats("stage1_block0/proj_norm", 16),
  }
  assert _shapes(variables["params"]) == expected_params
  assert _shapes(variables["batch_stats"]) == expected_stats
  expected_count = (3 * 3 * 3 * 8 + 2 * 8
                    + 2 * (3 * 3 * 8 * 8 + 2 * 8)
                    + 3 * 3 * 8 * 16 + 3 * 3 * 16 * 16 + 2 * 2 * 16
                    + 1 * 1 * 8 * 16 + 2 * 16
                    + 16 * 10 + 10)
  assert models.count_params(variables["params"]) == expected_count
  assert models.count_params(variables["batch_stats"]) == 2 * (8 * 3 + 16 * 3)


def test_residual_cnn_downsamples_each_later_stage():
  model = models.ResidualCNN(stem_features=4, stage_features=(4, 8, 8),
                             blocks_per_stage=(1, 2, 1), norm="group",
                             norm_groups=2)
  x = jnp.ones((1, 16, 16, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  _, state = jax.eval_shape(
      functools.partial(model.apply, capture_intermediates=True,
                        mutable=["intermediates"]), variables, x)
  inter = state["intermediates"]
  spatial = {k: inter[k]["__call__"][0].shape
             for k in ["stage0_block0", "stage1_block0", "stage1_block1",
                       "stage2_block0"]}
  assert spatial == {"stage0_block0": (1, 16, 16, 4),
                     "stage1_block0": (1, 8, 8, 8),
                     "stage1_block1": (1, 8, 8, 8),
                     "stage2_block0": (1, 4, 4, 8)}
  assert "proj_conv" not in inter["stage1_block1"]
  assert "proj_conv" in inter["stage2_block0"]


def test_linear_matches_numpy():
  model, variables, x = _setup("linear")
  w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
  assert np.all(b != 0)
  out = model.apply(variables, x)
  np.testing.assert_allclose(out, np.asarray(x, np.float64) @ w + b,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", sorted(mlp_module.ACTIVATIONS))
def test_mlp_activation_matches_reference(activation):
  reference = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu,
               "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
               "elu": jax.nn.elu, "leaky_relu": jax.nn.leaky_relu}[activation]
  model = models.MLP(widths=(6,), num_outputs=3, activation=activation)
  x = _normal((BATCH, 2, 3))
  variables = _random_variables(model, x)
  p = variables["params"]
  h = reference(x.reshape(BATCH, 6) @ p["Dense_0"]["kernel"]
                + p["Dense_0"]["bias"])
  expected = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  np.testing.assert_allclose(model.apply(variables, x), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("train", [False, True])
def test_output_shape_dtype_and_jit(name, train):
  model, variables, x = _setup(name)
  eager, eager_updates = _forward(model, variables, x, train=train,
                                  rng=_rng_for(train))
  jitted, jitted_updates = _jit_forward(model, variables, x, train=train,
                                        rng=_rng_for(train))
  assert eager.shape == jitted.shape == (BATCH, OUT_FEATURES[name])
  assert eager.dtype == jitted.dtype == jnp.float32
  assert np.all(np.isfinite(eager))
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6,
                                 atol=1e-6), jitted_updates, eager_updates)


@pytest.mark.parametrize("name", DROPOUT_CASES)
def test_dropout_train_vs_eval(name):
  model, variables, x = _setup(name)

  def run(train, seed):
    rng = None if seed is None else jax.random.key(seed)
    return _jit_forward(model, variables, x, train=train, rng=rng)[0]

  np.testing.assert_array_equal(run(True, 3), run(True, 3))
  assert not np.allclose(run(True, 3), run(True, 4))
  np.testing.assert_array_equal(run(False, None), run(False, 3))
  np.testing.assert_array_equal(run(False, None), run(False, 4))
  assert not np.allclose(run(False, None), run(True, 3))


@pytest.mark.parametrize("name", DROPOUT_CASES)
def test_dropout_in_train_needs_rng(name):
  model, variables, x = _setup(name)
  with pytest.raises(Exception, match="dropout"):
    _forward(model, variables, x, train=True)


def test_no_dropout_needs_no_rng():
  model = models.CNN(features=(4,), dense_width=8)
  x = _normal((2, 4, 4, 1))
  variables = _random_variables(model, x)
  np.testing.assert_array_equal(model.apply(variables, x, train=True),
                                model.apply(variables, x, train=False))


def _stem_conv(variables, x):
  kernel = variables["params"]["stem_conv"]["kernel"]
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_batch_norm_train_updates_running_stats():
  model, variables, x = _setup("resnet_batch")
  _, updates = _jit_forward(model, variables, x, train=True,
                            rng=_rng_for(True))
  assert set(updates) == {"batch_stats"}
  old_stats = variables["batch_stats"]
  new_stats = updates["batch_stats"]
  assert jax.tree.structure(new_stats) == jax.tree.structure(old_stats)
  for old, new in zip(jax.tree.leaves(old_stats), jax.tree.leaves(new_stats)):
    assert not np.allclose(old, new)

  h = _stem_conv(variables, x)  # [batch, height, width, stem_features]
  old, new = old_stats["stem_norm"], new_stats["stem_norm"]
  np.testing.assert_allclose(
      new["mean"], 0.9 * old["mean"] + 0.1 * jnp.mean(h, axis=(0, 1, 2)),
      rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      new["var"], 0.9 * old["var"] + 0.1 * jnp.var(h, axis=(0, 1, 2)),
      rtol=1e-4, atol=1e-6)


def test_batch_norm_eval_uses_running_averages():
  model, variables, x = _setup("resnet_batch")
  out, updates = _jit_forward(model, variables, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"],
               variables["batch_stats"])

  other_x = _replace_tail(x)
  other_out, _ = _jit_forward(model, variables, other_x, train=False)
  np.testing.assert_allclose(other_out[0], out[0], rtol=1e-5, atol=1e-6)
  train_out, _ = _jit_forward(model, variables, x, train=True,
                              rng=_rng_for(True))
  train_other, _ = _jit_forward(model, variables, other_x, train=True,
                                rng=_rng_for(True))
  assert not np.allclose(train_other[0], train_out[0], atol=1e-4)

  stem = variables["batch_stats"]["stem_norm"]
  shifted = {"params": variables["params"], "batch_stats": {
      **variables["batch_stats"],
      "stem_norm": {"mean": stem["mean"] + 1.0, "var": stem["var"] * 2.0},
  }}
  shifted_out, _ = _jit_forward(model, shifted, x, train=False)
  assert not np.allclose(shifted_out, out)


def test_group_norm_has_no_batch_stats():
  model, variables, x = _setup("resnet_group")
  assert list(variables) == ["params"]
  out, updates = _jit_forward(model, variables, x, train=True,
                              rng=_rng_for(True))
  assert updates == {}
  assert out.shape == (BATCH, 10)
  norm_params = variables["params"]["stage0_block0"]["norm1"]
  assert sorted(norm_params) == ["bias", "scale"]
  eval_out, _ = _jit_forward(model, variables, x, train=False)
  other_out, _ = _jit_forward(model, variables, _replace_tail(x), train=False)
  np.testing.assert_allclose(other_out[0], eval_out[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_finite_and_nonzero(name):
  model, variables, x = _setup(name)
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  weights = _normal((BATCH, OUT_FEATURES[name]), seed=7)

  def loss(params):
    out, _ = _forward(model, {"params": params, **rest}, x, train=True,
                      rng=_rng_for(True))
    return jnp.sum(out * weights)

  grads = jax.jit(jax.grad(loss))(params)
  flat = traverse_util.flatten_dict(grads, sep="/")
  assert flat.keys() == traverse_util.flatten_dict(params, sep="/").keys()
  for path, g in flat.items():
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path


@pytest.mark.parametrize("name, shape", [
    ("linear", (BATCH,)),
    ("linear", (BATCH, 5, 1)),
    ("mlp", (BATCH,)),
    ("cnn", (BATCH, 64)),
    ("cnn", (BATCH, 8, 8)),
    ("resnet_batch", (BATCH, 8, 8, 3, 1)),
])
def test_wrong_ndim_raises(name, shape):
  model = CASES[name][0]()
  with pytest.raises(ValueError, match=r"x\.shape=") as info:
    model.init(jax.random.key(0), jnp.ones(shape))
  assert str(shape) in str(info.value)


def test_cnn_wrong_ndim_message():
  with pytest.raises(ValueError) as info:
    models.CNN().init(jax.random.key(0), jnp.ones((32, 784)))
  assert str(info.value) == ("CNN expects images [batch, height, width, "
                             "channels]; got x.shape=(32, 784)")


def test_bad_activation_raises():
  with pytest.raises(ValueError) as info:
    models.MLP(activation="swish")
  message = str(info.value)
  assert "activation" in message and "'swish'" in message
  for name in mlp_module.ACTIVATIONS:
    assert name in message


@pytest.mark.parametrize("cls", [models.ResidualCNN,
                                 functools.partial(models.ResidualBlock, 8)])
def test_bad_norm_raises(cls):
  with pytest.raises(ValueError, match=r"norm.*'layer'") as info:
    cls(norm="layer")
  assert "'batch'" in str(info.value) and "'group'" in str(info.value)


@pytest.mark.parametrize("make, field", [
    (lambda: models.LinearRegression(features=0), "features"),
    (lambda: models.MLP(widths=(64, 0)), "widths"),
    (lambda: models.MLP(num_outputs=0), "num_outputs"),
    (lambda: models.MLP(dropout_rate=1.0), "dropout_rate"),
    (lambda: models.MLP(dropout_rate=-0.1), "dropout_rate"),
    (lambda: models.CNN(num_classes=0), "num_classes"),
    (lambda: models.CNN(features=(32, -1)), "features"),
    (lambda: models.CNN(dense_width=0), "dense_width"),
    (lambda: models.CNN(dropout_rate=1.5), "dropout_rate"),
    (lambda: models.ResidualCNN(num_classes=0), "num_classes"),
    (lambda: models.ResidualCNN(stem_features=0), "stem_features"),
    (lambda: models.ResidualCNN(stage_features=()), "stage_features"),
    (lambda: models.ResidualCNN(blocks_per_stage=(1, 0)), "blocks_per_stage"),
    (lambda: models.ResidualCNN(blocks_per_stage=(1,)), "blocks_per_stage"),
    (lambda: models.ResidualCNN(norm="group", norm_groups=5), "norm_groups"),
    (lambda: models.ResidualCNN(norm_groups=0), "norm_groups"),
    (lambda: models.ResidualCNN(dropout_rate=1.0), "dropout_rate"),
    (lambda: models.ResidualBlock(0), "features"),
    (lambda: models.ResidualBlock(8, strides=0), "strides"),
    (lambda: models.ResidualBlock(6, norm="group", norm_groups=4),
     "norm_groups"),
])
def test_bad_fields_raise(make, field):
  with pytest.raises(ValueError, match=field):
    make()


def test_sequence_fields_become_tuples_and_hash():
  from_lists = [models.MLP(widths=[16, 8]), models.CNN(features=[4, 8]),
                models.ResidualCNN(stage_features=[8, 16],
                                   blocks_per_stage=[1, 2])]
  from_tuples = [models.MLP(widths=(16, 8)), models.CNN(features=(4, 8)),
                 models.ResidualCNN(stage_features=(8, 16),
                                    blocks_per_stage=(1, 2))]
  for a, b in zip(from_lists, from_tuples):
    assert a == b
    assert hash(a) == hash(b)


def test_public_api():
  assert sorted(models.__all__) == sorted(
      ["CNN", "DecoderLM", "LinearRegression", "MLP", "MultiHeadSelfAttention",
       "RecurrentClassifier", "RecurrentStack", "ResidualBlock", "ResidualCNN", "TransformerBlock", "TransformerEncoderClassifier",
       "count_params", "summary"])
  for name in models.__all__:
    assert hasattr(models, name)


@pytest.mark.parametrize("module", [models, linear_module, mlp_module,
                                    cnn_module])
def test_docstring_synopsis_runs(module):
  result = doctest.testmod(module, verbose=False)
  assert result.attempted > 0
  assert result.failed == 0
