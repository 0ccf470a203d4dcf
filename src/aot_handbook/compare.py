"""``make compare RUNS="runs/a runs/b ..." [EVAL=...] [METRICS=...]``: which model is better, how sure.

For one evaluation and each metric, from the per-sample scores every evaluation keeps
(``results/<run>/<eval>.samples.jsonl``):

- a ranking table (Markdown, CSV, LaTeX, the writers of ``make table``): mean with a 95%
  bootstrap interval over prompts, the one-versus-all violation ratio (lower is better) with
  its bootstrap sd, and the runs each one significantly beats, with p-values;
- the pairwise verdicts (``aot_handbook.dominance.relative_test``: permutation p-values,
  Holm-corrected over the pairs; paired over prompts when every run answered the same ones);
- a figure per metric: the quantile functions with 95% bootstrap bands (first order) and the
  integrated quantile functions (second order);
- with ``--joint`` (several metrics, e.g. the attributes of a multi-reward evaluation): one ranking on all
  of them at once, by the multivariate violation ratio (``dominance.multivariate_relative``; entropic OT
  with CLT intervals), and the pairwise ratios with Holm-corrected p-values (``compare_joint.md``).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np

from . import dominance as D
from .evaluation.common import (
    RESULTS_DIR,
    RunInfo,
    load_eval_recipe,
    read_samples,
)
from .io import atomic_path, write_text

EXTRAS = {"id", "task", "length", "reference_length"}  # per-sample fields that are not score columns


def _eval_name(eval_arg: str | None, names: list[str], results_dir: Path) -> str:
    if eval_arg:
        return load_eval_recipe(eval_arg)["name"] if Path(eval_arg).suffix in (".yaml", ".yml") else eval_arg
    shared = None
    for name in names:
        have = {p.name[:-5] for p in (results_dir / name).glob("*.json") if not p.name.startswith(".")}
        shared = have if shared is None else shared & have
    if not shared or len(shared) > 1:
        raise ValueError(f"EVAL: name the evaluation to compare; the runs {names} share "
                         f"{sorted(shared or [])} under {results_dir}")
    return shared.pop()


def load_scores(runs: list[str], eval_name: str | None = None, metrics: list[str] | None = None,
                results_dir: str | Path = RESULTS_DIR) -> tuple[str, dict[str, dict[str, tuple[list, np.ndarray]]]]:
    """(evaluation, metric -> run name -> (prompt ids, scores)), with errors naming the run and metric."""
    if len(runs) < 2:
        raise ValueError(f"RUNS: a comparison needs at least two runs, got {runs}")
    results_dir = Path(results_dir)
    names = [RunInfo.from_path(r).name for r in runs]
    if len(set(names)) < len(names):
        raise ValueError(f"RUNS: two runs share a name (results/<name> would collide): {names}")
    ev = _eval_name(eval_name, names, results_dir)
    rows = {}
    for run, name in zip(runs, names):
        file = results_dir / name / f"{ev}.json"
        if not file.is_file():
            raise FileNotFoundError(f"run {run}: no result {file} (make eval RUN={run} EVAL=...)")
        got = read_samples(file)
        if got is None:
            raise ValueError(f"run {run}: {file} has no per-sample scores (evaluated before they were kept, or "
                             f"its .samples.jsonl changed since); evaluate it again (make eval RUN={run})")
        rows[name] = got
    if not metrics:
        first = rows[names[0]]
        metrics = sorted({k for r in first for k, v in r.items() if k not in EXTRAS and v is not None})
    out: dict[str, dict] = {}
    for m in metrics:
        out[m] = {}
        for run, name in zip(runs, names):
            present = [r for r in rows[name] if r.get(m) is not None]
            if not present:
                have = sorted({k for r in rows[name] for k, v in r.items() if k not in EXTRAS and v is not None})
                raise KeyError(f"run {run}: metric {m!r} not in its per-sample scores of {ev} (has: {have})")
            values = np.array([float(r[m]) for r in present])
            bad = int(np.isnan(values).sum() + np.isinf(values).sum())
            if bad:
                raise ValueError(f"run {run}, metric {m!r}: {bad} NaN or infinite per-sample scores")
            out[m][name] = ([str(r["id"]) for r in present], values)
    return ev, out


def _align(metric: str, per_run: dict, paired: str) -> tuple[dict[str, np.ndarray], bool]:
    """Paired (rows in the first run's prompt order) when every run has the same prompt set."""
    names = list(per_run)
    ids0 = per_run[names[0]][0]
    for name in names[1:]:
        ids = per_run[name][0]
        if set(ids) != set(ids0) or len(ids) != len(ids0):
            if paired == "yes":
                only_a, only_b = len(set(ids0) - set(ids)), len(set(ids) - set(ids0))
                raise ValueError(f"metric {metric!r}: a paired test needs the same prompts, but runs {names[0]} and "
                                 f"{name} were evaluated on different prompt sets ({only_a} prompts only in "
                                 f"{names[0]}, {only_b} only in {name}); use --paired no")
            return {n: v for n, (_, v) in per_run.items()}, False
    if paired == "no":
        return {n: v for n, (_, v) in per_run.items()}, False
    aligned = {}
    for name, (ids, v) in per_run.items():
        pos = dict(zip(ids, v))
        aligned[name] = np.array([pos[i] for i in ids0])
    return aligned, True


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _figure(metric: str, scores: dict[str, np.ndarray], path: Path, n_band: int = 200, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.linspace(0.0, 1.0, 201)[1:]
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, x in scores.items():
        n = x.size
        idx = np.clip(np.ceil(t * n).astype(int) - 1, 0, n - 1)       # left-continuous inverse of the CDF
        boot = np.sort(x[rng.integers(0, n, size=(n_band, n))], axis=-1)
        levels = np.arange(n + 1) / n

        def integrated(s, levels=levels, n=n):
            return np.interp(t, levels, np.concatenate([[0.0], np.cumsum(s) / n]))

        for ax, curve, bands in ((axes[0], np.sort(x)[idx], boot[:, idx]),
                                 (axes[1], integrated(np.sort(x)), np.stack([integrated(b) for b in boot]))):
            lo, hi = np.quantile(bands, [0.025, 0.975], axis=0)
            (line,) = ax.step(t, curve, where="pre", label=name) if ax is axes[0] else ax.plot(t, curve, label=name)
            ax.fill_between(t, lo, hi, color=line.get_color(), alpha=0.2, step="pre" if ax is axes[0] else None)
    axes[0].set(title=f"{metric}: quantile functions (95% bootstrap bands)", xlabel="level t", ylabel="Q(t)")
    axes[1].set(title="integrated quantiles (second order)", xlabel="level p", ylabel="∫₀ᵖ Q(t) dt")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def joint_test(vectors: dict[str, np.ndarray], *, alpha: float = 0.05, correction: str = "holm") -> dict:
    """Runs ranked on several metrics jointly: ``vectors`` is run -> (n, d) per-sample score vectors, rows paired
    over prompts. The one-versus-all multivariate ratio (lower is better, (1 - alpha) CLT interval) and, per
    pair, ``eps(x, y)`` (0: x dominates y) with a two-sided normal p-value of ``eps = 0.5`` (the two
    interchangeable), corrected over the pairs."""
    rel = D.multivariate_relative(vectors, paired=True, alpha=alpha)  # every pair's ratio and se, one solve each
    names = rel.names
    pairs = []
    for i, a in enumerate(names):
        for j, b in enumerate(names[i + 1:], i + 1):
            ratio, se = float(rel.pair[i, j]), float(rel.pair_se[i, j])
            p = math.erfc(abs(ratio - 0.5) / se / math.sqrt(2))
            pairs.append({"x": a, "y": b, "ratio": ratio, "se": se, "p": p})
    for pair, q in zip(pairs, D.adjust_p(np.array([x["p"] for x in pairs]), correction)):
        pair["p_corrected"] = float(q)
        better, worse = (pair["x"], pair["y"]) if pair["ratio"] < 0.5 else (pair["y"], pair["x"])
        pair["verdict"] = f"{better} > {worse}" if q < alpha else f"{pair['x']} ~ {pair['y']}"
    return {"names": rel.names, "eps": rel.eps.tolist(), "ci": rel.ci.tolist(), "ranking": rel.ranking,
            "pairs": pairs, "alpha": alpha, "correction": correction}


def _joint_vectors(data: dict, metrics: list[str]) -> dict[str, np.ndarray]:
    """run -> (n, d): each run's per-sample scores of ``metrics`` on the prompts every run and metric share, in
    one order; each metric rescaled to [0, 1] by its range over all runs, so no metric's units set the cost."""
    runs = list(data[metrics[0]])
    shared = set.intersection(*(set(data[m][r][0]) for m in metrics for r in runs))
    if not shared:
        raise ValueError(f"--joint: no prompt has every metric {metrics} for every run")
    order = [i for i in data[metrics[0]][runs[0]][0] if i in shared]
    columns = {}
    for m in metrics:
        per_run = {r: dict(zip(*data[m][r])) for r in runs}
        values = np.array([[per_run[r][i] for i in order] for r in runs])
        lo, hi = values.min(), values.max()
        columns[m] = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return {r: np.stack([columns[m][k] for m in metrics], axis=1) for k, r in enumerate(runs)}


def compare(runs: list[str], *, eval_name: str | None = None, metrics: list[str] | None = None,
            results_dir: str | Path = RESULTS_DIR, out_dir: str | Path | None = None, order: int = 1,
            alpha: float = 0.05, n_boot: int = 1000, paired: str = "auto", correction: str = "holm",
            seed: int = 0, progress: bool = True, joint: bool = False) -> dict:
    """Rank the runs per metric (and, with ``joint``, on all metrics at once); write the tables and figures;
    return the tests and the paths."""
    from .tables import Table, to_csv, to_latex, to_markdown

    ev, data = load_scores(runs, eval_name, metrics, results_dir)
    k = len(runs)
    pairs = k * (k - 1) // 2
    n_boot = max(n_boot, math.ceil(2 * pairs / alpha))   # the smallest p-value must pass Holm's first step
    out = Path(out_dir) if out_dir else Path(results_dir) / "compare" / ev
    ranking = [["Metric", "Rank", "Run", "n", "Mean [95% CI]", "eps (one vs all) ± sd",
                "Significantly better than (p)"]]
    verdicts = [["Metric", "A", "", "B", "eps_A - eps_B", f"p ({correction})", "test"]]
    tests, figures = {}, {}
    for m, per_run in data.items():
        aligned, is_paired = _align(m, per_run, paired)
        try:
            res = D.relative_test(aligned, order=order, alpha=alpha, n_boot=n_boot, paired=is_paired,
                                  correction=correction, seed=seed, progress=progress)
        except ValueError as exc:
            raise ValueError(f"metric {m!r}: {exc}") from exc
        tests[m] = res
        kind = "paired" if is_paired else "unpaired"
        for rank, name in enumerate(res.ranking, 1):
            i = res.names.index(name)
            mean, lo, hi = D.mean_ci(aligned[name], alpha=0.05, seed=seed)
            beats = [f"{b} ({_fmt_p(res.p_value[i, res.names.index(b)])})" for b in res.ranking if res.beats(name, b)]
            ranking.append([m, str(rank), name, str(aligned[name].size), f"{mean:.2f} [{lo:.2f}, {hi:.2f}]",
                            f"{res.eps[i]:.3f} ± {res.eps_se[i]:.3f}", ", ".join(beats) or "-"])
        for a, rel, b, p in res.verdicts():
            i, j = res.names.index(a), res.names.index(b)
            verdicts.append([m, a, rel, b, f"{res.delta[i, j]:+.3f}", _fmt_p(p), f"{kind}, order {order}"])
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", m)
        figures[m] = _figure(m, aligned, out / f"compare_{safe}.png", seed=seed)
    caption = (f"{ev}: ranking by the relative dominance test (order {order}, alpha {alpha}, {correction}, "
               f"{n_boot} resamples); lower eps is better")
    paths = {}
    for stem, grid, headers in (("compare", ranking, ("Metric", "Rank", "Run")),
                                ("compare_pairs", verdicts, ("Metric", "A", "", "B"))):
        table = Table(number=stem, caption=caption, row_headers=headers,
                      columns=[(h, h) for h in grid[0][len(headers):]], rows=[])
        for ext, text in (("md", to_markdown(table, grid)), ("csv", to_csv(grid)), ("tex", to_latex(table, grid))):
            paths[f"{stem}.{ext}"] = write_text(out / f"{stem}.{ext}", text)
    result = {"evaluation": ev, "tests": tests, "paths": paths, "figures": figures, "n_boot": n_boot}
    if joint:
        if len(data) < 2:
            raise ValueError(f"--joint ranks runs on several metrics at once; got {list(data)}")
        vectors = _joint_vectors(data, list(data))
        jt = joint_test(vectors, alpha=alpha, correction=correction)
        lines = [f"# {ev}: runs ranked on {', '.join(data)} jointly", "",
                 "Multivariate violation ratio (entropic OT, logistic cost; each metric rescaled to [0, 1] over all "
                 f"runs; paired over {len(next(iter(vectors.values())))} prompts); lower "
                 f"is better; {100 * (1 - alpha):.0f}% CLT interval.", "",
                 "| Rank | Run | eps (one vs all) | CI |", "|---|---|---|---|"]
        for rank, name in enumerate(jt["ranking"], 1):
            i = jt["names"].index(name)
            lines.append(f"| {rank} | {name} | {jt['eps'][i]:.3f} | [{jt['ci'][i][0]:.3f}, {jt['ci'][i][1]:.3f}] |")
        lines += ["", f"Pairwise eps(x, y) (0: x dominates y), p of eps = 0.5 ({correction}):", "",
                  "| x | y | eps(x, y) | se | p | verdict |", "|---|---|---|---|---|---|"]
        lines += [f"| {q['x']} | {q['y']} | {q['ratio']:.3f} | {q['se']:.3f} | {_fmt_p(q['p_corrected'])} | "
                  f"{q['verdict']} |" for q in jt["pairs"]]
        result["joint"] = jt
        paths["compare_joint.md"] = write_text(out / "compare_joint.md", "\n".join(lines) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Which run is better, and how sure: rank runs by the relative dominance "
                                "test on their per-sample scores (docs/DOMINANCE.md).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  aot-compare runs/a runs/b runs/c --eval recipes/eval/tiny.yaml "
                                       "--metrics tiny:accuracy")
    p.add_argument("runs", nargs="+", help="run folders (or their names under results/)")
    p.add_argument("--eval", default=None, help="evaluation recipe (recipes/eval/*.yaml) or its name; "
                                                "default: the one evaluation all runs share")
    p.add_argument("--metrics", nargs="*", default=None, help="score columns (default: all in the per-sample scores)")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--out-dir", default=None, help="default: <results-dir>/compare/<eval>")
    p.add_argument("--order", type=int, choices=[1, 2], default=1, help="first- or second-order dominance")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--paired", choices=["auto", "yes", "no"], default="auto",
                   help="auto: paired over prompts when every run answered the same prompts")
    p.add_argument("--correction", choices=["holm", "bonferroni", "none"], default="holm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--joint", action="store_true",
                   help="also rank on all metrics at once (multivariate dominance; e.g. per-attribute scores)")
    a = p.parse_args(argv)
    res = compare(a.runs, eval_name=a.eval, metrics=a.metrics, results_dir=a.results_dir, out_dir=a.out_dir,
                  order=a.order, alpha=a.alpha, n_boot=a.n_boot, paired=a.paired, correction=a.correction,
                  seed=a.seed, joint=a.joint)
    print(res["paths"]["compare.md"].read_text())
    print(res["paths"]["compare_pairs.md"].read_text())
    if a.joint:
        print(res["paths"]["compare_joint.md"].read_text())
    print("written: " + ", ".join(str(x) for x in [*res["paths"].values(), *res["figures"].values()]))
    return 0
