"""`python -m cfa_anomaly.cli`: the `cfa` command."""

import sys

from cfa_anomaly.cli import main

if __name__ == "__main__":
    sys.exit(main())
