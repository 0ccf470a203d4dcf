#!/usr/bin/env python
"""Rank runs by the relative dominance test on their per-sample scores (see aot_handbook.compare).

    python scripts/compare.py runs/a runs/b runs/c --eval recipes/eval/tiny.yaml [--metrics tiny:accuracy]
"""

import sys

from aot_handbook.compare import main

if __name__ == "__main__":
    sys.exit(main())
