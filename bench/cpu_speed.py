"""Where the CNN's CPU train step lost its time, and what each attempt to win it back gave.

Every variant trains the same network (Keras' MNIST recipe: Conv 32 - MaxPool - Conv 64 -
MaxPool - Dense 64 - Dense 10, "VALID" convolutions, Adam, batch 128) through the same
jitted step, in one process, timed in interleaved rounds (the order rotates each round),
so their ratios hold on a noisy machine. The ratios are to "flax", the network as a Flax
user writes it. Each record says whether dlopt kept the change.

    python -m bench cpu-speed              # writes bench/results/cpu_speed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from bench._runner import spread, write_result
from dlopt.models import CNN
from dlopt.models.pooling import max_pool
from dlopt.train.xla_options import CPU_CONV_OPTIONS

BATCH = 128
_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _flax_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def _dlopt_pool(x):
  return max_pool(x, 2)


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _conv_tap_grads(x, w):
  """An attempt: XLA's forward conv, the weight gradient as one matmul per kernel tap."""
  return _conv(x, w)


def _conv_tap_grads_fwd(x, w):
  return _conv(x, w), (x, w)


def _conv_tap_grads_bwd(saved, dy):
  x, w = saved
  kh, kw, cin, cout = w.shape
  _, out_h, out_w, _ = dy.shape
  flat_dy = dy.reshape(-1, cout)
  taps = [x[:, i:i + out_h, j:j + out_w].reshape(-1, cin).T @ flat_dy
          for i in range(kh) for j in range(kw)]
  dx = jax.vjp(lambda x: _conv(x, w), x)[1](dy)[0]
  return dx, jnp.stack(taps).reshape(w.shape)


_conv_tap_grads.defvjp(_conv_tap_grads_fwd, _conv_tap_grads_bwd)


@jax.custom_vjp
def _add_bias_dot_grad(z, b):
  """An attempt: the bias gradient as a matrix-vector product instead of a reduction."""
  return z + b


_add_bias_dot_grad.defvjp(
    lambda z, b: (z + b, None),
    lambda _, dy: (dy, jnp.ones(dy.size // dy.shape[-1], dy.dtype) @ dy.reshape(-1, dy.shape[-1])))


class KerasNet(nn.Module):
  """The peers' network in plain Flax, with the pooling and conv layer swappable."""

  pool: str = "flax"  # "flax" (nn.max_pool) or "reshape" (dlopt's max_pool)
  conv: str = "flax"  # "flax" (nn.Conv), "tap_grads" or "dot_bias_grad" (attempts)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    pool = _dlopt_pool if self.pool == "reshape" else _flax_pool
    for i, features in enumerate((32, 64)):
      if self.conv == "flax":
        x = nn.Conv(features, (3, 3), padding="VALID", name=f"Conv_{i}")(x)
      else:
        kernel = self.param(f"kernel_{i}", nn.initializers.lecun_normal(),
                            (3, 3, x.shape[-1], features))
        bias = self.param(f"bias_{i}", nn.initializers.zeros_init(), (features,))
        if self.conv == "tap_grads":
          x = _conv_tap_grads(x, kernel) + bias
        else:
          x = _add_bias_dot_grad(_conv(x, kernel), bias)
      x = pool(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


@dataclasses.dataclass(frozen=True)
class Variant:
  """One way to build the step. `kept`: whether dlopt does this (its `fit` runs "dlopt")."""

  name: str
  model: nn.Module
  options: dict | None
  kept: bool
  note: str


DLOPT_NET = CNN(num_classes=10, features=(32, 64), dense_width=64, padding="VALID")

VARIANTS = (
    Variant("flax", KerasNet(), None, False,
            "the network as a Flax user writes it: nn.Conv, nn.max_pool, XLA's defaults"),
    Variant("flax+reshape_pool", KerasNet(pool="reshape"), None, True,
            "max_pool as reshape + max: no select-and-scatter in the gradient"),
    Variant("flax+reshape_pool+cpu_options", KerasNet(pool="reshape"), CPU_CONV_OPTIONS, True,
            "and YNNPACK fusions kept to dots (XLA's own convolutions)"),
    Variant("flax+reshape_pool+no_ynn", KerasNet(pool="reshape"), _NO_YNN, False,
            "YNNPACK off entirely: about the same as keeping it for dots"),
    Variant("dlopt", DLOPT_NET, CPU_CONV_OPTIONS, True,
            "dlopt's CNN as fit runs it: pool before bias and relu, CPU conv options"),
    Variant("dlopt-no_options", DLOPT_NET, None, False,
            "dlopt's CNN with XLA's default (YNNPACK) convolutions"),
    Variant("dlopt+onednn", DLOPT_NET, {**CPU_CONV_OPTIONS, "xla_cpu_use_onednn": True}, False,
            "xla_cpu_use_onednn: no oneDNN convolution is emitted; no change"),
    Variant("dlopt+xnn_graph_greedy", DLOPT_NET,
            {**CPU_CONV_OPTIONS,
             "xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
            False, "XNNPACK graph fusion: no change"),
    Variant("tap_grads+reshape_pool+cpu_options", KerasNet(pool="reshape", conv="tap_grads"),
            CPU_CONV_OPTIONS, False,
            "weight gradient as 9 per-tap matmuls: the slices' copies cost more than "
            "XLA's conv gradient"),
    Variant("dot_bias_grad+reshape_pool+cpu_options",
            KerasNet(pool="reshape", conv="dot_bias_grad"), CPU_CONV_OPTIONS, False,
            "bias gradient as a matvec: it blocks fusions; slower"),
)


def make_step(model: nn.Module, options: dict | None):
  """The jitted Adam step `(params, opt_state, x, y) -> (params, opt_state, loss)`."""
  tx = optax.adam(1e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=options)
  def step(params, opt_state, x, y):
    def loss_fn(params):
      logits = model.apply(params, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step, tx


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench cpu-speed` (besides --runs, --tiny, --out)."""
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per variant per round (default 40, tiny 2)")
  parser.add_argument("--only", nargs="*", default=None,
                      help="variant names to run (default: all)")


def run(args: argparse.Namespace) -> int:
  """Times every variant over `args.runs` interleaved rounds; writes cpu_speed.json."""
  steps = args.steps or (2 if args.tiny else 40)
  variants = [v for v in VARIANTS if args.only is None or v.name in args.only]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((BATCH, 28, 28, 1), np.float32))
  y = jnp.asarray(rng.integers(0, 10, BATCH))
  live, compile_s = {}, {}
  for variant in variants:
    step, tx = make_step(variant.model, variant.options)
    params = variant.model.init(jax.random.key(0), x[:1])
    start = time.perf_counter()
    step = step.lower(params, tx.init(params), x, y).compile()
    compile_s[variant.name] = time.perf_counter() - start
    state = step(params, tx.init(params), x, y)
    live[variant.name] = [step, jax.block_until_ready(state)]
  rates = {name: [] for name in live}
  order = list(live)
  for round_ in range(args.runs):
    shift = round_ % len(order)
    for name in order[shift:] + order[:shift]:
      step, (params, opt_state, _) = live[name]
      start = time.perf_counter()
      for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, x, y)
      jax.block_until_ready(loss)
      rates[name].append(steps * BATCH / (time.perf_counter() - start))
      live[name][1] = (params, opt_state, loss)
  base = np.median(rates["flax"]) if "flax" in rates else None
  results = []
  for variant in variants:
    images = spread(rates[variant.name])
    results.append({
        "variant": variant.name, "kept": variant.kept, "note": variant.note,
        "compiler_options": variant.options, "compile_s": round(compile_s[variant.name], 3),
        "images_per_s": images,
        "vs_flax": None if base is None else images["median"] / base})
    ratio = "" if base is None else f"  {images['median'] / base:5.2f}x flax"
    print(f"{variant.name:42s} {images['median']:8.0f} img/s{ratio}"
          f"  {'kept' if variant.kept else ''}")
  record = {"benchmark": "cpu_speed", "batch_size": BATCH, "steps_per_round": steps,
            "network": "Keras MNIST CNN: Conv32-MaxPool-Conv64-MaxPool-Dense64-Dense10, "
                       "VALID, Adam", "variants": results}
  print(f"wrote {write_result(args, 'cpu_speed', record)}")
  return 0
