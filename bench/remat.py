"""Rematerialization (`remat=True`, `nn.remat` per block): train-step memory and time.

Two models, each trained by dlopt's jitted, donated train step (Adam, cross-entropy): a
DecoderLM (remat per `TransformerBlock`) and a ResidualCNN with batch norm (remat per
`ResidualBlock`). Each is compiled (`jax.jit(...).lower(...).compile()`) four ways:

- `plain`: `remat=False`, the compiler options `fit` picks (`step_compiler_options`)
  without the barrier option below;
- `remat`: `remat=True`, the same options: XLA's default passes;
- `plain_keep_barriers`, `remat_keep_barriers`: the same two with XLA's
  `cse_barrier_expander` pass disabled (`xla_disable_hlo_passes`), which is what `fit`
  compiles a rematerializing model with on the CPU (`dlopt.train.xla_options`). On the CPU, XLA expands
  the optimization barriers `jax.checkpoint` puts around the recomputation into nothing
  and then runs common-subexpression elimination again, which merges the recomputation
  back into the forward pass: the rematerialization is undone. Keeping the barriers keeps
  it (GPU and TPU pipelines keep them through CSE).

For each the record holds XLA's `memory_analysis()` of the compiled step (temporary,
argument, output and aliased bytes; the temporaries are the activations kept for the
backward pass and the working buffers) and the step time, timed in interleaved rounds
(`--runs`; the order rotates each round; `--steps` steps each, after one warm-up step),
and the loss of the first step, which must agree across the four.

    python -m bench remat            # writes bench/results/remat.json
    python -m bench remat --tiny     # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench._runner import spread, write_result
from dlopt.models import DecoderLM, ResidualCNN
from dlopt.train import Objective, create_train_state, make_train_step, step_compiler_options

KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}
VARIANTS = {
    "plain": (False, False),               # name -> (remat, keep the barriers)
    "remat": (True, False),
    "plain_keep_barriers": (False, True),
    "remat_keep_barriers": (True, True),
}
_MEMORY = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
           "alias_size_in_bytes", "generated_code_size_in_bytes")
_MIB = 2**20


def _sizes(tiny: bool) -> dict:
  """Model and batch sizes per model name."""
  if tiny:
    return {"decoder_lm": {"vocab_size": 32, "num_layers": 2, "width": 32, "num_heads": 2,
                           "seq_len": 16, "batch_size": 2},
            "residual_cnn": {"stem_features": 8, "stage_features": (8, 16),
                             "blocks_per_stage": (1, 1), "image_size": 8, "batch_size": 2}}
  return {"decoder_lm": {"vocab_size": 256, "num_layers": 4, "width": 256, "num_heads": 4,
                         "seq_len": 256, "batch_size": 8},
          "residual_cnn": {"stem_features": 32, "stage_features": (32, 64, 128),
                           "blocks_per_stage": (2, 2, 2), "image_size": 32, "batch_size": 32}}


def _model_and_batch(name: str, size: dict, remat: bool):
  """The model (with `remat`) and one fixed random batch `(x, y)`."""
  rng = np.random.default_rng(0)
  batch = size["batch_size"]
  if name == "decoder_lm":
    model = DecoderLM(vocab_size=size["vocab_size"], num_layers=size["num_layers"],
                      width=size["width"], num_heads=size["num_heads"],
                      max_len=size["seq_len"], remat=remat)
    tokens = rng.integers(0, size["vocab_size"], (batch, size["seq_len"] + 1))
    return model, (jnp.asarray(tokens[:, :-1], jnp.int32), jnp.asarray(tokens[:, 1:], jnp.int32))
  model = ResidualCNN(num_classes=10, stem_features=size["stem_features"],
                      stage_features=size["stage_features"],
                      blocks_per_stage=size["blocks_per_stage"], norm="batch", remat=remat)
  side = size["image_size"]
  x = jnp.asarray(rng.standard_normal((batch, side, side, 3)), jnp.float32)
  return model, (x, jnp.asarray(rng.integers(0, 10, batch), jnp.int32))


def _describe(name: str, size: dict) -> str:
  if name == "decoder_lm":
    return (f"DecoderLM(vocab {size['vocab_size']}, {size['num_layers']} layers, width "
            f"{size['width']}, {size['num_heads']} heads), batch {size['batch_size']} x "
            f"{size['seq_len']} tokens")
  return (f"ResidualCNN(stem {size['stem_features']}, stages "
          f"{tuple(size['stage_features'])} x blocks {tuple(size['blocks_per_stage'])}, "
          f"batch norm), batch {size['batch_size']} x {size['image_size']}x"
          f"{size['image_size']}x3")


def _compile(name: str, size: dict, remat: bool, keep_barriers: bool):
  """(compiled step, initial state, batch, compile seconds) of one variant."""
  model, batch = _model_and_batch(name, size, remat)
  state = create_train_state(model, optax.adam(1e-3), batch[0], seed=0)
  options = step_compiler_options(state.apply_fn, {"params": state.params,
                                                   **state.model_state}, batch[0][:1])
  options = {k: v for k, v in (options or {}).items() if k not in KEEP_BARRIERS}
  if keep_barriers:
    options.update(KEEP_BARRIERS)
  options = options or None
  step = make_train_step(Objective("cross_entropy"), compiler_options=options)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return compiled, state, batch, time.perf_counter() - start


def _memory(compiled) -> dict:
  """XLA's memory analysis of a compiled step, in MiB, with the peak it implies."""
  analysis = compiled.memory_analysis()
  mib = {key.removesuffix("_size_in_bytes") + "_mib": getattr(analysis, key) / _MIB
         for key in _MEMORY}
  mib["peak_mib"] = (mib["argument_mib"] + mib["output_mib"] + mib["temp_mib"]
                     - mib["alias_mib"])
  return mib


def _time_steps(compiled, state, batch, steps: int):
  """(seconds per step over `steps` steps after a warm-up one, the state after them)."""
  state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / steps, state


def measure_model(name: str, size: dict, runs: int, steps: int) -> dict:
  """Memory and step time of every variant of one model, timed in interleaved rounds."""
  entries, live = {}, {}
  for variant, (remat, keep) in VARIANTS.items():
    compiled, state, batch, seconds = _compile(name, size, remat, keep)
    first_state, metrics = compiled(state, batch)  # donates `state`
    entries[variant] = {"remat": remat, "keep_barriers": keep, "compile_s": seconds,
                        "memory": _memory(compiled),
                        "first_step_loss": float(metrics["loss"])}
    live[variant] = [compiled, first_state, batch]
  times = {variant: [] for variant in VARIANTS}
  order = list(VARIANTS)
  for round_index in range(runs):
    for variant in order[round_index % len(order):] + order[:round_index % len(order)]:
      compiled, state, batch = live[variant]
      seconds, live[variant][1] = _time_steps(compiled, state, batch, steps)
      times[variant].append(seconds)
  plain = entries["plain"]
  for variant, entry in entries.items():
    entry["step_s"] = spread(times[variant])
    entry["temp_vs_plain"] = entry["memory"]["temp_mib"] / plain["memory"]["temp_mib"]
  for entry in entries.values():
    entry["step_time_vs_plain"] = (entry["step_s"]["median"]
                                   / entries["plain"]["step_s"]["median"])
  return {"description": _describe(name, size), "size": size, "variants": entries}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench remat` (besides --runs, --tiny, --out)."""
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per variant per round (default 5, tiny 2)")


def run(args: argparse.Namespace) -> int:
  """Measures both models; writes remat.json and prints one line per variant."""
  steps = args.steps or (2 if args.tiny else 5)
  models = {name: measure_model(name, size, args.runs, steps)
            for name, size in _sizes(args.tiny).items()}
  losses = {name: [v["first_step_loss"] for v in entry["variants"].values()]
            for name, entry in models.items()}
  record = {"benchmark": "remat", "optimizer": "adam lr 1e-3", "steps_per_round": steps,
            "keep_barriers_options": KEEP_BARRIERS, "models": models,
            "first_step_losses_agree": all(np.allclose(v, v[0], rtol=1e-4)
                                           for v in losses.values())}
  path = write_result(args, "remat", record)
  for name, entry in models.items():
    for variant, data in entry["variants"].items():
      print(f"{name:13s} {variant:20s} temp {data['memory']['temp_mib']:8.1f} MiB "
            f"({data['temp_vs_plain']:.2f}x)   step {data['step_s']['median'] * 1e3:8.1f} ms "
            f"({data['step_time_vs_plain']:.2f}x)")
  print(f"wrote {path}")
  return 0
