#!/usr/bin/env python
"""Paper Fig. 1 for one or several runs: held-out reward quantiles (1a) and margin quantiles (1b);
or Fig. 2 (batch size, penalty) from the results of make reproduce-tiny.

    python scripts/plot.py runs/tiny-aot_unpaired runs/tiny-dpo      # -> results/plots/fig1{a,b}.png
    python scripts/plot.py runs/merlinite-7b-aot_unpaired --data heldout_pairs.jsonl --max-rows 1000
    python scripts/plot.py --fig2 results/reproduce-tiny             # -> results/reproduce-tiny/plots/fig2.png

Held-out pairs: --data (json/jsonl with prompt, chosen, rejected), else the held-out pairs of the
run's task (tiny runs: the paired test split), else the test split of the first run's recipe. All runs
are scored on the same rows.
"""

import argparse

from aot_handbook.heldout import heldout_rows, run_statistics
from aot_handbook.plots import figure1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*")
    p.add_argument("--fig2", metavar="RESULTS_DIR", default=None, help="Fig. 2 from this results folder instead")
    p.add_argument("--data", default=None)
    p.add_argument("--max-rows", type=int, default=512)
    p.add_argument("--beta", type=float, default=None, help="default: each run's recipe beta")
    p.add_argument("--out-dir", default="results/plots")
    args = p.parse_args(argv)
    if args.fig2:
        from aot_handbook.evaluation.common import load_results
        from aot_handbook.tiny import figure2

        print(f"Fig. 2: {figure2(load_results(args.fig2), f'{args.fig2}/plots/fig2.png')}")
        return
    if not args.runs:
        p.error("give one or more run folders (Fig. 1), or --fig2 RESULTS_DIR")
    rows = heldout_rows(args.runs[0], args.data, max_rows=args.max_rows)
    stats = {}
    for run in args.runs:
        stats[run.rstrip("/").split("/")[-1]] = s = run_statistics(run, rows, beta=args.beta)
        print(f"{run}: reward accuracy {s['reward_accuracy']:.3f}, FSD violation (rewards) "
              f"{s['rewards_fsd']['fsd_violation_share']:.3f}, "
              f"(margins) {s['margins_fsd']['fsd_violation_share']:.3f}")
    paths = figure1(stats, args.out_dir)
    print(f"Fig. 1a: {paths['a']}\nFig. 1b: {paths['b']}")


if __name__ == "__main__":
    main()
