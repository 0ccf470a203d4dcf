#!/usr/bin/env python
"""What graded on-policy data holds (issue 28, phase 1): for a ``make pairs`` folder scored by ``tiny_graded``,
the data quality of its pairs and labelled answers (aot_handbook.tasks.tiny.graded.data_quality), and for k = 2, 4, 8
how often the best of the first k samples of a prompt is the exact sum (the share of gold chosen answers a
best-vs-worst data set of k samples would have) and its mean quality.

    PYTHONPATH=src python experiments/tiny_graded_onpolicy_stats.py runs/tiny-graded-pairs
"""

import json
import statistics
import sys
from pathlib import Path

from aot_handbook.io import read_jsonl
from aot_handbook.tasks.tiny.graded import data_quality, grade


def main(folder: str):
    out = Path(folder)
    samples = read_jsonl(out / "samples.jsonl")
    stats = data_quality(paired=read_jsonl(out / "paired.jsonl"), unpaired=read_jsonl(out / "unpaired.jsonl"),
                         samples=samples)
    by_k = {}
    for k in (2, 4, 8):
        best, pairs_gold = [], []
        for r in samples:
            graded = [grade(r["prompt"], c) for c in r["completions"][:k]]
            qs = [g["quality"] for g in graded]
            best.append(max(qs))
            if max(qs) > min(qs):  # a best-vs-worst pair exists
                pairs_gold.append(max(qs) == 3)
        by_k[k] = {"best_quality": statistics.mean(best), "best_exact": statistics.mean(q == 3 for q in best),
                   "pairs": len(pairs_gold), "chosen_exact": statistics.mean(pairs_gold) if pairs_gold else None}
    print(json.dumps({"data_quality": stats, "best_of_k": by_k}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
