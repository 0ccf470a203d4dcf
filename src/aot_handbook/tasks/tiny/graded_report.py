"""The graded regime's reproduction report (``TinyGradedTask.report``; ``recipes/tiny/graded/reproduce.grid.yaml``):
``claims-graded.md`` under the grid's results folder, from its held-out results and ``tuning.json``.

It states the training data's quality (the share of right chosen answers, their mean quality, the best answer per
prompt), then per method its tuned cell and held-out accuracy and quality (mean +- std over seeds, a 95% bootstrap
interval over prompts of the seed-averaged score), beside the SFT start and the annotator's chosen answers on the
same held-out prompts; then the claims, each pair judged by :func:`judge_pairs`:

- G1: AOT beats its SFT start;
- G2: AOT beats the NLL-only control (fine-tuning on the same chosen answers, tuned by the same rule);
- G3: AOT beats the annotator's chosen answers (the data it was trained on);
- G4: AOT against DPO, IPO and KTO after the same fair tuning;
- G5: DPO, IPO and KTO against the SFT start, the NLL-only control and the chosen answers (the same test over the
  same pairs of rows: Holm already covers every pair, so adding the block changes no other p-value).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from ...evaluation.results import read_samples
from ...io import write_text
from ...tables import Row, cell_values, matches
from .report import SFT_WHERE

# (row label, method, recipe file stem) of recipes/tiny/graded/
METHODS = (("AOT paired", "aot_paired", "aot_paired"), ("AOT unpaired", "aot_unpaired", "aot_unpaired"),
           ("DPO", "dpo", "dpo"), ("IPO", "ipo", "ipo"), ("KTO", "kto", "kto"),
           ("NLL control", "sft", "nll_control"))
SFT, CHOSEN = "SFT start", "chosen answers"
AOT = ("AOT paired", "AOT unpaired")
CLAIMS = (
    ("G1. AOT beats its SFT start", [(a, SFT) for a in AOT]),
    ("G2. AOT beats the NLL-only control (fine-tuning on the same chosen answers)", [(a, "NLL control") for a in AOT]),
    ("G3. AOT beats the annotator's chosen answers it was trained on", [(a, CHOSEN) for a in AOT]),
    ("G4. AOT against DPO, IPO and KTO after the same fair tuning",
     [(a, b) for a in AOT for b in ("DPO", "IPO", "KTO")]),
    ("G5. DPO, IPO and KTO against the same three: the SFT start, the NLL-only control, the chosen answers",
     [(a, b) for a in ("DPO", "IPO", "KTO") for b in (SFT, "NLL control", CHOSEN)]),
)
METRICS = (("accuracy", "tiny_graded:accuracy", 1), ("quality", "tiny_graded:quality", 3))


def judge_pairs(scores: dict[str, list[list[float]]], pairs: list[tuple[str, str]], *, alpha: float = 0.05,
                seed: int = 0) -> tuple[dict[tuple[str, str], dict], str]:
    """Each pair (a, b) -> {"verdict", "p", "eps", "parts"}, and the variance the verdicts include. ``verdict``:
    "held" (a significantly better), "reversed" (b significantly better) or "not significant", from the
    first-order relative dominance test (``aot_handbook.dominance.relative_test``): each pair tested on its own
    (its ratio eps(a, b), a permutation test of interchangeability, and where a row has several runs the seed
    variance of the run means), paired over prompts, Holm over all pairs of rows; ``p`` the corrected p-value,
    ``parts`` its parts before correction. ``scores``: row -> its runs' per-prompt scores (runs x prompts, every
    row the same prompts in the same order). The one place a claim's verdict is decided."""
    from ...dominance import min_resamples, relative_test

    res = relative_test({name: np.asarray(runs, dtype=float) for name, runs in scores.items()}, alpha=alpha,
                        paired=True, seed=seed, n_boot=max(2000, min_resamples(len(scores), alpha)))
    out = {}
    for a, b in pairs:
        i, j = res.names.index(a), res.names.index(b)
        out[a, b] = {"verdict": "held" if res.beats(a, b) else "reversed" if res.beats(b, a) else "not significant",
                     "p": float(res.p_value[i, j]), "eps": float(res.pair_eps[i, j]),
                     "parts": {k: float(v[i, j]) for k, v in res.p_parts.items() if not np.isnan(v[i, j])}}
    return out, res.variance


def _runs(results: list[dict], row: Row, metric: str) -> list[dict[str, float]]:
    """A row's runs, each as prompt id -> its per-prompt score (the result's samples); runs without them skipped."""
    out = []
    for r in results:
        if matches(r["run"], row.where) and r["scores"].get(metric) is not None and (rows := read_samples(r)):
            out.append({str(x["id"]): float(x[metric]) for x in rows if x.get(metric) is not None})
    return out


def _interval(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def graded_report(results: list[dict], out_dir: Path, *, chosen, data: tuple | None = None, alpha: float = 0.05,
                  seed: int = 0) -> dict[str, Path]:
    """``claims-graded.md`` (see the module docstring); returns {"claims graded": its path}. ``chosen(prompts)``:
    the annotator's chosen answers for the held-out prompts, graded (``graded.grade`` dicts); ``data``: (folder,
    annotator, ``graded.data_quality(paired=...)["paired"]``) of the training data, or None."""
    out_dir = Path(out_dir)
    tuning = json.loads((out_dir / "tuning.json").read_text()) if (out_dir / "tuning.json").is_file() else {}
    chosen_cell = {Path(base).stem: cell for base, cell in (tuning.get("chosen") or {}).items()}
    rows = {SFT: Row((SFT,), SFT_WHERE),
            **{label: Row((label,), {"method": m, "recipe_name": stem}) for label, m, stem in METHODS}}
    lines = ["# The graded tiny regime: the chosen answer is better, not right (issue 28)", ""]
    if data is not None:
        home, annotator, q = data
        best = q["best_per_prompt"]
        lines += [f"Training data: {home} ({annotator} annotator, {q['pairs']} pairs): chosen answers right in "
                  f"{100 * q['chosen_exact']:.1f}%, mean quality of chosen answers {q['chosen_quality']:.3f} of 3 "
                  f"(rejected {q['rejected_quality']:.3f}); the best answer in the data per prompt: mean quality "
                  f"{best['quality']:.3f}, right for {100 * best['exact']:.1f}% of prompts.", ""]
    runs = {(name, key): _runs(results, row, key) for name, row in rows.items() for _, key, _ in METRICS}
    missing = [name for name in rows if not all(runs[name, key] for _, key, _ in METRICS)]
    if missing:
        lines += [f"No per-prompt held-out scores for {', '.join(missing)}: the claims are not judged "
                  "(train and evaluate them: aot-reproduce resumes).", ""]
        return {"claims graded": write_text(out_dir / "claims-graded.md", "\n".join(lines) + "\n")}
    # the prompts every run answered, in the held-out file's order (the samples'), so the numbers are the probes'
    prompts = [k for k in runs[SFT, METRICS[0][1]][0] if all(k in r for v in runs.values() for r in v)]
    scores = {metric: {} for metric, _, _ in METRICS}  # metric -> row -> runs x prompts
    for name in rows:
        for metric, key, _ in METRICS:
            scores[metric][name] = [[r[i] for i in prompts] for r in runs[name, key]]
        if name == SFT:  # the annotator's chosen answers for the same held-out prompts, graded
            graded = chosen(prompts)
            scores["accuracy"][CHOSEN] = [[100.0 * g["exact"] for g in graded]]
            scores["quality"][CHOSEN] = [[float(g["quality"]) for g in graded]]
    idx = np.random.default_rng(seed).integers(0, len(prompts), (2000, len(prompts)))
    lines += [f"Held-out prompts: {len(prompts)}. Each method's cell chosen on the validation prompts "
              f"({tuning.get('evaluation', '?')}, by {', '.join(tuning.get('select') or ['?'])}); then "
              "mean ± std over seeds [95% bootstrap interval over prompts of the seed-averaged score].", "",
              "| Row | Chosen cell | Seeds | Accuracy | Quality (of 3) |", "|---|---|---|---|---|"]
    for name in [SFT, CHOSEN, *(label for label, _, _ in METHODS)]:
        stem = next((s for label, _, s in METHODS if label == name), None)
        cell = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in (chosen_cell.get(stem) or {}).items()) or "-"
        n, cells = 1, []
        for metric, key, digits in METRICS:
            per_run = cell_values(results, rows[name], key) if name in rows \
                else [float(np.mean(scores[metric][name]))]
            n = len(per_run)
            mean, sd = statistics.mean(per_run), statistics.stdev(per_run) if len(per_run) > 1 else 0.0
            lo, hi = _interval(np.asarray(scores[metric][name]).mean(axis=0), idx)
            cells.append(f"{mean:.{digits}f} ± {sd:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]")
        lines.append(f"| {name} | {cell} | {n} | {cells[0]} | {cells[1]} |")
    judged = {metric: judge_pairs(scores[metric], [p for _, pairs in CLAIMS for p in pairs], alpha=alpha,
                                  seed=seed) for metric, _, _ in METRICS}
    verdicts = {metric: v for metric, (v, _) in judged.items()}
    k = len(scores["accuracy"])
    lines += ["", "Claims: the first-order relative dominance test, each pair of rows on its own (its ratio "
              "eps(A, B), a permutation test that the two are interchangeable, and the seed variance of the run "
              f"means where a row has several runs; uncertainty: {judged['accuracy'][1]}), paired over prompts, "
              f"Holm over all {k * (k - 1) // 2} pairs of the {k} rows, alpha = {alpha}. Per metric: held (AOT "
              "significantly better), reversed (significantly worse) or not significant; eps(A, B) (below 1/2: A "
              "better), the corrected p-value and its parts before correction.", ""]
    for title, pairs in CLAIMS:
        lines += [f"## {title}", ""]
        for a, b in pairs:
            said = []
            for metric, _, _ in METRICS:
                v = verdicts[metric][a, b]
                parts = ", ".join(f"{k} {x:.3g}" for k, x in v["parts"].items())
                said.append(f"{metric} {v['verdict']} (eps {v['eps']:.3f}, p = {v['p']:.3g}; {parts})")
            lines.append(f"- {a} vs {b}: " + "; ".join(said))
        lines.append("")
    return {"claims graded": write_text(out_dir / "claims-graded.md", "\n".join(lines) + "\n")}
