"""Convolution microbenchmark: the fused conv2d against XLA's convolution plus its epilogue.

    python -m bench conv                 # the full sweep on this backend
    python -m bench conv --quick         # a minute on a CPU
    python -m bench conv --tiny          # a smoke run of seconds

Each point times one layer, `relu(conv(x, w) + b [+ residual])`, forward and
forward+backward (grads for x, w, b and the residual), side by side in one run, interleaved:

- "fused": `kernels.conv2d` with the epilogue fused: the Pallas kernel on GPU and TPU,
  "xla_implicit_gemm" (the same implicit GEMM written in XLA) on the CPU;
- "xla": `impl="xla"`, `lax.conv_general_dilated` (cuDNN on NVIDIA GPUs) followed by
  the bias, residual and relu as separate XLA ops.

Layers: the 3x3 convs of ResNet-50's four stages (the block-ending conv with its residual),
its stride-2 3x3 and a 1x1 expansion, a MobileNetV2 depthwise 3x3, and the two convs of the
MNIST CNN; batches 32 to 256 (32 for the ImageNet shapes on the CPU); bfloat16 and float32 (float32
only on the CPU, where bfloat16 convolutions are emulated). TFLOP/s count
`2 * N * OH * OW * KH * KW * Cin/G * Cout` for the forward and three times that for
forward+backward. These layers are mostly memory-bound, so each time also gets a bandwidth,
`gbps`: the bytes of the function's arguments and results, each moved once (`bytes`), over
the median time; no path can move less.

`causal_conv1d` (kernel 4, silu) is timed the same way on sequence-model shapes.

The model point, "mnist_cnn_step", times the whole training step (forward, backward,
AdamW) of `examples/mnist_cnn.py`'s CNN with `conv_impl` "xla", "xla_implicit_gemm" and "auto".

Writes bench/results/conv_<backend>.json (min/median/max of every time over `--runs`
interleaved runs) and prints a table last.
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

import kernels
from bench._runner import write_result
from bench._timing import compare

_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}



class Layer(NamedTuple):
  """One convolution layer: square input, `relu(conv(x, w) + b [+ residual])`."""
  hw: int  # input height and width
  cin: int
  cout: int
  kernel: int
  stride: int
  residual: bool
  groups: int = 1  # cin: depthwise


LAYERS = {
    "resnet50_res2_3x3": Layer(56, 64, 64, 3, 1, True),
    "resnet50_res3_3x3": Layer(28, 128, 128, 3, 1, True),
    "resnet50_res4_3x3": Layer(14, 256, 256, 3, 1, True),
    "resnet50_res5_3x3": Layer(7, 512, 512, 3, 1, True),
    "resnet50_res3_3x3_s2": Layer(56, 128, 128, 3, 2, False),
    "resnet50_res2_1x1": Layer(56, 64, 256, 1, 1, False),
    "mobilenetv2_dw_3x3": Layer(56, 144, 144, 3, 1, False, groups=144),
    "mnist_conv1": Layer(28, 1, 32, 3, 1, False),
    "mnist_conv2": Layer(14, 32, 64, 3, 1, False),
}


def conv_flops(batch, out_hw, cin, cout, kernel, backward) -> float:
  """`2 N OH OW KH KW Cin Cout` (Cin per group), three times that with the backward."""
  flops = 2.0 * batch * out_hw * out_hw * kernel * kernel * cin * cout
  return flops * (3 if backward else 1)


def moved_bytes(fn, args) -> int:
  """The bytes of `fn`'s arguments and results: what it must read and write at least once."""
  leaves = [*jax.tree.leaves(args), *jax.tree.leaves(jax.eval_shape(fn, *args))]
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)


def _add_rates(results: dict, flops: float | None, nbytes: int) -> None:
  """Adds `tflops` (if counted) and `gbps` to every timed path of `results`."""
  for result in results.values():
    if isinstance(result, dict) and "median_s" in result:
      if flops is not None:
        result["tflops"] = flops / result["median_s"] / 1e12
      result["gbps"] = nbytes / result["median_s"] / 1e9


def layer_fns(impl: str, stride: int, residual: bool, groups: int = 1):
  """`(fwd, fwd_bwd)` of one layer through `kernels.conv2d(impl=impl)`."""

  def fwd(x, w, b, r):
    return kernels.conv2d(x, w, b, stride=stride, groups=groups, activation="relu",
                          residual=r if residual else None, impl=impl)

  def fwd_bwd(x, w, b, r, dy):
    return jax.vjp(fwd, x, w, b, r)[1](dy)

  return fwd, fwd_bwd


def run_layer(name: str, batch: int, dtype, fused_impl: str, reps: int) -> dict:
  """One layer of `LAYERS`, forward and forward+backward, fused vs XLA, interleaved."""
  hw, cin, cout, kernel, stride, residual, groups = LAYERS[name]
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (batch, hw, hw, cin), dtype)
  w = (jax.random.normal(keys[1], (kernel, kernel, cin // groups, cout))
       / (kernel * (cin // groups) ** 0.5)).astype(dtype)
  b = jax.random.normal(keys[2], (cout,), dtype)
  out_hw = -(-hw // stride)
  dy = jax.random.normal(keys[3], (batch, out_hw, out_hw, cout), dtype)
  r = dy if residual else None  # no residual: nothing passed, nothing counted in `bytes`
  record = {"layer": name, "batch": batch, "dtype": jnp.dtype(dtype).name,
            "fused_impl": fused_impl, "bytes": {}}
  impls = {"fused": fused_impl, "xla": "xla"}
  for part, args, backward in (("fwd", (x, w, b, r), False),
                               ("fwd_bwd", (x, w, b, r, dy), True)):
    fns = {label: layer_fns(impl, stride, residual, groups)[int(backward)]
           for label, impl in impls.items()}
    results = compare(fns, args, reps)
    record["bytes"][part] = moved_bytes(fns["xla"], args)
    _add_rates(results, conv_flops(batch, out_hw, cin // groups, cout, kernel, backward),
               record["bytes"][part])
    if all("median_s" in result for result in results.values()):
      results["speedup"] = results["xla"]["median_s"] / results["fused"]["median_s"]
    record[part] = results
  return record


def run_model_step(batch: int, reps: int, impls=("xla", "xla_implicit_gemm", "auto")) -> dict:
  """The MNIST CNN's whole training step with each conv_impl, interleaved."""
  from dlopt.models import CNN
  from dlopt.optim import OptimizerConfig, make_optimizer
  from dlopt.train import Objective, create_train_state
  from dlopt.train.steps import train_step

  x = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  tx = make_optimizer(OptimizerConfig("adamw", 1e-3, weight_decay=1e-4), total_steps=1000)
  fns, state = {}, None
  for impl in impls:
    model = CNN(features=(32, 64), dense_width=128, dropout_rate=0.25, conv_impl=impl)
    state = create_train_state(model, tx, x[:1], seed=0)
    step = functools.partial(train_step, objective=Objective("cross_entropy"))
    # Same parameters and optimizer state for every impl; only the model differs.
    fns[impl] = functools.partial(lambda params, opt_state, x, y, step, model, template:
                                  step(template.replace(params=params, opt_state=opt_state,
                                                        apply_fn=model.apply), (x, y)),
                                  step=step, model=model, template=state)
  results = compare(fns, (state.params, state.opt_state, x, y), reps)
  reference = results["xla"].get("median_s")
  for result in results.values():
    if "median_s" in result and reference:
      result["images_per_s"] = batch / result["median_s"]
      result["speed_vs_xla"] = reference / result["median_s"]
  return {"layer": "mnist_cnn_step", "batch": batch, "dtype": "float32", "step": results}


def run_causal(batch: int, seq: int, channels: int, kernel: int, fused_impl: str,
               reps: int, dtype=jnp.float32) -> dict:
  """`causal_conv1d` (silu, bias) forward and forward+backward, fused vs the reference."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, seq, channels), dtype)
  w = jax.random.normal(keys[1], (kernel, channels), dtype)
  b = jax.random.normal(keys[2], (channels,), dtype)
  record = {"layer": f"causal_conv1d_k{kernel}_c{channels}_t{seq}", "batch": batch,
            "dtype": jnp.dtype(dtype).name, "fused_impl": fused_impl, "bytes": {}}
  for part, backward in (("fwd", False), ("fwd_bwd", True)):
    fns = {}
    for label, impl in (("fused", fused_impl), ("xla", "xla")):
      fn = functools.partial(kernels.causal_conv1d, activation="silu", impl=impl)
      if backward:
        fn = functools.partial(lambda fn, x, w, b: jax.grad(
            lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2))(x, w, b), fn)
      fns[label] = fn
    results = compare(fns, (x, w, b), reps)
    record["bytes"][part] = moved_bytes(fns["xla"], (x, w, b))
    _add_rates(results, None, record["bytes"][part])
    if all("median_s" in result for result in results.values()):
      results["speedup"] = results["xla"]["median_s"] / results["fused"]["median_s"]
    record[part] = results
  return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench conv` (besides --runs, --tiny, --out)."""
  parser.add_argument("--quick", action="store_true", help="a few points, few reps")
  parser.add_argument("--layers", nargs="+", default=None, choices=sorted(LAYERS))
  parser.add_argument("--dtypes", nargs="+", default=None, choices=sorted(_DTYPES))


def run(args: argparse.Namespace) -> int:
  """Times every layer, the causal conv and the model step; writes conv_<backend>.json."""
  backend = jax.default_backend()
  accelerator = backend in ("gpu", "tpu")
  fused_impl = "pallas" if accelerator else "xla_implicit_gemm"
  reps = args.runs = args.runs or (5 if args.quick else 20 if accelerator else 7)
  dtypes = args.dtypes or (["bfloat16", "float32"] if accelerator else ["float32"])
  layers = args.layers or (["mnist_conv1"] if args.tiny else
                           ["resnet50_res3_3x3", "mnist_conv1", "mnist_conv2"] if args.quick
                           else list(LAYERS))
  records = []
  for name in layers:
    if args.tiny:
      batches = [8]
    elif accelerator:
      batches = [32, 256] if args.quick else [32, 128, 256]
    else:
      batches = ([32] if name.startswith(("resnet", "mobilenet")) or args.quick
                 else [32, 128, 256])
    for dtype in dtypes:
      for batch in batches:
        records.append(run_layer(name, batch, _DTYPES[dtype], fused_impl, reps))
        print(_row(records[-1]), flush=True)
  causal_shapes = ([(2, 64, 16)] if args.tiny else [(8, 1024, 256)] if args.quick
                   else [(32, 1024, 256), (8, 4096, 512)])
  for batch, seq, channels in causal_shapes:
    records.append(run_causal(batch, seq, channels, 4, fused_impl, reps))
    print(_row(records[-1]), flush=True)
  for batch in ([8] if args.tiny else [64] if args.quick else [64, 128]):
    # --tiny leaves out the slowest compile, the whole model in xla_implicit_gemm.
    records.append(run_model_step(batch, reps, ("xla", "auto") if args.tiny
                                  else ("xla", "xla_implicit_gemm", "auto")))
    print(_step_row(records[-1]), flush=True)
  note = None if accelerator else ("CPU run: 'fused' is impl='xla_implicit_gemm' (the Pallas kernels "
                                   "need a GPU or TPU; on the CPU they only run interpreted)")
  path = write_result(args, f"conv_{backend}", {"records": records, "note": note,
                                                "reps": reps})
  print(f"\nwrote {path}")
  print("\nlayer | batch | dtype | fwd fused ms | fwd xla ms | fwd speedup | "
        "fwd+bwd fused ms | fwd+bwd xla ms | fwd+bwd speedup")
  for record in records:
    print(_step_row(record) if "step" in record else _row(record))
  return 0


def _ms(result: dict) -> str:
  return f"{result['median_s'] * 1e3:.2f}" if "median_s" in result else "error"


def _row(record: dict) -> str:
  cells = [record["layer"], str(record["batch"]), record["dtype"]]
  for part in ("fwd", "fwd_bwd"):
    results = record[part]
    cells += [_ms(results["fused"]), _ms(results["xla"]),
              f"{results['speedup']:.2f}x" if "speedup" in results else "-"]
  return " | ".join(cells)


def _step_row(record: dict) -> str:
  step = record["step"]
  return " | ".join([record["layer"], str(record["batch"]), record["dtype"]] + [
      f"{impl} {_ms(step[impl])} ms ({step[impl].get('speed_vs_xla', 0):.2f}x)"
      for impl in step])

