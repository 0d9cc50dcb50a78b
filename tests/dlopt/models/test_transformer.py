"""Tests for the attention and transformer models: shapes, exact parameter counts,
causality, padding and segment isolation, GQA, agreement with a hand-written
attention, dropout, gradients, validation, and a short training run."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from dlopt import models
from dlopt.models import attention as attention_module
from dlopt.models import transformer as transformer_module

B, T, F = 2, 6, 5            # batch, sequence length, input features
WIDTH, HEADS, VOCAB = 16, 4, 11


def _normal(shape, seed=0):
  """Standard-normal float32 array (numpy: no per-shape PRNG compile)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


def _random_variables(model, *args, seed=1, **kwargs):
  """Variables shaped like `model.init(key, ...)`, every entry random and nonzero.

  Flax's init compiles one PRNG kernel per parameter; numpy keeps the tests fast.
  """
  abstract = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), *args)
  rng = np.random.default_rng(seed)
  filled = {}
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    noise = rng.standard_normal(leaf.shape)
    if path[-1] == "kernel":
      fan_in = np.prod(leaf.shape[:2]) if path[-2] == "out" else leaf.shape[0]
      value = noise / np.sqrt(fan_in)
    elif path[-1] == "scale":
      value = 1.0 + 0.2 * np.abs(noise)
    elif path[-1] in ("embedding", "pos_embed", "cls"):
      value = 0.5 * noise
    else:
      value = 0.1 * noise
    filled[path] = jnp.asarray(value, leaf.dtype)
  return traverse_util.unflatten_dict(filled)


def _classifier(**kwargs):
  kwargs = dict(num_classes=3, num_layers=1, width=WIDTH, num_heads=HEADS, max_len=16,
                mlp_ratio=2.0) | kwargs
  return models.TransformerEncoderClassifier(**kwargs)


def _lm(**kwargs):
  kwargs = dict(vocab_size=VOCAB, num_layers=1, width=WIDTH, num_heads=HEADS, max_len=16,
                mlp_ratio=2.0) | kwargs
  return models.DecoderLM(**kwargs)


@functools.cache
def _lm_setup(**kwargs):
  model = _lm(**kwargs)
  x = _tokens((B, 10))
  return model, _random_variables(model, x), x


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def _apply(model, variables, x, *, train=False, **kwargs):
  """`model.apply` under one jit (eager Flax dispatches and compiles op by op)."""
  return model.apply(variables, x, train=train, **kwargs)


def _abstract_params(model, *args):
  return jax.eval_shape(model.init, jax.random.key(0), *args)["params"]


# ---------------------------------------------------------------- shapes and counts


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("tokens", [False, True])
def test_classifier_shapes_and_dtype(pooling, tokens):
  model = _classifier(pooling=pooling, vocab_size=VOCAB if tokens else None)
  x = _tokens((B, T)) if tokens else _normal((B, T, F))
  variables = _random_variables(model, x)
  logits = _apply(model, variables, x, lengths=jnp.array([T, 3]))
  assert logits.shape == (B, 3) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("tie", [True, False])
def test_decoder_shapes_and_dtype(tie):
  model, variables, x = _lm_setup(tie_embeddings=tie)
  logits = _apply(model, variables, x)
  assert logits.shape == (B, 10, VOCAB) and logits.dtype == jnp.float32
  assert ("lm_head" in variables["params"]) == (not tie)


def test_block_and_attention_keep_the_input_shape():
  x = _normal((B, T, WIDTH))
  for module in (models.TransformerBlock(num_heads=HEADS, num_kv_heads=2),
                 models.MultiHeadSelfAttention(num_heads=HEADS, causal=True)):
    y = _apply(module, _random_variables(module, x), x, lengths=jnp.array([T, 2]))
    assert y.shape == x.shape and y.dtype == x.dtype


def _block_params(width, heads, kv_heads, hidden):
  head_dim = width // heads
  attention = width * heads * head_dim + 2 * width * kv_heads * head_dim \
      + heads * head_dim * width                                 # q, k, v, out; no biases
  mlp = width * hidden + hidden + hidden * width + width
  return 2 * (2 * width) + attention + mlp                       # two LayerNorms


@pytest.mark.parametrize("kv_heads", [None, 2])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_parameter_count(kv_heads, pooling):
  layers, max_len, classes, hidden = 2, 16, 3, 32                # hidden = 2.0 * WIDTH
  model = _classifier(num_layers=layers, num_kv_heads=kv_heads, pooling=pooling)
  count = models.count_params(_abstract_params(model, _normal((B, T, F))))
  expected = (F * WIDTH + WIDTH                                  # input projection
              + max_len * WIDTH                                  # positions
              + (WIDTH if pooling == "cls" else 0)               # [CLS]
              + layers * _block_params(WIDTH, HEADS, kv_heads or HEADS, hidden)
              + 2 * WIDTH                                        # final LayerNorm
              + WIDTH * classes + classes)                       # head
  assert count == expected


@pytest.mark.parametrize("tie", [True, False])
def test_decoder_parameter_count(tie):
  layers, max_len, hidden = 2, 16, 32
  model = _lm(num_layers=layers, num_kv_heads=1, tie_embeddings=tie)
  count = models.count_params(_abstract_params(model, _tokens((B, T))))
  expected = (VOCAB * WIDTH + max_len * WIDTH
              + layers * _block_params(WIDTH, HEADS, 1, hidden)
              + 2 * WIDTH + (0 if tie else WIDTH * VOCAB))
  assert count == expected


def test_rotary_decoder_has_no_position_table():
  learned = models.count_params(_abstract_params(_lm(), _tokens((B, T))))
  rotary = _abstract_params(_lm(rope_base=10_000.0), _tokens((B, T)))
  assert "pos_embed" not in rotary
  assert models.count_params(rotary) == learned - 16 * WIDTH


# ------------------------------------------------------------ what sees what


@pytest.mark.parametrize("rope_base", [None, 10_000.0])
def test_decoder_is_causal(rope_base):
  model, variables, x = _lm_setup(rope_base=rope_base)
  base = np.asarray(_apply(model, variables, x))
  for t in (0, 4, 9):
    changed = x.at[:, t].set((x[:, t] + 1) % VOCAB)
    out = np.asarray(_apply(model, variables, changed))
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert np.abs(out[:, t:] - base[:, t:]).max(axis=-1).min() > 0  # every later position


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_ignores_padding(pooling):
  model = _classifier(pooling=pooling, vocab_size=VOCAB)
  x = _tokens((B, T))
  variables = _random_variables(model, x)
  lengths = jnp.array([4, 2])
  base = _apply(model, variables, x, lengths=lengths)
  noise = _tokens((B, T), seed=5)
  past = jnp.arange(T)[None] >= lengths[:, None]
  changed = jnp.where(past, (x + 1 + noise % (VOCAB - 1)) % VOCAB, x)
  assert (changed != x).sum() == int((T - lengths).sum())
  np.testing.assert_allclose(_apply(model, variables, changed, lengths=lengths), base,
                             rtol=1e-6, atol=1e-6)
  # ... but a change inside the length does matter.
  inside = x.at[:, 0].set((x[:, 0] + 1) % VOCAB)
  moved = _apply(model, variables, inside, lengths=lengths)
  assert np.abs(np.asarray(moved - base)).min() > 0


@pytest.mark.parametrize("rope_base", [None, 10_000.0])
def test_decoder_segments_are_isolated_and_match_unpacked(rope_base):
  model, variables, _ = _lm_setup(rope_base=rope_base)
  a, b = _tokens((B, 4), seed=2), _tokens((B, 6), seed=3)
  packed = jnp.concatenate([a, b], axis=1)                       # [B, 10]
  segments = jnp.array([[1] * 4 + [2] * 6] * B)
  out = _apply(model, variables, packed, segment_ids=segments)
  changed = packed.at[:, 4:].set((packed[:, 4:] + 1) % VOCAB)
  out_changed = _apply(model, variables, changed, segment_ids=segments)
  np.testing.assert_array_equal(out_changed[:, :4], out[:, :4])
  assert np.abs(np.asarray(out_changed[:, 4:] - out[:, 4:])).max() > 0
  # Positions restart per segment: each segment gets the logits it gets alone.
  np.testing.assert_allclose(out[:, :4], _apply(model, variables, a), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[:, 4:], _apply(model, variables, b), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- attention by hand, GQA


def _attention_by_hand(params, x, *, num_heads, causal, lengths, mask):
  """softmax(q k^T / sqrt(Dh)) v with jnp, from the module's own parameters."""
  p = params
  q = jnp.einsum("btf,fhd->bthd", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = jnp.einsum("btf,fhd->bthd", x, p["key"]["kernel"]) + p["key"]["bias"]
  v = jnp.einsum("btf,fhd->bthd", x, p["value"]["kernel"]) + p["value"]["bias"]
  group = num_heads // k.shape[2]
  k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  seq = x.shape[1]
  allowed = jnp.ones((x.shape[0], 1, seq, seq), bool) & mask[:, None]
  if causal:
    allowed &= jnp.tril(jnp.ones((seq, seq), bool))
  allowed &= (jnp.arange(seq) < lengths[:, None])[:, None, None, :]
  probs = jax.nn.softmax(jnp.where(allowed, logits, -1e30), axis=-1)
  y = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  y = jnp.where((jnp.arange(seq) < lengths[:, None])[..., None, None], y, 0.0)  # padding rows
  return jnp.einsum("bthd,hdf->btf", y, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("kv_heads, causal", [(None, False), (2, True), (1, False)])
def test_attention_matches_hand_written(kv_heads, causal):
  layer = models.MultiHeadSelfAttention(num_heads=HEADS, num_kv_heads=kv_heads, causal=causal,
                                        use_bias=True)
  x = _normal((B, T, WIDTH))
  lengths = jnp.array([T, 4])
  mask = jnp.asarray(np.random.default_rng(7).random((B, T, T)) < 0.8) | jnp.eye(T, dtype=bool)
  variables = _random_variables(layer, x)
  params = variables["params"]
  head_dim = WIDTH // HEADS
  assert params["query"]["kernel"].shape == (WIDTH, HEADS, head_dim)
  for name in ("key", "value"):
    assert params[name]["kernel"].shape == (WIDTH, kv_heads or HEADS, head_dim)
  out = _apply(layer, variables, x, lengths=lengths, mask=mask)
  want = _attention_by_hand(params, x, num_heads=HEADS, causal=causal, lengths=lengths,
                            mask=mask)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  # A [B, 1, T, T] mask means the same as [B, T, T].
  np.testing.assert_allclose(
      _apply(layer, variables, x, lengths=lengths, mask=mask[:, None]), out,
      rtol=1e-6, atol=1e-6)


def test_attention_head_dim_override():
  layer = models.MultiHeadSelfAttention(num_heads=2, num_kv_heads=1, head_dim=3)
  params = _abstract_params(layer, _normal((B, T, 5)))
  assert params["query"]["kernel"].shape == (5, 2, 3)
  assert params["key"]["kernel"].shape == (5, 1, 3)
  assert params["out"]["kernel"].shape == (2, 3, 5)
  assert "bias" not in params["query"]


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gqa_decoder_runs_with_smaller_kv_projections(kv_heads):
  model = _lm(num_kv_heads=kv_heads)
  x = _tokens((B, T))
  variables = _random_variables(model, x)
  attention = variables["params"]["block_0"]["attention"]
  assert attention["key"]["kernel"].shape == (WIDTH, kv_heads, WIDTH // HEADS)
  assert attention["value"]["kernel"].shape == (WIDTH, kv_heads, WIDTH // HEADS)
  assert attention["query"]["kernel"].shape == (WIDTH, HEADS, WIDTH // HEADS)
  assert np.isfinite(np.asarray(_apply(model, variables, x))).all()


def test_xla_and_auto_impls_agree():
  x = _normal((B, T, F))
  auto = _classifier(attention_impl="auto")
  xla = _classifier(attention_impl="xla")
  variables = _random_variables(auto, x)
  lengths = jnp.array([T, 3])
  np.testing.assert_allclose(_apply(xla, variables, x, lengths=lengths),
                             _apply(auto, variables, x, lengths=lengths), rtol=1e-5, atol=1e-5)
  lm_auto, lm_vars, tokens = _lm_setup()
  np.testing.assert_allclose(_apply(_lm(attention_impl="xla"), lm_vars, tokens),
                             _apply(lm_auto, lm_vars, tokens), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- dropout and gradients


def test_dropout_only_in_training():
  model = _lm(dropout_rate=0.3)
  _, variables, x = _lm_setup()                                 # same parameters
  evaluated = _apply(model, variables, x)
  np.testing.assert_array_equal(_apply(model, variables, x, train=False), evaluated)
  np.testing.assert_allclose(evaluated, _apply(_lm(), variables, x), rtol=1e-6, atol=1e-6)
  rngs = {"dropout": jax.random.key(1)}
  trained = _apply(model, variables, x, train=True, rngs=rngs)
  assert np.abs(np.asarray(trained - evaluated)).max() > 1e-3
  np.testing.assert_array_equal(_apply(model, variables, x, train=True, rngs=rngs), trained)
  other = _apply(model, variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert np.abs(np.asarray(other - trained)).max() > 1e-3


def test_gradients_are_finite():
  model, variables, x = _lm_setup()

  def lm_loss(params):
    logits = model.apply({"params": params}, x[:, :-1])
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], -1).mean()

  clf = _classifier()
  features = _normal((B, T, F))
  clf_vars = _random_variables(clf, features)

  def clf_loss(params):
    return clf.apply({"params": params}, features, lengths=jnp.array([T, 2])).sum()

  for loss, params in ((lm_loss, variables["params"]), (clf_loss, clf_vars["params"])):
    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("make, field", [
    (lambda: _classifier(width=18, num_heads=4), "num_heads"),
    (lambda: _lm(width=18, num_heads=4), "num_heads"),
    (lambda: _classifier(num_kv_heads=3), "num_kv_heads"),
    (lambda: _lm(num_kv_heads=3), "num_kv_heads"),
    (lambda: models.MultiHeadSelfAttention(num_heads=4, num_kv_heads=3), "num_kv_heads"),
    (lambda: models.TransformerBlock(num_heads=4, num_kv_heads=8), "num_kv_heads"),
    (lambda: _classifier(pooling="max"), "pooling"),
    (lambda: _classifier(num_classes=0), "num_classes"),
    (lambda: _lm(vocab_size=0), "vocab_size"),
    (lambda: _lm(num_layers=0), "num_layers"),
    (lambda: _lm(max_len=0), "max_len"),
    (lambda: _lm(mlp_ratio=0.0), "mlp_ratio"),
    (lambda: _lm(dropout_rate=1.0), "dropout_rate"),
    (lambda: _lm(attention_impl="cuda"), "attention_impl"),
    (lambda: models.MultiHeadSelfAttention(num_heads=0), "num_heads"),
    (lambda: models.MultiHeadSelfAttention(num_heads=2, head_dim=0), "head_dim"),
    (lambda: models.MultiHeadSelfAttention(num_heads=2, rope_base=1.0), "rope_base"),
    (lambda: _lm(rope_base=float("nan")), "rope_base"),
    (lambda: _lm(rope_base="10000"), "rope_base"),
    (lambda: _lm(width=12, num_heads=4, rope_base=10_000.0), "even head dim"),
])
def test_bad_fields_raise_naming_the_field(make, field):
  with pytest.raises(ValueError, match=field):
    make()


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="length 17 exceeds max_len=16"):
    jax.eval_shape(_lm().init, jax.random.key(0), _tokens((B, 17)))
  with pytest.raises(ValueError, match="max_len"):                # [CLS] makes 16 + 1
    jax.eval_shape(_classifier(pooling="cls").init, jax.random.key(0), _normal((B, 16, F)))
  with pytest.raises(ValueError, match="vocab_size"):
    jax.eval_shape(_classifier().init, jax.random.key(0), _tokens((B, T)))
  with pytest.raises(ValueError, match="num_heads"):
    jax.eval_shape(models.MultiHeadSelfAttention(num_heads=3).init, jax.random.key(0),
                   _normal((B, T, 8)))
  with pytest.raises(ValueError, match="mask"):
    layer = models.MultiHeadSelfAttention(num_heads=2)
    jax.eval_shape(functools.partial(layer.init, mask=jnp.ones((T, T), bool)),
                   jax.random.key(0), _normal((B, T, 8)))
  with pytest.raises(ValueError, match="segment_ids"):
    _apply(_lm(), _lm_setup()[1], _tokens((B, 10)), segment_ids=jnp.zeros((B, 9), jnp.int32))


# ------------------------------------------------------------- training, docs


@pytest.mark.slow
def test_fit_trains_a_classifier_on_digits_as_sequences():
  from dlopt.data import load_digits
  from dlopt.optim import OptimizerConfig
  from dlopt.train import FitConfig, fit

  x, y = load_digits()
  x = x.reshape(-1, 8, 8)                                        # 8 steps of 8 features
  model = models.TransformerEncoderClassifier(num_classes=10, num_layers=1, width=32,
                                              num_heads=4, max_len=8, mlp_ratio=2.0)
  result = fit(model, (x, y), optimizer=OptimizerConfig("adam", 3e-3),
               config=FitConfig(epochs=2, batch_size=32, progress=False, plot=False))
  assert len(result.history) == 2
  assert result.test_metrics["accuracy"] > 0.5


def test_public_api():
  for name in ("DecoderLM", "MultiHeadSelfAttention", "TransformerBlock",
               "TransformerEncoderClassifier"):
    assert name in models.__all__ and hasattr(models, name)
  assert attention_module.__all__ == ["MultiHeadSelfAttention"]
  assert sorted(transformer_module.__all__) == sorted(
      ["DecoderLM", "POOLINGS", "TransformerBlock", "TransformerEncoderClassifier"])


@pytest.mark.parametrize("module", [attention_module, transformer_module])
def test_docstring_synopsis_runs(module):
  result = doctest.testmod(module, verbose=False)
  assert result.attempted > 0
  assert result.failed == 0


def test_decoder_sliding_window_sees_only_its_window():
  """One layer, a window of 3: token 2 reaches positions 2..5 and nothing else."""
  model = models.DecoderLM(vocab_size=11, num_layers=1, width=16, num_heads=2, max_len=16,
                    local_window_size=3)
  tokens = jax.random.randint(jax.random.key(0), (1, 12), 0, 11)
  variables = model.init(jax.random.key(1), tokens)
  changed = tokens.at[0, 2].set((tokens[0, 2] + 1) % 11)
  diff = np.abs(np.asarray(model.apply(variables, changed) - model.apply(variables, tokens)))
  reached = diff.max(-1)[0] > 0
  np.testing.assert_array_equal(reached, (np.arange(12) >= 2) & (np.arange(12) <= 5))


def test_attention_soft_cap_flattens_the_logits():
  """A tiny soft cap makes every logit ~0: each output is the mean of the values."""
  x = jax.random.normal(jax.random.key(2), (2, 7, 12))
  layer = models.MultiHeadSelfAttention(num_heads=3, logits_soft_cap=1e-6)
  variables = layer.init(jax.random.key(3), x)
  params = variables["params"]
  values = jnp.einsum("btf,fhd->bthd", x, params["value"]["kernel"])
  mean = jnp.broadcast_to(values.mean(1, keepdims=True), values.shape)
  expected = jnp.einsum("bthd,hdf->btf", mean, params["out"]["kernel"])
  np.testing.assert_allclose(layer.apply(variables, x), expected, atol=1e-5, rtol=0)
  uncapped = models.MultiHeadSelfAttention(num_heads=3).apply(variables, x)
  assert np.abs(np.asarray(uncapped - expected)).max() > 1e-2
