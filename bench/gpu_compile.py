"""Every Pallas GPU kernel compiled for sm_90a (H100/H200) on a machine without a GPU.

    python3 scripts/gpu_compile.py                   # creates .venv-gpu/, then runs the grid
    python3 scripts/gpu_compile.py --quick           # a few cases (a minute)
    .venv-gpu/bin/python -m bench gpu-compile --only attention --dtype bfloat16

Each case is one differentiated call (`jax.value_and_grad` of a sum of the op's output), so one
compile holds the forward and the backward kernels: attention's `flash_attention_fwd`,
`_dq` and `_dkv`; conv's `conv_forward` (also the backward's transposed convolution),
`conv_weight_grad`, `conv_depthwise_forward` and `conv_depthwise_weight_grad`. For each
kernel program the record holds its grid, threads, dynamic shared memory, registers,
stack frame, spill stores and loads per thread (ptxas -v, sm_90a) and the resident blocks
per SM that follow (`bench._sm90.occupancy`). The JSON is rewritten after every case.

The grid varies what changes the generated code: dtype, head dim, causal, the mask kind
(attention: also a sliding window, and a soft cap with a differentiated bias); kernel size, stride, groups, dtype, activation, residual (conv). Sequence
lengths (77, 1000, 4096) and GQA/MQA head layouts rotate over the cases.

`check_against_device(record)` runs a few of the same cases on an attached GPU and compares
what its compile reports with this table (used by `python -m bench gpu-suite`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

from bench import _sm90
from bench._runner import write_result

ATTENTION_KERNELS = ("flash_attention_",)
CONV_KERNELS = ("conv_",)
ATTENTION_DTYPES = ("bfloat16", "float16", "float32")
HEAD_DIMS = (32, 59, 64, 80, 96, 128, 256)
# What reaches the kernels besides q, k, v: nothing, a length vector, segment ids, an int8
# mask, a sliding window (the loops' bounds), a soft cap with a differentiated bias (a bias
# tile in, a dbias tile out).
MASK_KINDS = ("none", "kv_lengths", "segments", "mask", "window", "soft_cap_bias")
SEQ_LENS = (77, 1000, 4096)
HEAD_LAYOUTS = ((8, 8), (8, 2), (8, 1))  # (q heads, kv heads): MHA, GQA, MQA
CONV_DTYPES = ("bfloat16", "float32")
CONV_KINDS = ("dense", "grouped", "depthwise")
ACTIVATIONS = (None, "relu", "gelu", "silu")
PARAMS = {"attention": ("head_dim", "causal", "mask", "seq", "q_heads", "kv_heads"),
          "conv2d": ("kernel", "stride", "kind", "activation", "residual"),
          "causal_conv1d": ("kernel", "activation")}


@dataclasses.dataclass(frozen=True)
class Case:
  """One compile of the grid.

  Attributes:
    op: "attention", "conv2d" or "causal_conv1d".
    dtype: the inputs' dtype name.
    params: the op's static options and sizes (JSON-able).
  """

  op: str
  dtype: str
  params: tuple

  @property
  def key(self) -> str:
    return f"{self.op}[{self.dtype}, " + ", ".join(f"{k}={v}" for k, v in self.params) + "]"

  def as_dict(self) -> dict:
    return {"op": self.op, "dtype": self.dtype, **dict(self.params)}

  @classmethod
  def from_record(cls, record: dict) -> "Case":
    """The case a record of this command's JSON was compiled from."""
    return cls(record["op"], record["dtype"],
               tuple((name, record[name]) for name in PARAMS[record["op"]]))


def attention_cases() -> list[Case]:
  """dtype x head dim x causal x mask kind; lengths and head layouts rotate."""
  cases = []
  rotation = itertools.cycle(itertools.product(SEQ_LENS, HEAD_LAYOUTS))
  for dtype, head_dim, causal, mask in itertools.product(ATTENTION_DTYPES, HEAD_DIMS,
                                                         (False, True), MASK_KINDS):
    seq, (q_heads, kv_heads) = next(rotation)
    cases.append(Case("attention", dtype, (("head_dim", head_dim), ("causal", causal),
                                           ("mask", mask), ("seq", seq),
                                           ("q_heads", q_heads), ("kv_heads", kv_heads))))
  return cases


def conv_cases() -> list[Case]:
  """kernel size x stride x groups x dtype, activations and residuals rotating; causal_conv1d."""
  cases = []
  activation = itertools.cycle(ACTIVATIONS)
  residual = itertools.cycle((True, False))
  for size, stride, kind, dtype in itertools.product((1, 3, 5, 7), (1, 2), CONV_KINDS,
                                                     CONV_DTYPES):
    cases.append(Case("conv2d", dtype, (("kernel", size), ("stride", stride), ("kind", kind),
                                        ("activation", next(activation)),
                                        ("residual", stride == 1 and next(residual)))))
  for dtype, act in itertools.product(CONV_DTYPES, (None, "silu")):
    cases.append(Case("causal_conv1d", dtype, (("kernel", 4), ("activation", act))))
  return cases


def grid(only: str | None = None, dtype: str | None = None, quick: bool = False) -> list[Case]:
  """The cases to compile: all, or those of one op family / dtype, or a quick few."""
  cases = []
  if only in (None, "attention"):
    cases += attention_cases()
  if only in (None, "conv"):
    cases += conv_cases()
  if dtype:
    cases = [c for c in cases if c.dtype == dtype]
  if quick:  # per dtype, head dim 128 with a mask, a window, a soft-capped bias; a few convs
    keep = {"attention": lambda c: dict(c.params)["head_dim"] == 128
                                   and dict(c.params)["mask"] in ("mask", "window",
                                                                  "soft_cap_bias")
                                   and dict(c.params)["causal"],
            "conv2d": lambda c: dict(c.params)["kernel"] == 3 and dict(c.params)["kind"] != "grouped",
            "causal_conv1d": lambda c: dict(c.params)["activation"] is None}
    cases = [c for c in cases if keep[c.op](c)]
  return cases


def build(case: Case, block_sizes=None):
  """`(fn, args, kernel name prefixes)` of a case: a gradient through the Pallas GPU kernel.

  Args:
    case: what to compile.
    block_sizes: the op's `BlockSizes`, or None for the kernels' defaults.
  """
  import jax
  import jax.numpy as jnp
  dtype = jnp.dtype(case.dtype)
  p = dict(case.params)
  if case.op == "attention":
    from kernels.attention import attention
    batch, seq, q_heads = 2, p["seq"], p["q_heads"]
    q = jax.ShapeDtypeStruct((batch, seq, q_heads, p["head_dim"]), dtype)
    kv = jax.ShapeDtypeStruct((batch, seq, p["kv_heads"], p["head_dim"]), dtype)
    extra = {"kv_lengths": [jax.ShapeDtypeStruct((batch,), jnp.int32)],
             "segments": [jax.ShapeDtypeStruct((batch, seq), jnp.int32)] * 2,
             "mask": [jax.ShapeDtypeStruct((batch, 1, seq, seq), jnp.bool_)],
             "soft_cap_bias": [jax.ShapeDtypeStruct((1, q_heads, seq, seq), jnp.float32)],
             "none": [], "window": []}.get(p["mask"], [])
    static = {"window": dict(local_window_size=(256, 0 if p["causal"] else 64)),
              "soft_cap_bias": dict(logits_soft_cap=30.0)}.get(p["mask"], {})

    def attention_loss(q, k, v, *options):
      names = {"kv_lengths": ("kv_lengths",), "segments": ("q_segment_ids", "kv_segment_ids"),
               "mask": ("mask",), "soft_cap_bias": ("bias",)}.get(p["mask"], ())
      given = dict(zip(names, options))
      if "q_segment_ids" in given:
        given["segment_ids"] = (given.pop("q_segment_ids"), given.pop("kv_segment_ids"))
      out = attention(q, k, v, causal=p["causal"], impl="pallas_gpu", interpret=False,
                      block_sizes=block_sizes, **static, **given)
      return jnp.sum(out.astype(jnp.float32))

    # A bias is differentiated too (its gradient is the dq kernel's second output).
    argnums = (0, 1, 2, 3) if p["mask"] == "soft_cap_bias" else (0, 1, 2)
    return (jax.value_and_grad(attention_loss, argnums=argnums), [q, kv, kv, *extra],
            ATTENTION_KERNELS)
  from kernels.conv.fused import FusedConfig, fused_conv2d
  from kernels.conv.layout import geometry
  if case.op == "causal_conv1d":
    batch, seq, channels, size = 8, 1024, 256, p["kernel"]
    x = jax.ShapeDtypeStruct((batch, 1, seq, channels), dtype)
    w = jax.ShapeDtypeStruct((1, size, 1, channels), dtype)
    geo = geometry(x.shape, w.shape, stride=(1, 1), padding=((0, 0), (size - 1, 0)),
                   dilation=(1, 1), groups=channels)
    residual = None
  else:
    batch, side, channels, size = 8, 32, 64, p["kernel"]
    groups = {"dense": 1, "grouped": 4, "depthwise": channels}[p["kind"]]
    x = jax.ShapeDtypeStruct((batch, side, side, channels), dtype)
    w = jax.ShapeDtypeStruct((size, size, channels // groups, channels), dtype)
    pad = (size - 1) // 2
    geo = geometry(x.shape, w.shape, stride=(p["stride"],) * 2, padding=((pad, pad),) * 2,
                   dilation=(1, 1), groups=groups)
    residual = (jax.ShapeDtypeStruct((batch, geo.out_h, geo.out_w, channels), dtype)
                if p["residual"] else None)
  config = FusedConfig(geo, p["activation"], "gpu", block_sizes, False,
                       has_residual=residual is not None)
  b = jax.ShapeDtypeStruct((w.shape[-1],), jnp.float32)

  def conv_loss(x, w, b, *residual):
    out = fused_conv2d(x, w, b, residual[0] if residual else None, config)
    return jnp.sum(out.astype(jnp.float32))

  argnums = tuple(range(3 + (residual is not None)))
  args = [x, w, b, *([residual] if residual is not None else [])]
  return jax.value_and_grad(conv_loss, argnums=argnums), args, CONV_KERNELS


def default_block_sizes(case: Case) -> dict:
  """The GPU `BlockSizes` the kernels take by default for `case`, as a dict."""
  if case.op == "attention":
    from kernels.attention import BlockSizes
    blocks = BlockSizes.default("gpu", dict(case.params)["head_dim"], case.dtype)
  else:
    from kernels.conv import BlockSizes
    blocks = BlockSizes.default("gpu", case.dtype)
  return dataclasses.asdict(blocks)


def compile_case(case: Case, device, ptxas: str, block_sizes=None) -> dict:
  """One case's record: its options, block sizes, compile seconds and programs, or the error."""
  fn, args, names = build(case, block_sizes)
  blocks = (default_block_sizes(case) if block_sizes is None
            else dataclasses.asdict(block_sizes))
  head = {**case.as_dict(), "key": case.key, "block_sizes": blocks}
  try:
    programs, seconds = _sm90.inspect_compiled(fn, args, device, names, ptxas=ptxas)
  except Exception as error:  # A failing case is a finding, recorded with the rest.
    return {**head, "error": f"{type(error).__name__}: {error}"[:2000]}
  return {**head, "compile_seconds": round(seconds, 2), "programs": programs}


def summarize(cases: list[dict]) -> dict:
  """Counts over the compiled programs: spilling ones, registers, blocks per SM."""
  programs = [p for c in cases for p in c.get("programs", ())]
  spilling = [p for p in programs if p["spill_store_bytes"] or p["spill_load_bytes"]]
  return {"cases": len(cases), "errors": sum("error" in c for c in cases),
          "programs": len(programs), "spilling_programs": len(spilling),
          "max_spill_store_bytes": max((p["spill_store_bytes"] for p in programs), default=0),
          "single_block_programs": sum(p["blocks_per_sm"] < 2 for p in programs),
          "compile_seconds_total": round(sum(c.get("compile_seconds", 0) for c in cases), 1),
          "compile_seconds_max": max((c.get("compile_seconds", 0) for c in cases), default=0)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `python -m bench gpu-compile` (besides --runs, --tiny, --out)."""
  parser.add_argument("--target", choices=sorted(_sm90.TARGETS), default="h200",
                      help="the GPU to compile for (both are sm_90a)")
  parser.add_argument("--only", choices=("attention", "conv"), default=None)
  parser.add_argument("--dtype", default=None, help="only cases of this dtype")
  parser.add_argument("--quick", action="store_true", help="a few cases of each kernel")
  parser.add_argument("--name", default="gpu_compile_sm90",
                      help="the JSON file's stem under --out (default gpu_compile_sm90)")
  parser.add_argument("--resume", action="store_true",
                      help="keep the cases already in the JSON file and compile the rest")


def run(args: argparse.Namespace) -> int:
  """Compiles the grid for the compile-only device; writes the JSON after every case."""
  try:
    device = _sm90.compile_only_device(args.target)
    ptxas = _sm90.ptxas_path()
  except RuntimeError as error:
    print(f"gpu-compile: {error}", file=sys.stderr)
    return 2
  cases = grid(args.only, args.dtype, args.quick or args.tiny)
  if args.tiny:
    cases = cases[:2] + [c for c in cases if c.op != "attention"][:1]
  records, start = [], time.perf_counter()
  path = args.out / f"{args.name}.json"
  if args.resume and path.exists():
    records = [c for c in json.loads(path.read_text())["cases"] if "programs" in c]
  done = {record["key"] for record in records}
  for i, case in enumerate(cases):
    if case.key in done:
      continue
    records.append(compile_case(case, device, ptxas))
    record = records[-1]
    worst = max((p["spill_store_bytes"] for p in record.get("programs", ())), default=0)
    print(f"[{i + 1}/{len(cases)}] {case.key}: "
          + (record["error"][:200] if "error" in record else
             f"{record['compile_seconds']:.1f} s, max spill {worst} B, regs "
             + "/".join(str(p["registers"]) for p in record["programs"])), flush=True)
    path = write_result(args, args.name, {
        "benchmark": "gpu_compile", "target": args.target, "ptxas": ptxas,
        "sm90": _sm90.SM90, "wall_seconds": round(time.perf_counter() - start, 1),
        "summary": summarize(records), "cases": records})
  print(f"wrote {path}\n{json.dumps(summarize(records))}")
  return 1 if any("error" in r for r in records) else 0


def check_against_device(record: dict, *, budget_seconds: float = 60.0) -> dict:
  """On an attached GPU: compiles a few cases of `record`'s table and compares the reports.

  Args:
    record: the JSON of a `gpu-compile` run (`bench/results/gpu_compile_sm90.json`).
    budget_seconds: stop starting new cases after this long.

  Returns:
    `{"compared": [...], "mismatches": n}`; each entry names the case and kernel with the
    table's and the device's registers, spills, shared memory and blocks per SM.
  """
  import jax
  device = jax.devices()[0]
  by_key = {c["key"]: c for c in record.get("cases", ()) if "programs" in c}
  wanted = [c for c in grid(quick=True) if c.key in by_key]
  compared, start = [], time.perf_counter()
  ptxas = _sm90.ptxas_path()
  fields = ("registers", "spill_store_bytes", "shared_memory_bytes", "blocks_per_sm")
  for case in wanted:
    if time.perf_counter() - start > budget_seconds:
      break
    fn, args, names = build(case)
    programs, _ = _sm90.inspect_compiled(fn, args, device, names, ptxas=ptxas)
    table = {p["name"]: p for p in by_key[case.key]["programs"]}
    found = {p["name"]: p for p in programs}
    for name in sorted(table.keys() | found.keys()):  # a kernel missing on either side differs
      expected, got = table.get(name, {}), found.get(name, {})
      compared.append({"key": case.key, "kernel": name,
                       "table": {f: expected.get(f) for f in fields},
                       "device": {f: got.get(f) for f in fields}})
  mismatches = sum(c["table"] != c["device"] for c in compared)
  return {"compared": compared, "mismatches": mismatches, "device": str(device)}
