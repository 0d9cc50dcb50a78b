"""Command-line flags from config dataclasses: one `--flag` per field, checked like the config.

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Config:
...   epochs: int = 3
...   widths: tuple[int, ...] = (8, 8)
>>> parser = ConfigParser("demo")
>>> parser.add_config("train", Config())
>>> parsed = parser.parse(["--epochs", "5", "--widths", "16,4"])
>>> parsed.configs["train"]
Config(epochs=5, widths=(16, 4))
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import re
import types
import typing
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

__all__ = ["ConfigParser", "Parsed"]

_MODULE_FIELDS = ("parent", "name")  # flax.linen.Module bookkeeping, not configuration


class Parsed(NamedTuple):
  """The result of `ConfigParser.parse`.

  Attributes:
    configs: group name -> the config with the given flags applied (validated).
    extras: the plain (non-config) flags, as an `argparse.Namespace`.
    given: the flags given on the command line, as `group.field` names.
  """

  configs: dict[str, Any]
  extras: argparse.Namespace
  given: frozenset[str]


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def _unwrap_optional(tp) -> tuple[Any, bool]:
  args = typing.get_args(tp)
  if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
    rest = [a for a in args if a is not type(None)]
    return rest[0], True
  return tp, False


def _converter(tp, flag: str):
  """A function str -> value for the field type `tp`."""
  base, optional = _unwrap_optional(tp)
  origin = typing.get_origin(base)
  if origin in (tuple, list, collections.abc.Sequence):
    item_type = (typing.get_args(base) or (str,))[0]
    item = _converter(item_type, flag)
    convert = lambda text: tuple(item(part) for part in text.split(",") if part.strip())
  elif base is bool:
    convert = _parse_bool
  elif base is np.dtype:
    convert = _parse_dtype
  elif base in (int, float, str):
    convert = base
  else:
    convert = str
  def parse(text: str):
    if optional and text.strip().lower() in ("none", "null", ""):
      return None
    try:
      return convert(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{flag} expects {_type_name(tp)}; got {text!r}")
  return parse


def _parse_bool(text: str) -> bool:
  lowered = text.strip().lower()
  if lowered in ("1", "true", "yes", "on"):
    return True
  if lowered in ("0", "false", "no", "off"):
    return False
  raise ValueError(text)


def _type_name(tp) -> str:
  base, optional = _unwrap_optional(tp)
  if base is np.dtype:
    return "dtype | None" if optional else "dtype"
  return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# --- dtype fields (a model's `dtype` / `param_dtype`, annotated `jnp.dtype`) --------------


def _parse_dtype(text: str) -> np.dtype:
  """`jnp.dtype` of a name: "bfloat16", "float32", "float16", ..."""
  try:
    return jnp.dtype(text.strip())
  except TypeError:
    raise ValueError(text) from None


def _shown_default(tp, default):
  """The default as `--help` shows it: a dtype field's by its name ("float32")."""
  if _unwrap_optional(tp)[0] is np.dtype and default is not None:
    return jnp.dtype(default).name
  return ",".join(map(str, default)) if isinstance(default, tuple) else default


class ConfigParser:
  """An `argparse` parser whose flags are the fields of config dataclasses.

  Unknown flags are rejected; a value the config refuses (its `__post_init__` raises
  `ValueError`) is reported as a usage error naming the flag.

  Args:
    description: the `--help` text.
  """

  def __init__(self, description: str, *, epilog: str | None = None):
    self._parser = argparse.ArgumentParser(
        description=description, epilog=epilog,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    self._groups: dict[str, tuple[Any, dict[str, str]]] = {}

  def add_config(self, group: str, config: Any, *, aliases: dict[str, str] | None = None,
                 skip: Sequence[str] = ()) -> None:
    """Adds one flag per field of the dataclass instance `config` (its values the defaults).

    A field's `metadata["help"]` (`dataclasses.field(metadata={"help": ...})`), when it has
    one, is its flag's help text.

    Args:
      group: the name the parsed config is returned under.
      config: a dataclass instance (a frozen config, or a Flax module).
      aliases: field -> flag name to use instead of the field's own (e.g. lr).
      skip: fields that get no flag.
    """
    aliases = aliases or {}
    hints = typing.get_type_hints(type(config))
    arg_group = self._parser.add_argument_group(f"{group} ({type(config).__name__})")
    dests = {}
    bookkeeping = _MODULE_FIELDS if isinstance(config, nn.Module) else ()
    for field in dataclasses.fields(config):
      if field.name in bookkeeping or field.name in skip or not field.init:
        continue
      names = [_flag(aliases[field.name])] if field.name in aliases else []
      names.append(_flag(field.name))
      dest = f"{group}.{field.name}"
      tp = hints.get(field.name, str)
      default = getattr(config, field.name)
      shown = _shown_default(tp, default)
      text = field.metadata.get("help")  # a field's own help, when its config gives one
      arg_group.add_argument(*names, dest=dest, type=_converter(tp, names[0]),
                             default=argparse.SUPPRESS, metavar=_type_name(tp).upper(),
                             help=f"{text} (default: {shown})" if text else f"(default: {shown})")
      dests[field.name] = names[0]
    self._groups[group] = (config, dests)

  def add_argument(self, *args, **kwargs) -> None:
    """Adds a plain flag (e.g. --workdir), as `argparse.ArgumentParser.add_argument`."""
    self._parser.add_argument(*args, **kwargs)

  def error(self, message: str) -> typing.NoReturn:
    """Prints usage and `message` to stderr and exits with status 2."""
    self._parser.error(message)

  def parse(self, argv: Sequence[str] | None = None) -> Parsed:
    """Parses `argv` (default: sys.argv[1:]); exits with a usage error on bad flags."""
    namespace = vars(self._parser.parse_args(argv))
    configs, given = {}, set()
    for group, (config, dests) in self._groups.items():
      changes = {}
      for field in dests:
        key = f"{group}.{field}"
        if key in namespace:
          changes[field] = namespace.pop(key)
          given.add(key)
      try:
        configs[group] = dataclasses.replace(config, **changes) if changes else config
      except (ValueError, TypeError) as error:
        self.error(self._name_flags(str(error), type(config).__name__, dests))
    return Parsed(configs, argparse.Namespace(**namespace), frozenset(given))

  @staticmethod
  def _name_flags(message: str, class_name: str, dests: dict[str, str]) -> str:
    """Rewrites `Class.field` in a config's error message as the flag the user typed."""
    def flag(match):
      return dests.get(match.group(1), match.group(0))
    return re.sub(rf"\b{class_name}\.(\w+)", flag, message)
