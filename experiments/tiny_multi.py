#!/usr/bin/env python
"""The tiny multi-attribute experiment of issue 19 (docs/MULTI_REWARD.md), resumable:

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/tiny_multi.py [--seeds 0 1 2]

For each seed: SFT (recipes/tiny/multi/sft.yaml), then from that SFT model multi-attribute AOT
(aot_multi.yaml), AOT on the aggregated label (aot_unpaired.yaml), AOT on an aggregate that trades
(aot_unpaired_format2x.yaml) and the NLL-only control
(nll_control.yaml), each with that seed. Every run
is evaluated greedily on the 600 held-out prompts, each answer judged on both attributes; the table
gives per-attribute accuracy (mean and spread over seeds), and the multivariate dominance test
(``dominance.multivariate_relative``, and pairwise ratios with Holm-corrected p-values) ranks the
methods on the per-prompt attribute vectors (each prompt's attributes averaged over the seeds).
Finished runs are not retrained (aot_handbook.plan.train recognises them); results go to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from aot_handbook.compare import joint_test
from aot_handbook.io import read_jsonl
from aot_handbook.plan import train
from aot_handbook.tasks.tiny.multi import ATTRIBUTES, attribute_scores, ensure_assets, summarize_scores

METHODS = {"sft": "recipes/tiny/multi/sft.yaml", "aot_multi": "recipes/tiny/multi/aot_multi.yaml",
           "aot_aggregated": "recipes/tiny/multi/aot_unpaired.yaml",
           "aot_aggregated_format2x": "recipes/tiny/multi/aot_unpaired_format2x.yaml",
           "nll_control": "recipes/tiny/multi/nll_control.yaml"}
AOT = ("aot_multi", "aot_aggregated", "aot_aggregated_format2x")


TAG = ""  # --tag: a variant of the AOT runs (e.g. "-nonll" with --aot-override --aot_nll_weight 0)


def run_dir(method: str, seed: int) -> str:
    return f"runs/tiny-multi-{method}{TAG if method in AOT else ''}-s{seed}"


def train_all(seeds, aot_overrides=()):
    for seed in seeds:
        sft = run_dir("sft", seed)
        train(METHODS["sft"], ["--seed", str(seed), "--output_dir", sft])
        for method in (*AOT, "nll_control"):
            train(METHODS[method], ["--seed", str(seed), "--output_dir", run_dir(method, seed),
                                    "--model_name_or_path", sft, *(aot_overrides if method in AOT else ())])


def evaluate(seeds, rows):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scores = {}
    for method in METHODS:
        for seed in seeds:
            path = run_dir(method, seed)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            scores[method, seed] = attribute_scores(model, AutoTokenizer.from_pretrained(path), rows)
    return scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="results/tiny_multi")
    p.add_argument("--tag", default="", help="suffix of the AOT run folders of a variant")
    p.add_argument("--aot-override", nargs=argparse.REMAINDER, default=[],
                   help="recipe overrides for both AOT methods (last option), e.g. --aot_nll_weight 0")
    args = p.parse_args(argv)
    global TAG
    TAG = args.tag
    paths = ensure_assets()
    train_all(args.seeds, args.aot_override)
    rows = read_jsonl(paths["eval_prompts"])
    scores = evaluate(args.seeds, rows)

    per_seed = {f"{m}/s{s}": summarize_scores(scores[m, s], rows) for m in METHODS for s in args.seeds}
    keys = [*ATTRIBUTES, "both", "sum_carry", "sum_no_carry"]
    table = {}
    for m in METHODS:
        vals = {k: [per_seed[f"{m}/s{s}"][k] for s in args.seeds] for k in keys}
        table[m] = {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in vals.items()}
    # per prompt: each attribute averaged over the seeds (the same prompts, in the same order, for every method)
    vectors = {m: np.mean([[[s_[a] for a in ATTRIBUTES] for s_ in scores[m, s]] for s in args.seeds], axis=0)
               for m in METHODS}
    # the multivariate ranking of `make compare --joint` as it was when docs/MULTI_REWARD.md's tables were computed
    # (logistic cost, entropic value, symmetric CLT interval and p only); its default is now the squared hinge,
    # debiased, logit-scale interval, with a permutation part in each verdict (docs/DOMINANCE.md)
    joint = joint_test(vectors, cost="logistic", beta=10.0, reg=0.05, estimator="entropic", tol=1e-4,
                       interval="normal", permutation=False)
    pairs = [{**q, "p_holm": q["p_corrected"]} for q in joint["pairs"]]

    lines = ["| method | sum | format | both | sum (carry prompts) | sum (no-carry prompts) |",
             "|---|---|---|---|---|---|"]
    for m in METHODS:
        t = table[m]
        lines.append(f"| {m} | " + " | ".join(f"{t[k][0]:.3f} ± {t[k][1]:.3f}" for k in keys) + " |")
    lines += ["", "multivariate one-versus-all ratio (lower is better; 95% CLT interval):", "",
              "| rank | method | ratio | 95% CI |", "|---|---|---|---|"]
    for rank, m in enumerate(joint["ranking"], 1):
        i = joint["names"].index(m)
        lines.append(f"| {rank} | {m} | {joint['eps'][i]:.3f} | [{joint['ci'][i][0]:.3f}, {joint['ci'][i][1]:.3f}] |")
    lines += ["", "pairwise multivariate violation ratio eps(x, y) (0: x dominates y), Holm-corrected p of "
              "eps = 0.5:", "", "| x | y | eps(x, y) | se | p (Holm) | verdict |", "|---|---|---|---|---|---|"]
    lines += [f"| {q['x']} | {q['y']} | {q['ratio']:.3f} | {q['se']:.3f} | {q['p_holm']:.2g} | {q['verdict']} |"
              for q in pairs]
    text = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({
        "seeds": args.seeds, "per_seed": per_seed, "table": table, "pairs": pairs,
        "relative": {k: joint[k] for k in ("names", "eps", "ci", "ranking")},
        "per_sample": {f"{m}/s{s}": [[int(x[a]) for a in ATTRIBUTES] for x in scores[m, s]]
                       for m in METHODS for s in args.seeds},
    }, indent=1))
    print(text)


if __name__ == "__main__":
    main()
