#!/usr/bin/env python
"""On-policy graded data with the right answers hidden (issue 28, phase 1): from a ``make pairs`` folder scored by
``tiny_graded``, drop every sampled answer that is the exact sum, then pair and label the rest as the data stage
does (aot_handbook.pairs.make_pairs best-vs-worst, make_unpaired at the recipe's threshold). The chosen answer is
then never right: the on-policy counterpart of the offline graded data.

    PYTHONPATH=src python experiments/tiny_graded_hide_gold.py runs/tiny-graded-pairs runs/tiny-graded-pairs-nogold
"""

import json
import sys
from pathlib import Path

from aot_handbook.io import read_jsonl, write_jsonl
from aot_handbook.pairs import make_pairs, make_unpaired
from aot_handbook.tasks.tiny.graded import data_quality


def main(src: str, dst: str, threshold: float = 0.5):  # scores: right digits over 3
    rows = []
    for r in read_jsonl(Path(src) / "samples.jsonl"):
        kept = [(c, s) for c, s in zip(r["completions"], r["scores"]) if s is not None and s < 1.0]  # 1.0: all 3 right
        rows.append({**r, "completions": [c for c, _ in kept], "scores": [s for _, s in kept]})
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    paired, unpaired = make_pairs(rows), make_unpaired(rows, threshold)
    write_jsonl(out / "samples.jsonl", rows)
    write_jsonl(out / "paired.jsonl", paired)
    write_jsonl(out / "unpaired.jsonl", unpaired)
    stats = data_quality(paired=paired, unpaired=unpaired, samples=rows)
    (out / "provenance.json").write_text(json.dumps({"from": src, "hidden": "exact answers", "stats": stats}))
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
