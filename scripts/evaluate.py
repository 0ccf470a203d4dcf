#!/usr/bin/env python
"""Evaluate one run with one evaluation recipe: `python scripts/evaluate.py RUN [EVAL]`.

RUN is a run folder (runs/...) or a base model (folder or hub id, the tables' base row);
EVAL a recipe under recipes/eval/ (default: recipes/eval/tiny.yaml). Writes
results/<run name>/<eval name>.json and prints a summary.
"""

import argparse
import logging
import sys

from aot_handbook.evaluation import evaluate
from aot_handbook.evaluation.pipeline import check_run_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("eval", nargs="?", default="recipes/eval/tiny.yaml")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--allow-incomplete", action="store_true", help="evaluate a run folder without run.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_run_path(args.run)
    except ValueError as err:  # a RUN that is no run, model folder or hub id: one line, nothing written
        sys.exit(f"error: {err}")
    evaluate(args.run, args.eval, results_dir=args.results_dir, allow_incomplete=args.allow_incomplete)


if __name__ == "__main__":
    main()
