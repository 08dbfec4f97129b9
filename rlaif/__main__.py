"""`python -m rlaif ...` is the `rlaif` command."""

import sys

from rlaif.flows.cli import main

if __name__ == "__main__":
    sys.exit(main())
