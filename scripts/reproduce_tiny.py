#!/usr/bin/env python
"""The paper's claims on the tiny task: train + evaluate the grid of recipes/tiny/reproduce.yaml (the offline grid
and the on-policy regime with its data stage and iterative rounds), then the tables and figures
(docs/REPRODUCTION.md). Resumable: finished cells are skipped.

    python scripts/reproduce_tiny.py                      # everything (81 offline runs, 18 on-policy runs, rounds)
    python scripts/reproduce_tiny.py --dry-run            # the runs and which are done
    python scripts/reproduce_tiny.py --regime onpolicy    # only the on-policy regime (or --regime offline)
    python scripts/reproduce_tiny.py --quick              # smoke grid: one seed, 3 steps per run, 64 prompts sampled
"""

import sys

from aot_handbook.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
