"""`python -m bench <command> [flags]`: see `bench._runner`."""

import sys

from bench._runner import main

if __name__ == "__main__":
  sys.exit(main())
