#!/usr/bin/env python
"""Render one of the paper's tables (1-10, or 'tiny') from results/ to Markdown, CSV and LaTeX.

    python scripts/table.py 1                 # -> results/tables/table1.{md,csv,tex}, Markdown printed
    python scripts/table.py 1 --alpaca-metric win_rate
"""

import argparse

from aot_handbook.tables import render


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", help="1-10 or tiny")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out-dir", default=None, help="default: <results-dir>/tables")
    p.add_argument("--alpaca-metric", choices=["lc_win_rate", "win_rate"], default="lc_win_rate",
                   help="AlpacaEval column: length-controlled (the paper's Table 1, default) or raw win rate")
    args = p.parse_args(argv)
    paths = render(args.table, args.results_dir, args.out_dir, alpaca_metric=args.alpaca_metric)
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
