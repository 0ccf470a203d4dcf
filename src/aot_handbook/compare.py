"""``make compare RUNS="runs/a runs/b ..." [EVAL=...] [METRICS=...]``: which model is better, how sure.

For one evaluation and each metric, from the per-sample scores every evaluation keeps
(``results/<run>/<eval>.samples.jsonl``):

- a ranking table (Markdown, CSV, LaTeX, the writers of ``make table``): mean with a 95%
  bootstrap interval over prompts, the runs each one significantly beats, with p-values, and the
  one-versus-all violation ratio as a summary;
- the pairwise verdicts (``aot_handbook.dominance.relative_test``: each pair tested on its own ratio
  eps(A, B), Holm-corrected over the pairs; paired over prompts when every run answered the same ones;
  with the seed variance where a model is several runs, ``NAME=RUN,RUN,...``);
- a figure per metric: the quantile functions with 95% bootstrap bands (first order) and the
  integrated quantile functions (second order);
- with ``--joint`` (several metrics, e.g. the attributes of a multi-reward evaluation): one ranking on all
  of them at once, by the multivariate violation ratio (``dominance.multivariate_relative``; squared-hinge
  cost, debiased entropic OT, CLT intervals), and the pairwise ratios with Holm-corrected p-values;
- with ``--plan``: no test, the power of one (``aot_handbook.power``): the smallest difference the prompts and
  seeds at hand can detect, and how many prompts or seeds a target difference needs.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path

import numpy as np

from . import dominance as D
from .errors import UserError
from .evaluation.pipeline import load_eval_recipe
from .evaluation.results import RESULTS_DIR, read_result_file, read_samples
from .io import atomic_path, write_text
from .run_folder import RunInfo

EXTRAS = {"id", "task", "length", "reference_length"}  # per-sample fields that are not score columns


class CompareInputError(UserError):
    """Runs, results or scores a comparison cannot use; the message names the run, file, metric or prompt."""


def parse_runs(runs: list[str]) -> dict[str, list[str]]:
    """Models to compare, name -> its run folders (or result names). ``RUN`` is one model of one run, named
    after the run; ``NAME=RUN,RUN,...`` one model of several runs (training seeds), whose uncertainty then
    includes the seed variance."""
    models: dict[str, list[str]] = {}
    for item in runs:
        name, sep, rest = item.partition("=")
        paths = [p for p in rest.split(",") if p] if sep else [item]
        if sep and (not name or not paths):
            raise CompareInputError(f"RUNS: {item!r} is neither a run nor NAME=RUN,RUN,...")
        name = name if sep else RunInfo.from_path(item).name
        if name in models:
            raise CompareInputError(f"RUNS: two models are named {name!r} (results/<name> would collide)")
        models[name] = paths
    if len(models) < 2:
        raise CompareInputError(f"RUNS: a comparison needs at least two runs, got {runs}")
    names = [RunInfo.from_path(p).name for paths in models.values() for p in paths]
    if len(set(names)) < len(names):
        raise CompareInputError(f"RUNS: a run is listed twice: {names}")
    return models


def _eval_name(eval_arg: str | None, names: list[str], results_dir: Path) -> str:
    if eval_arg:
        return load_eval_recipe(eval_arg)["name"] if Path(eval_arg).suffix in (".yaml", ".yml") else eval_arg
    shared = None
    for name in names:
        have = {p.name[:-5] for p in (results_dir / name).glob("*.json") if not p.name.startswith(".")}
        shared = have if shared is None else shared & have
    if not shared or len(shared) > 1:
        raise CompareInputError(f"EVAL: name the evaluation to compare; the runs {names} share "
                                f"{sorted(shared or [])} under {results_dir}")
    return shared.pop()


def _rows(run: str, file: Path) -> list[dict]:
    """The per-sample rows of one run's result; every prompt id once."""
    if not file.is_file():
        raise CompareInputError(f"run {run}: no result {file} (make eval RUN={run} EVAL=...)")
    rows = read_samples(file)
    if rows is None:
        raise CompareInputError(f"run {run}: {file} has no per-sample scores (evaluated before they were kept, or "
                                f"its .samples.jsonl changed since); evaluate it again (make eval RUN={run})")
    seen: dict[str, int] = {}
    for r in rows:
        if "id" not in r:
            raise CompareInputError(f"run {run}: a row of {file.with_name(file.stem + '.samples.jsonl')} has no 'id'")
        seen[str(r["id"])] = seen.get(str(r["id"]), 0) + 1
    repeated = {i: c for i, c in seen.items() if c > 1}
    if repeated:
        first = next(iter(repeated))
        raise CompareInputError(f"run {run}: prompt id {first!r} appears {repeated[first]} times in the per-sample "
                                f"scores of {file} ({len(repeated)} repeated ids); a paired test would pair "
                                "the wrong answers")
    return rows


def _values(run: str, metric: str, rows: list[dict]) -> tuple[list[str], np.ndarray]:
    """(prompt ids, scores) of one metric in one run: numbers only (a string "0.5" is refused, not read)."""
    ids, values = [], []
    for r in rows:
        v = r.get(metric)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise CompareInputError(f"run {run}, metric {metric!r}, prompt {r['id']!r}: score {v!r} is not a number")
        if not math.isfinite(v):
            bad = sum(1 for x in rows if isinstance(x.get(metric), float) and not math.isfinite(x[metric]))
            raise CompareInputError(f"run {run}, metric {metric!r}: {bad} NaN or infinite per-sample scores "
                                    f"(first: prompt {r['id']!r})")
        ids.append(str(r["id"]))
        values.append(float(v))
    return ids, np.array(values)


def _check_provenance(eval_name: str, files: dict[str, Path], notes: list[str] | None) -> None:
    """Refuse what a comparison must not mix, naming the runs: two runs that are one training (the same
    fingerprint: a copied run folder would count as a second model or seed), and results of one evaluation name
    made by different evaluation recipes (other prompts, judge or settings under the same name). The latter is a
    note instead (``notes``) when the caller asked for different prompt sets (``--intersect``, ``--paired no``)."""
    prov = {p: read_result_file(f).get("provenance", {}) for p, f in files.items()}
    seen: dict[str, str] = {}
    for p, pr in prov.items():
        fp = pr.get("run_fingerprint")
        if fp and fp in seen:
            raise CompareInputError(f"runs {seen[fp]} and {p} are one training (the same fingerprint {fp[:12]}: a "
                                    "copied run folder), not two models or seeds; compare distinct runs")
        if fp:
            seen[fp] = p
    shas = {p: pr.get("eval_recipe_sha256") for p, pr in prov.items() if pr.get("eval_recipe_sha256")}
    if len(set(shas.values())) > 1:
        first = next(iter(shas))
        odd = next(p for p in shas if shas[p] != shas[first])
        if notes is not None:
            notes.append(f"runs {first} and {odd} were evaluated by different recipes named {eval_name!r}")
            return
        raise CompareInputError(f"evaluation {eval_name!r}: runs {first} and {odd} were evaluated by different "
                                f"recipes under that name (eval recipe sha256 {shas[first][:12]} vs "
                                f"{shas[odd][:12]}); evaluate every run with the same recipe (--intersect or "
                                "--paired no compare them anyway, with a note)")


def load_scores(runs: list[str], eval_name: str | None = None, metrics: list[str] | None = None,
                results_dir: str | Path = RESULTS_DIR, notes: list[str] | None = None,
                ) -> tuple[str, dict[str, dict[str, tuple[list, np.ndarray]]]]:
    """(evaluation, metric -> model name -> (prompt ids, scores (runs, prompts))), the runs of a model aligned on
    its first run's prompt order; errors name the run, metric and prompt (``notes``: see _check_provenance)."""
    models = parse_runs(runs)
    results_dir = Path(results_dir)
    run_name = {p: RunInfo.from_path(p).name for paths in models.values() for p in paths}
    ev = _eval_name(eval_name, list(run_name.values()), results_dir)
    files = {p: results_dir / run_name[p] / f"{ev}.json" for p in run_name}
    rows = {p: _rows(p, files[p]) for p in run_name}
    _check_provenance(ev, files, notes)
    if not metrics:
        first = rows[next(iter(rows))]
        metrics = sorted({k for r in first for k, v in r.items() if k not in EXTRAS and v is not None})
    out: dict[str, dict] = {}
    for m in metrics:
        out[m] = {}
        for model, paths in models.items():
            got = []
            for p in paths:
                ids, values = _values(p, m, rows[p])
                if not ids:
                    have = sorted({k for r in rows[p] for k, v in r.items() if k not in EXTRAS and v is not None})
                    raise CompareInputError(f"run {p}: metric {m!r} not in its per-sample scores of {ev} "
                                            f"(has: {have})")
                got.append((p, ids, values))
            _, ids0, _ = got[0]
            for p, ids, _ in got[1:]:
                if set(ids) != set(ids0):
                    raise CompareInputError(
                        f"model {model}, metric {m!r}: its runs {paths[0]} and {p} answered different prompts "
                        f"({len(set(ids0) - set(ids))} only in {paths[0]}, {len(set(ids) - set(ids0))} only in {p}); "
                        "the runs of one model must answer the same prompts")
            table = np.stack([np.array([dict(zip(ids, v))[i] for i in ids0]) for _, ids, v in got])
            out[m][model] = (ids0, table)
    return ev, out


def _align(metric: str, per_run: dict, paired: str, intersect: bool) -> tuple[dict[str, np.ndarray], bool, str]:
    """(model -> scores (runs, prompts), paired?, a note). Paired in the first model's prompt order when every
    model answered the same prompts. Different prompt sets: unpaired only when asked (``paired="no"``), paired on
    the prompts all share with ``intersect`` (the note says how many), otherwise an error naming the runs."""
    names = list(per_run)
    ids0 = per_run[names[0]][0]
    shared = set.intersection(*(set(ids) for ids, _ in per_run.values()))
    same = all(len(ids) == len(shared) for ids, _ in per_run.values())
    if paired == "no":
        return {n: v for n, (_, v) in per_run.items()}, False, ""
    note = ""
    if not same:
        if not intersect:
            odd = next(n for n in names[1:] if set(per_run[n][0]) != set(ids0))
            only_a, only_b = len(set(ids0) - set(per_run[odd][0])), len(set(per_run[odd][0]) - set(ids0))
            raise CompareInputError(
                f"metric {metric!r}: a paired test needs the same prompts, but {names[0]} and {odd} were evaluated "
                f"on different prompt sets ({only_a} prompts only in {names[0]}, {only_b} only in {odd}); "
                f"--intersect pairs them on the {len(shared)} prompts every run answered, --paired no tests them "
                "unpaired")
        if not shared:
            raise CompareInputError(f"metric {metric!r}: --intersect: no prompt was answered by every run")
        dropped = ", ".join(f"{n} {len(ids) - len(shared)}" for n, (ids, _) in per_run.items())
        note = f"{metric}: paired on the {len(shared)} prompts every run answered (dropped: {dropped})"
    order = [i for i in ids0 if i in shared]
    aligned = {}
    for name, (ids, v) in per_run.items():
        pos = {i: k for k, i in enumerate(ids)}
        aligned[name] = v[:, [pos[i] for i in order]]
    return aligned, True, note


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


JOINT_MEANING = ("eps(x, y) = OT(x->y) / (OT(x->y) + OT(y->x)), the share of the squared violations where x fails "
                 "to dominate y on all metrics at once (0: x dominates y, 1/2: neither, 1: y dominates x); cost "
                 "sum over metrics of (y - x)_+^2, the 1-D ratio's own, so with one metric it is the eps(A, B) of "
                 "compare_pairs (within 0.005 on average and 0.02 at most, docs/DOMINANCE.md); debiased entropic OT "
                 "(transport cost of the entropic plan at reg and "
                 "2 reg, extrapolated to reg -> 0; reg = 0.01 x the pair's mean squared distance). Comparable across "
                 "pairs and with the 1-D ratio; not with the logistic-cost numbers of earlier versions, which were "
                 "shrunk toward 1/2")


def joint_test(vectors: dict[str, np.ndarray], *, alpha: float = 0.05, correction: str = "holm",
               paired: bool = True, permutation: bool = True, n_boot: int | None = None, seed: int = 0,
               **ratio_kw) -> dict:
    """Runs ranked on several metrics jointly: ``vectors`` is run -> (n, d) per-sample score vectors (rows paired
    over prompts when ``paired``). The one-versus-all multivariate ratio (lower is better, (1 - alpha) CLT
    interval) and, per pair, ``eps(x, y)`` (0: x dominates y) with its verdict: a two-sided p-value of
    ``eps = 0.5`` from the CLT se (``dominance.ratio_half_p``) and, with ``permutation``, a permutation test of
    "interchangeable"
    (``dominance.interchangeable_p``); the pair's p is the larger (both must reject: the CLT se is ~0 where a
    discrete ratio sits on its jump, e.g. two 0/1 metrics with nearly equal means), corrected over the pairs.
    ``ratio_kw`` (cost, beta, reg, estimator) go to ``dominance.multivariate_relative``; its defaults are what
    ``JOINT_MEANING`` describes."""
    rel = D.multivariate_relative(vectors, paired=paired, alpha=alpha, **ratio_kw)  # every pair's ratio and se
    names = rel.names
    n_boot = n_boot or max(1000, D.min_resamples(len(names), alpha))
    pairs = []
    for i, a in enumerate(names):
        for j, b in enumerate(names[i + 1:], i + 1):
            ratio, se = float(rel.pair[i, j]), float(rel.pair_se[i, j])
            p_ratio = D.ratio_half_p(ratio, se, ratio_kw.get("interval", "logit"))
            p_perm = D.interchangeable_p(vectors[a], vectors[b], paired=paired, n_boot=n_boot, seed=seed) \
                if permutation else math.nan
            pairs.append({"x": a, "y": b, "ratio": ratio, "se": se, "p_ratio": p_ratio, "p_interchangeable": p_perm,
                          "p": p_ratio if not permutation else max(p_ratio, p_perm)})
    for pair, q in zip(pairs, D.adjust_p(np.array([x["p"] for x in pairs]), correction)):
        pair["p_corrected"] = float(q)
        better, worse = (pair["x"], pair["y"]) if pair["ratio"] < 0.5 else (pair["y"], pair["x"])
        directional = q <= alpha and pair["ratio"] != 0.5
        pair["verdict"] = f"{better} > {worse}" if directional else f"{pair['x']} ~ {pair['y']}"
    return {"names": rel.names, "eps": rel.eps.tolist(), "ci": rel.ci.tolist(), "ranking": rel.ranking,
            "pairs": pairs, "alpha": alpha, "correction": correction}


def _joint_vectors(data: dict, metrics: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """(model -> (rows, d), paired): each model's per-sample scores of ``metrics`` on the prompts every model and
    metric share, in one order, its runs stacked (rows are (run, prompt); paired when every model has as many
    runs); each metric rescaled to [0, 1] by its range over all models, so no metric's units set the cost."""
    models = list(data[metrics[0]])
    shared = set.intersection(*(set(data[m][r][0]) for m in metrics for r in models))
    if not shared:
        raise CompareInputError(f"--joint: no prompt has every metric {metrics} for every run")
    order = [i for i in data[metrics[0]][models[0]][0] if i in shared]
    columns = {}
    for m in metrics:
        per_model = []
        for r in models:
            ids, table = data[m][r]
            pos = {i: k for k, i in enumerate(ids)}
            per_model.append(table[:, [pos[i] for i in order]].ravel())
        lo, hi = min(v.min() for v in per_model), max(v.max() for v in per_model)
        columns[m] = [(v - lo) / (hi - lo) if hi > lo else np.zeros_like(v) for v in per_model]
    runs = {data[metrics[0]][r][1].shape[0] for r in models}
    return {r: np.stack([columns[m][k] for m in metrics], axis=1) for k, r in enumerate(models)}, len(runs) == 1


def compare(runs: list[str], *, eval_name: str | None = None, metrics: list[str] | None = None,
            results_dir: str | Path = RESULTS_DIR, out_dir: str | Path | None = None, order: int = 1,
            alpha: float = 0.05, threshold: float = 0.5, n_boot: int = 1000, paired: str = "auto",
            intersect: bool = False, correction: str = "holm", seed: int = 0, progress: bool = True,
            joint: bool = False) -> dict:
    """Rank the runs per metric (and, with ``joint``, on all metrics at once); write the tables and figures;
    return the tests, the paths and the notes (prompts dropped by ``intersect``)."""
    from .tables import Table, to_csv, to_latex, to_markdown

    alpha = D.check_alpha(alpha)
    notes: list[str] = []
    ev, data = load_scores(runs, eval_name, metrics, results_dir, notes if intersect or paired == "no" else None)
    k = len(next(iter(data.values())))
    n_boot = max(n_boot, D.min_resamples(k, alpha))   # the smallest p-value must pass Holm's first step
    out = Path(out_dir) if out_dir else Path(results_dir) / "compare" / ev
    ranking = [["Metric", "Rank", "Run", "runs", "n", "Mean [95% CI over prompts]", "Significantly better than (p)",
                "eps one vs all ± sd (summary)"]]
    verdicts = [["Metric", "A", "", "B", "eps(A, B) [CI over prompts]", f"p ({correction})",
                 "p parts: ratio / interchangeable / seeds", "uncertainty"]]
    tests, figures = {}, {}
    for m, per_run in data.items():
        aligned, is_paired, note = _align(m, per_run, paired, intersect)
        if note:
            notes.append(note)
        try:
            res = D.relative_test(aligned, order=order, alpha=alpha, threshold=threshold, n_boot=n_boot,
                                  paired=is_paired, correction=correction, seed=seed, progress=progress)
        except ValueError as exc:
            raise CompareInputError(f"metric {m!r}: {exc}") from exc
        tests[m] = res
        kind = (f"{res.variance}, {'paired' if is_paired else 'unpaired'}, order {order}"
                + (f", threshold {threshold}" if threshold != 0.5 else ""))
        for rank, name in enumerate(res.ranking, 1):
            i = res.names.index(name)
            mean, lo, hi = D.mean_ci(aligned[name].mean(0), alpha=0.05, seed=seed)   # runs averaged per prompt
            beats = [f"{b} ({_fmt_p(res.p_value[i, res.names.index(b)])})" for b in res.ranking if res.beats(name, b)]
            ranking.append([m, str(rank), name, str(res.runs[i]), str(aligned[name].shape[1]),
                            f"{mean:.2f} [{lo:.2f}, {hi:.2f}]", ", ".join(beats) or "-",
                            f"{res.eps[i]:.3f} ± {res.eps_se[i]:.3f}"])
        for a, rel, b, p in res.verdicts():
            i, j = res.names.index(a), res.names.index(b)
            ci = res.pair_ci[i, j]
            parts = " / ".join("-" if np.isnan(res.p_parts[x][i, j]) else _fmt_p(res.p_parts[x][i, j])
                               for x in ("ratio", "interchangeable", "seeds"))
            verdicts.append([m, a, rel, b, f"{res.pair_eps[i, j]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", _fmt_p(p), parts,
                             kind])
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", m)
        figures[m] = _figure(m, {n: v.ravel() for n, v in aligned.items()}, out / f"compare_{safe}.png", seed=seed)
    caption = (f"{ev}: A > B when eps(A, B), the pair's own violation ratio (0: A dominates B), is significantly "
               f"below {threshold} and the pair is not interchangeable (and, for models of several runs, the mean "
               f"difference exceeds the seed variance); order {order}, alpha {alpha}, {correction} over the pairs, "
               f"{n_boot} resamples. The one-versus-all eps (lower is better) is a summary that depends on the other "
               "runs in the set; no verdict is read from it" + "".join(f". {x}" for x in notes))
    paths = {}
    for stem, grid, headers in (("compare", ranking, ("Metric", "Rank", "Run")),
                                ("compare_pairs", verdicts, ("Metric", "A", "", "B"))):
        table = Table(number=stem, caption=caption, row_headers=headers,
                      columns=[(h, h) for h in grid[0][len(headers):]], rows=[])
        for ext, text in (("md", to_markdown(table, grid)), ("csv", to_csv(grid)), ("tex", to_latex(table, grid))):
            paths[f"{stem}.{ext}"] = write_text(out / f"{stem}.{ext}", text)
    result = {"evaluation": ev, "tests": tests, "paths": paths, "figures": figures, "n_boot": n_boot, "notes": notes}
    if joint:
        if len(data) < 2:
            raise CompareInputError(f"--joint ranks runs on several metrics at once; got {list(data)}")
        vectors, joint_paired = _joint_vectors(data, list(data))
        jt = joint_test(vectors, alpha=alpha, correction=correction, paired=joint_paired, n_boot=n_boot, seed=seed)
        rows = len(next(iter(vectors.values())))
        lines = [f"# {ev}: runs ranked on {', '.join(data)} jointly", "",
                 f"{JOINT_MEANING}. Each metric rescaled to [0, 1] over all runs; "
                 f"{'paired' if joint_paired else 'unpaired'} over {rows} rows (a model's runs x prompts); lower "
                 f"is better; {100 * (1 - alpha):.0f}% CLT interval over prompts (seed variance not included).", "",
                 "| Rank | Run | eps (one vs all) | CI |", "|---|---|---|---|"]
        for rank, name in enumerate(jt["ranking"], 1):
            i = jt["names"].index(name)
            lines.append(f"| {rank} | {name} | {jt['eps'][i]:.3f} | [{jt['ci'][i][0]:.3f}, {jt['ci'][i][1]:.3f}] |")
        lines += ["", f"Pairwise eps(x, y) (0: x dominates y); a verdict needs eps significantly away from 0.5 (CLT "
                  f"z-test) and the pair not interchangeable (permutation test); p: the larger, {correction}:", "",
                  "| x | y | eps(x, y) | se | p: ratio / interchangeable | p | verdict |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {q['x']} | {q['y']} | {q['ratio']:.3f} | {q['se']:.3f} | {_fmt_p(q['p_ratio'])} / "
                  f"{_fmt_p(q['p_interchangeable'])} | {_fmt_p(q['p_corrected'])} | {q['verdict']} |"
                  for q in jt["pairs"]]
        result["joint"] = jt
        paths["compare_joint.md"] = write_text(out / "compare_joint.md", "\n".join(lines) + "\n")
    return result


def plan(runs: list[str], *, eval_name: str | None = None, metrics: list[str] | None = None,
         results_dir: str | Path = RESULTS_DIR, **kw) -> str:
    """``aot-compare --plan``: the power of a comparison, from the pilot runs' per-sample scores (every pair of
    models, every metric) or, without runs, from stated effect sizes (``kw``: see ``power.plan_table``)."""
    from . import power

    if not runs:
        return power.plan_table({"stated": power.stated(kw.pop("sd", None), kw.pop("seed_sd", None))}, **kw)
    kw.pop("sd", None), kw.pop("seed_sd", None)
    _, data = load_scores(runs, eval_name, metrics, results_dir)
    out = []
    for m, per_run in data.items():
        names, comps = list(per_run), {}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                (ids_a, va), (ids_b, vb) = per_run[a], per_run[b]
                same = set(ids_a) == set(ids_b)
                if same:                                # paired: b in a's prompt order
                    pos = {x: k for k, x in enumerate(ids_b)}
                    vb = vb[:, [pos[x] for x in ids_a]]
                comps[f"{a} vs {b}"] = power.pilot(va, vb, paired=same)
        out.append(f"## {m}\n\n" + power.plan_table(comps, pairs_in_test=len(comps), **kw))
    return "\n".join(out)
