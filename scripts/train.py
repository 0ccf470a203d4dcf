#!/usr/bin/env python
"""Train from a recipe: python scripts/train.py RECIPE.yaml [--key value ...]

The recipe's `method` picks the trainer (aot_paired, aot_unpaired, dpo, ipo, kto, sft);
every recipe key can be overridden on the command line.
"""

import sys

from aot_handbook.run import RecipeError, train

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    try:
        train(sys.argv[1], sys.argv[2:])
    except RecipeError as err:  # a bad recipe, override or data file: the message says which
        sys.exit(f"error: {err}")
