"""Tests for dlopt.compress.pruning: global magnitude masks and masked fine-tuning."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dlopt.compress
from dlopt import compress
from dlopt.compress import pruning
from dlopt.models import CNN, ResidualCNN

JIT = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


def _params(seed=0):
  keys = jax.random.split(jax.random.key(seed), 6)
  return {
      "Conv_0": {"kernel": jax.random.normal(keys[0], (3, 3, 2, 4)),
                 "bias": jax.random.normal(keys[1], (4,))},
      "Dense_0": {"kernel": 0.1 * jax.random.normal(keys[2], (36, 8)),
                  "bias": jax.random.normal(keys[3], (8,))},
      "norm": {"scale": jax.random.normal(keys[4], (8,)),
               "bias": jax.random.normal(keys[5], (8,))},
      "Embed_0": {"embedding": jax.random.normal(keys[5], (5, 3))},
  }


def _prunable_values(params, flags, masks, keep):
  values = []
  for leaf, flag, mask in zip(jax.tree.leaves(params), jax.tree.leaves(flags),
                              jax.tree.leaves(masks)):
    if flag:
      values.append(np.abs(np.asarray(leaf))[(np.asarray(mask) == 1) == keep])
  return np.concatenate(values)


@pytest.mark.parametrize("module", [dlopt.compress, pruning],
                         ids=["package", "pruning"])
def test_docstring_examples_run(module):
  results = doctest.testmod(module, raise_on_error=False)
  assert results.attempted > 0 and results.failed == 0


def test_prunable_marks_kernels_and_embeddings_only():
  flags = compress.prunable(_params())
  assert flags == {
      "Conv_0": {"kernel": True, "bias": False},
      "Dense_0": {"kernel": True, "bias": False},
      "norm": {"scale": False, "bias": False},
      "Embed_0": {"embedding": True},
  }


def test_prunable_on_residual_cnn_skips_norms():
  model = ResidualCNN(num_classes=3, stem_features=4, stage_features=(4,),
                      blocks_per_stage=(1,), norm="batch")
  variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
  flags = compress.prunable(variables["params"])
  for path, flag in jax.tree_util.tree_leaves_with_path(flags):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    assert flag == name.endswith("kernel"), name


@JIT
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.9, 1.0])
def test_exact_global_sparsity_and_threshold(sparsity, use_jit):
  params = _params()
  fn = lambda p: compress.magnitude_masks(p, sparsity)
  masks = jax.jit(fn)(params) if use_jit else fn(params)
  flags = compress.prunable(params)
  n = sum(leaf.size for leaf, f in zip(jax.tree.leaves(params),
                                       jax.tree.leaves(flags)) if f)
  zeros = sum(int(np.sum(np.asarray(m) == 0)) for m in jax.tree.leaves(masks))
  assert zeros == round(sparsity * n)
  for m in jax.tree.leaves(masks):
    assert m.dtype == jnp.float32
    assert set(np.unique(np.asarray(m))) <= {0.0, 1.0}
  kept = _prunable_values(params, flags, masks, keep=True)
  pruned = _prunable_values(params, flags, masks, keep=False)
  if kept.size and pruned.size:
    assert kept.min() >= pruned.max()
  # The threshold is global: the small-valued dense kernel loses more.
  if 0 < sparsity < 1:
    dense = np.mean(np.asarray(masks["Dense_0"]["kernel"]) == 0)
    conv = np.mean(np.asarray(masks["Conv_0"]["kernel"]) == 0)
    assert dense > conv


def test_non_prunable_leaves_untouched():
  params = _params()
  masks = compress.magnitude_masks(params, 0.8)
  pruned = compress.apply_masks(params, masks)
  for group, name in [("Conv_0", "bias"), ("Dense_0", "bias"), ("norm", "scale"),
                      ("norm", "bias")]:
    np.testing.assert_array_equal(masks[group][name], 1.0)
    np.testing.assert_array_equal(pruned[group][name], params[group][name])
  kernel, mask = np.asarray(params["Conv_0"]["kernel"]), np.asarray(masks["Conv_0"]["kernel"])
  np.testing.assert_array_equal(pruned["Conv_0"]["kernel"], np.where(mask == 1, kernel, 0))


def test_deterministic_and_ties_broken_by_position():
  params = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.ones((3, 2))},
            "a_bias": {"bias": jnp.zeros(3)}}
  first = compress.magnitude_masks(params, 0.5)
  second = compress.magnitude_masks(params, 0.5)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  # All 12 magnitudes tie: the first 6 in leaf order ("a", row-major) go.
  np.testing.assert_array_equal(first["a"]["kernel"], 0.0)
  np.testing.assert_array_equal(first["b"]["kernel"], 1.0)
  np.testing.assert_array_equal(first["a_bias"]["bias"], 1.0)
  partial = compress.magnitude_masks(params, 0.25)  # 3 of 12
  np.testing.assert_array_equal(partial["a"]["kernel"], [[0, 0, 0], [1, 1, 1]])


def test_custom_prunable_pytree_and_callable():
  params = _params()
  only_dense = jax.tree.map(lambda _: False, params)
  only_dense["Dense_0"]["kernel"] = True
  for spec in (only_dense, lambda p: only_dense):
    masks = compress.magnitude_masks(params, 0.5, prunable=spec)
    assert int(np.sum(np.asarray(masks["Dense_0"]["kernel"]) == 0)) == 36 * 8 // 2
    np.testing.assert_array_equal(masks["Conv_0"]["kernel"], 1.0)
    np.testing.assert_array_equal(masks["Embed_0"]["embedding"], 1.0)


def test_sparsity_report():
  params = _params()
  masks = compress.magnitude_masks(params, 0.6)
  report = compress.sparsity_report(compress.apply_masks(params, masks), masks)
  n_prunable = 3 * 3 * 2 * 4 + 36 * 8 + 5 * 3
  n_all = n_prunable + 4 + 8 + 8 + 8
  assert report["pruned"] == round(0.6 * n_prunable)
  assert report["overall"] == pytest.approx(report["pruned"] / n_prunable)
  assert report["overall_all"] == pytest.approx(report["pruned"] / n_all)
  assert report["size"] == n_all
  assert report["nonzero"] == n_all - report["pruned"]
  assert report["unmasked_nonzero"] == 0
  conv = report["layers"]["Conv_0/kernel"]
  assert conv["size"] == 72 and conv["prunable"]
  assert conv["nonzero"] == int(np.sum(np.asarray(masks["Conv_0"]["kernel"])))
  assert conv["sparsity"] == pytest.approx(1 - conv["nonzero"] / 72)
  assert report["layers"]["norm/scale"] == {
      "size": 8, "nonzero": 8, "pruned": 0, "unmasked_nonzero": 0,
      "sparsity": 0.0, "prunable": False}
  # Unmasked params: the report counts what is really zero.
  raw = compress.sparsity_report(params, masks)
  assert raw["overall"] == 0.0 and raw["unmasked_nonzero"] == report["pruned"]


def test_sparse_bytes():
  params = _params()
  dense = compress.param_bytes(params)
  assert compress.sparse_bytes(params, jax.tree.map(jnp.ones_like, params)) == dense
  masks = compress.magnitude_masks(params, 0.9)
  got = compress.sparse_bytes(compress.apply_masks(params, masks), masks)
  # COO: 4-byte values + uint8 indices (leaves <= 256 entries) or uint16 (Dense_0).
  expected = 0
  for leaf, mask in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
    nnz = int(np.sum(np.asarray(mask)))
    index = 1 if leaf.size <= 256 else 2
    expected += min(4 * leaf.size, nnz * (4 + index))
  assert got == expected
  assert got < dense / 3


@JIT
def test_keep_masked_after_adamw_keeps_zeros(use_jit):
  params = _params()
  masks = compress.magnitude_masks(params, 0.7)
  params = compress.apply_masks(params, masks)
  tx = optax.chain(optax.adamw(0.05, weight_decay=0.1), compress.keep_masked(masks))
  state = tx.init(params)

  def step(params, state, key):
    # Random, never-zero gradients everywhere, pruned entries included.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    grads = jax.tree.unflatten(treedef, [1.0 + jax.random.normal(k, x.shape)
                                         for k, x in zip(keys, leaves)])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step) if use_jit else step
  start = params
  for key in jax.random.split(jax.random.key(3), 5):
    params, state = step(params, state, key)
  for p, p0, m in zip(jax.tree.leaves(params), jax.tree.leaves(start),
                      jax.tree.leaves(masks)):
    p, p0, m = np.asarray(p), np.asarray(p0), np.asarray(m)
    assert np.all(p[m == 0] == 0.0)  # exactly zero, not just small
    assert np.all(p[m == 1] != p0[m == 1])  # every kept weight moved
  report = compress.sparsity_report(params, masks)
  assert report["unmasked_nonzero"] == 0
  assert report["pruned"] == round(0.7 * (72 + 288 + 15))


def test_keep_masked_with_cnn_gradients():
  model = CNN(num_classes=3, features=(4,), dense_width=8)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  y = jnp.array([0, 1, 2, 0])
  params = model.init(jax.random.key(1), x)["params"]
  masks = compress.magnitude_masks(params, 0.8)
  params = compress.apply_masks(params, masks)
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), compress.keep_masked(masks))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state)
  assert compress.sparsity_report(params, masks)["overall"] == pytest.approx(0.8, abs=1e-3)


def test_bad_arguments_raise():
  params = _params()
  for bad in (-0.1, 1.5, "0.5", True, None):
    with pytest.raises(ValueError, match="sparsity"):
      compress.magnitude_masks(params, bad)
  with pytest.raises(ValueError, match="prunable"):
    compress.magnitude_masks(params, 0.5, prunable={"Conv_0": True})
  with pytest.raises(ValueError, match="prunable"):
    compress.magnitude_masks(params, 0.5,
                             prunable=jax.tree.map(lambda _: 1, params))
  with pytest.raises(ValueError, match="prunable leaf"):
    compress.magnitude_masks({"bias": jnp.ones(3)}, 0.5)
  with pytest.raises(ValueError, match="floating"):
    compress.magnitude_masks({"kernel": jnp.ones((2, 2), jnp.int32)}, 0.5)
  masks = compress.magnitude_masks(params, 0.5)
  del masks["norm"]
  for fn in (compress.apply_masks, compress.sparsity_report, compress.sparse_bytes):
    with pytest.raises(ValueError, match="masks"):
      fn(params, masks)
  masks = compress.magnitude_masks(params, 0.5)
  masks["Conv_0"]["kernel"] = masks["Conv_0"]["kernel"][0]
  with pytest.raises(ValueError, match=r"masks\['Conv_0'\]\['kernel'\]"):
    compress.apply_masks(params, masks)
  tx = compress.keep_masked(compress.magnitude_masks(params, 0.5))
  with pytest.raises(ValueError, match="masks"):
    tx.update({"Conv_0": params["Conv_0"]}, tx.init(params))
