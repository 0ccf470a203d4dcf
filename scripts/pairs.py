#!/usr/bin/env python
"""On-policy preference data: python scripts/pairs.py PAIRS_RECIPE.yaml [--key value ...]

Samples k answers per prompt from a model or run folder, scores them (tiny program judge, a reward
model, or an OpenAI-compatible judge) and writes paired and unpaired training data with provenance;
resumable. With `rounds: N` it alternates this stage and training (see aot_handbook.pairs).
"""

import sys

from aot_handbook.pairs import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    try:
        main(sys.argv[1], sys.argv[2:])
    except (ValueError, FileNotFoundError) as err:  # a bad recipe, override, file, column or key: the message names it
        sys.exit(f"error: {err}")
