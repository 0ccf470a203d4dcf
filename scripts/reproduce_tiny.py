#!/usr/bin/env python
"""The paper's claims on the offline tiny task: train + evaluate the grid of recipes/tiny/reproduce.yaml,
then the tables and figures (docs/REPRODUCTION.md). Resumable: finished cells are skipped.

    python scripts/reproduce_tiny.py               # the full grid (~81 runs)
    python scripts/reproduce_tiny.py --dry-run     # the runs and which are done
    python scripts/reproduce_tiny.py --quick       # smoke grid: one seed, 3 steps per run
"""

import sys

from aot_handbook.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
