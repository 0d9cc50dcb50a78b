"""Tests for the recurrent models: shapes, exact parameter counts, padding,
agreement with Flax's cells run by hand, dropout, gradients, jit, validation,
and a short learning run."""

import doctest
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from dlopt import models
from dlopt.models import _utils
from dlopt.models import recurrent as recurrent_module
from dlopt.models.recurrent import RecurrentClassifier
from dlopt.models.recurrent import RecurrentStack

B, T, F = 3, 7, 5            # batch, sequence length, input features
H, CLASSES = 6, 4            # hidden size, classes
LENGTHS = (7, 4, 1)          # one full, one ragged, one single-step sequence


def _normal(shape, seed=0):
  """Standard-normal float32 array (numpy: no per-shape PRNG compile)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _lengths(values=LENGTHS):
  return jnp.asarray(values, jnp.int32)


def _random_variables(model, *args, seed=1):
  """Variables shaped like `model.init(key, *args)`, every entry random and nonzero.

  Flax's init compiles one PRNG kernel per parameter; numpy keeps the tests fast.
  """
  abstract = jax.eval_shape(model.init, jax.random.key(0), *args)
  rng = np.random.default_rng(seed)
  filled = {}
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    noise = rng.standard_normal(leaf.shape)
    value = noise / np.sqrt(leaf.shape[0]) if path[-1] == "kernel" else 0.1 * noise
    filled[path] = jnp.asarray(value, leaf.dtype)
  return traverse_util.unflatten_dict(filled)


def _classifier(**kwargs):
  kwargs = dict(num_classes=CLASSES, hidden_size=H) | kwargs
  return RecurrentClassifier(**kwargs)


@functools.cache
def _setup(kind="classifier", **kwargs):
  """(model, variables, x) for a classifier or a stack, cached across tests."""
  model = _classifier(**kwargs) if kind == "classifier" else RecurrentStack(H, **kwargs)
  x = _normal((B, T, F))
  return model, _random_variables(model, x, _lengths()), x


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def _apply(model, variables, x, lengths=None, *, train=False, rngs=None):
  """`model.apply` as the training loop calls it, under one jit."""
  return model.apply(variables, x, lengths, train=train, rngs=rngs)


def _with_garbage_past(x, lengths, seed=9):
  """`x` with every step at or past `lengths` replaced by large noise."""
  past = jnp.arange(x.shape[1])[None, :, None] >= lengths[:, None, None]
  return jnp.where(past, 100.0 * _normal(x.shape, seed=seed), x)


STACKS = [dict(cell=cell, bidirectional=bi, num_layers=layers)
          for cell in ("lstm", "gru") for bi in (False, True) for layers in (1, 2)]


def _name(config):
  return f"{config['cell']}-{'bi' if config['bidirectional'] else 'uni'}-{config['num_layers']}"


# ---------------------------------------------------------------- shapes and counts


@pytest.mark.parametrize("config", STACKS, ids=_name)
def test_stack_shapes_dtype_and_padding(config):
  model, variables, x = _setup("stack", **config)
  lengths = _lengths()
  out = _apply(model, variables, x, lengths)
  width = 2 * H if config["bidirectional"] else H
  assert model.output_size == width
  assert out.shape == (B, T, width) and out.dtype == jnp.float32
  valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
  out = np.asarray(out)
  assert (out[~valid] == 0).all()                                # padded steps are zero
  assert (np.abs(out[valid]).max(axis=-1) > 0).all()             # valid ones are not
  # Garbage past the lengths changes no valid output (nor the zeros).
  changed = _apply(model, variables, _with_garbage_past(x, lengths), lengths)
  np.testing.assert_allclose(changed, out, rtol=1e-6, atol=1e-6)
  # Without lengths every step is valid: the same as full lengths.
  full = _apply(model, variables, x)
  np.testing.assert_allclose(full, _apply(model, variables, x, _lengths((T,) * B)),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(full[0], out[0], rtol=1e-6, atol=1e-6)   # lengths[0] == T


@pytest.mark.parametrize("config, pooling",
                         [(c, ("last", "mean")[i % 2]) for i, c in enumerate(STACKS)]
                         + [(STACKS[-1], "last")],
                         ids=lambda v: v if isinstance(v, str) else _name(v))
def test_classifier_shapes_and_ignores_padding(config, pooling):
  model, variables, x = _setup(pooling=pooling, **config)
  lengths = _lengths()
  logits = _apply(model, variables, x, lengths)
  assert logits.shape == (B, CLASSES) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  changed = _apply(model, variables, _with_garbage_past(x, lengths), lengths)
  np.testing.assert_allclose(changed, logits, rtol=1e-6, atol=1e-6)
  # ... but a change inside the lengths does matter, for every example.
  moved = _apply(model, variables, x.at[:, 0].add(1.0), lengths)
  assert np.abs(np.asarray(moved - logits)).max(axis=-1).min() > 1e-6


def _cell_params(features, hidden, cell):
  if cell == "lstm":                                             # 4 gates; hidden bias only
    return 4 * (features * hidden + hidden * hidden + hidden)
  return 3 * (features * hidden + hidden) + 3 * hidden * hidden + hidden   # GRU: + b_hn


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_parameter_count(cell, bidirectional):
  layers, directions = 3, 2 if bidirectional else 1
  model = _classifier(num_layers=layers, cell=cell, bidirectional=bidirectional)
  params = jax.eval_shape(model.init, jax.random.key(0), _normal((B, T, F)))["params"]
  expected = (directions * _cell_params(F, H, cell)
              + (layers - 1) * directions * _cell_params(directions * H, H, cell)
              + directions * H * CLASSES + CLASSES)
  assert _utils.count_params(params) == expected
  last = params["stack"][f"layer_{layers - 1}"]
  cells = [last["forward_rnn"]["cell"], last["backward_rnn"]["cell"]] if bidirectional \
      else [last["cell"]]
  assert all(c["hi" if cell == "lstm" else "hn"]["kernel"].shape == (H, H) for c in cells)
  assert params["head"]["kernel"].shape == (directions * H, CLASSES)


# ------------------------------------------------------ Flax's cells by hand


def _run_cell(cell, params, steps):
  """Runs a Flax cell over `steps` [n, F] from the zero state; outputs [n, H]."""
  carry = cell.initialize_carry(jax.random.key(0), steps[:1].shape)
  outputs = []
  for step in steps:
    carry, y = cell.apply({"params": params}, carry, step[None])
    outputs.append(y[0])
  return jnp.stack(outputs)


def test_last_pooling_matches_running_the_cell_by_hand():
  model, variables, x = _setup(cell="lstm", pooling="last")
  params = variables["params"]
  lengths = _lengths()
  logits = _apply(model, variables, x, lengths)
  cell = nn.OptimizedLSTMCell(H)
  head = params["head"]
  for b, n in enumerate(LENGTHS):
    last = _run_cell(cell, params["stack"]["layer_0"]["cell"], x[b, :n])[-1]
    want = last @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(logits[b], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_bidirectional_directions_match_the_cells_by_hand(cell_name):
  model, variables, x = _setup("stack", cell=cell_name, bidirectional=True)
  layer = variables["params"]["layer_0"]
  cell = recurrent_module.CELLS[cell_name](H)
  out = _apply(model, variables, x, _lengths())
  for b, n in enumerate(LENGTHS):
    forward = _run_cell(cell, layer["forward_rnn"]["cell"], x[b, :n])
    backward = _run_cell(cell, layer["backward_rnn"]["cell"], x[b, :n][::-1])[::-1]
    np.testing.assert_allclose(out[b, :n, :H], forward, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[b, :n, H:], backward, rtol=1e-5, atol=1e-5)


def test_bidirectional_last_pooling_uses_the_whole_valid_sequence_backward():
  model, variables, x = _setup(cell="gru", bidirectional=True, pooling="last")
  params = variables["params"]
  layer = params["stack"]["layer_0"]
  cell = nn.GRUCell(H)
  logits = _apply(model, variables, x, _lengths())
  for b, n in enumerate(LENGTHS):
    forward = _run_cell(cell, layer["forward_rnn"]["cell"], x[b, :n])[-1]
    backward = _run_cell(cell, layer["backward_rnn"]["cell"], x[b, :n][::-1])[-1]
    want = jnp.concatenate([forward, backward]) @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(logits[b], want, rtol=1e-5, atol=1e-5)


def test_mean_pooling_averages_the_valid_steps():
  model, variables, x = _setup(cell="lstm", num_layers=2, pooling="mean")
  stack_model = RecurrentStack(H, num_layers=2)
  params = variables["params"]
  lengths = _lengths()
  h = _apply(stack_model, {"params": params["stack"]}, x, lengths)
  pooled = h.sum(axis=1) / lengths[:, None]
  want = pooled @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(_apply(model, variables, x, lengths), want, rtol=1e-5, atol=1e-5)


def test_empty_and_overlong_lengths():
  model, variables, x = _setup(bidirectional=True)
  logits = _apply(model, variables, x, _lengths((0, T + 5, 3)))
  head = variables["params"]["head"]
  np.testing.assert_allclose(logits[0], head["bias"], rtol=1e-6, atol=1e-6)  # pools zeros
  np.testing.assert_allclose(logits[1], _apply(model, variables, x)[1], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------- dropout, gradients, jit


def test_dropout_only_in_training():
  base, variables, x = _setup(num_layers=2, bidirectional=True)   # same parameters
  model = _classifier(num_layers=2, bidirectional=True, dropout_rate=0.4)
  lengths = _lengths()
  evaluated = _apply(model, variables, x, lengths)
  np.testing.assert_allclose(evaluated, _apply(base, variables, x, lengths),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(Exception, match="dropout"):                # train needs the rng
    _apply(model, variables, x, lengths, train=True)
  rngs = {"dropout": jax.random.key(1)}
  trained = _apply(model, variables, x, lengths, train=True, rngs=rngs)
  assert np.abs(np.asarray(trained - evaluated)).max() > 1e-3
  np.testing.assert_array_equal(_apply(model, variables, x, lengths, train=True, rngs=rngs),
                                trained)
  # Dropout between layers keeps padded steps at zero, and padding still changes nothing.
  stack_vars = {"params": variables["params"]["stack"]}
  stack = RecurrentStack(H, num_layers=2, bidirectional=True, dropout_rate=0.4)
  out = _apply(stack, stack_vars, x, lengths, train=True, rngs=rngs)
  valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
  assert (np.asarray(out)[~valid] == 0).all()
  np.testing.assert_allclose(
      _apply(stack, stack_vars, _with_garbage_past(x, lengths), lengths, train=True,
             rngs=rngs), out, rtol=1e-6, atol=1e-6)


def test_no_dropout_needs_no_rng():
  model, variables, x = _setup()
  model.apply(variables, x, _lengths(), train=True)


@pytest.mark.parametrize("config", [dict(cell="lstm", bidirectional=True, num_layers=2),
                                    dict(cell="gru", bidirectional=False, num_layers=2)],
                         ids=_name)
def test_gradients_finite_and_nonzero(config):
  model, variables, x = _setup(**config)
  lengths = _lengths()

  def loss(params, x):
    return model.apply({"params": params}, x, lengths).sum()

  grads, x_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
  for path, g in traverse_util.flatten_dict(grads).items():
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.abs(g).sum() > 0, path
  valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
  assert (np.asarray(x_grad)[~valid] == 0).all()                 # padding gets no gradient


def test_jit_matches_eager():
  model, variables, x = _setup(cell="gru", pooling="mean")
  lengths = _lengths()
  eager = model.apply(variables, x, lengths)
  np.testing.assert_allclose(jax.jit(model.apply)(variables, x, lengths), eager,
                             rtol=1e-6, atol=1e-6)
  init = jax.jit(model.init)(jax.random.key(0), x, lengths)
  assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, variables)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("make, field", [
    (lambda: RecurrentStack(0), "hidden_size"),
    (lambda: RecurrentStack(H, num_layers=0), "num_layers"),
    (lambda: RecurrentStack(H, cell="rnn"), "cell"),
    (lambda: RecurrentStack(H, bidirectional="yes"), "bidirectional"),
    (lambda: RecurrentStack(H, dropout_rate=1.0), "dropout_rate"),
    (lambda: _classifier(num_classes=0), "num_classes"),
    (lambda: _classifier(hidden_size=2.5), "hidden_size"),
    (lambda: _classifier(num_layers=0), "num_layers"),
    (lambda: _classifier(cell="LSTM"), "cell"),
    (lambda: _classifier(dropout_rate=-0.1), "dropout_rate"),
    (lambda: _classifier(pooling="cls"), "pooling"),
])
def test_bad_fields_raise_naming_the_field(make, field):
  with pytest.raises(ValueError, match=field):
    make()


@pytest.mark.parametrize("x, lengths, match", [
    (np.ones((B, T)), None, "features float"),
    (np.ones((B, T, F), np.int32), None, "floating"),
    (np.ones((B, T, F)), np.ones((B + 1,), np.int32), "lengths"),
    (np.ones((B, T, F)), np.ones((B,), np.float32), "lengths"),
])
def test_bad_inputs_raise(x, lengths, match):
  for model in (_classifier(), RecurrentStack(H)):
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x),
                     None if lengths is None else jnp.asarray(lengths))


# ------------------------------------------------------------- training, docs


def _sum_sign_task(n, length, seed):
  """x float [n, length, 1] with noise past `lengths`; label 1 iff the valid steps sum > 0."""
  lengths = jnp.asarray(np.random.default_rng(seed).integers(1, length + 1, n), jnp.int32)
  x = _normal((n, length, 1), seed=seed + 1)
  valid = jnp.arange(length)[None, :, None] < lengths[:, None, None]
  labels = (jnp.where(valid, x, 0).sum(axis=(1, 2)) > 0).astype(jnp.int32)
  x = jnp.where(valid, x, 5.0 * _normal(x.shape, seed=seed + 2))  # padding is loud noise
  return x, lengths, labels


def test_learns_the_sign_of_a_ragged_sum():
  """40 full-batch Adam steps reach > 90% held-out accuracy (about 2 s, mostly compile)."""
  x, lengths, labels = _sum_sign_task(128, 8, seed=0)
  model = RecurrentClassifier(num_classes=2, hidden_size=8, cell="lstm", pooling="last")
  params = _random_variables(model, x, lengths)["params"]
  tx = optax.adam(5e-2)

  def loss_fn(params):
    logits = model.apply({"params": params}, x, lengths, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for _ in range(40):
    params, opt_state = step(params, opt_state)
  x_test, lengths_test, labels_test = _sum_sign_task(128, 8, seed=10)
  logits = _apply(model, {"params": params}, x_test, lengths_test)
  accuracy = float((logits.argmax(-1) == labels_test).mean())
  assert accuracy > 0.9, accuracy


def test_public_api():
  assert sorted(recurrent_module.__all__) == sorted(
      ["CELLS", "RECURRENT_POOLINGS", "RecurrentClassifier", "RecurrentStack"])
  assert set(recurrent_module.CELLS) == {"lstm", "gru"}
  for name in ("RecurrentClassifier", "RecurrentStack"):
    assert name in models.__all__ and getattr(models, name) is getattr(recurrent_module, name)


def test_docstring_synopsis_runs():
  result = doctest.testmod(recurrent_module, verbose=False)
  assert result.attempted > 0
  assert result.failed == 0
