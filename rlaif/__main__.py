"""`python -m rlaif ...` is the `rlaif` command."""

import sys

from rlaif.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
