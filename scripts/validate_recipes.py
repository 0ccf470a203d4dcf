#!/usr/bin/env python
"""Validate recipes, sweeps and accelerate configs offline: python scripts/validate_recipes.py [PATHS...]

Default: everything under recipes/. Loads no weights and no data, downloads nothing; stops at the first
bad file with an error naming the file and the key, and exits 1. See aot_handbook.validate.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from aot_handbook.validate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
