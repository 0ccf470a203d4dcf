#!/usr/bin/env python
"""Run a sweep: python scripts/sweep.py SWEEP.yaml [--dry-run] [--slurm] [--only TEXT] [--force]

One training run per override set of the sweep file (recipes/ablations/*.sweep.yaml), each named after
its overrides with its own output_dir; completed runs are skipped. Every run is checked before any
starts. See aot_handbook.sweep for the file format.
"""

import sys

from aot_handbook.sweep import main

if __name__ == "__main__":
    sys.exit(main())
