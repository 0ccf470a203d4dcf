"""The tiny task's tables, figures and judged claims: ``aot-table tiny...``, ``aot-plot --figure fig2`` and the
report of ``make reproduce-tiny`` (``recipes/tiny/reproduce.grid.yaml``; docs/REPRODUCTION.md).

- :func:`table`: the layouts ``tiny`` (the evaluation chain) and :data:`REPRODUCE_TABLES` (the paper's Tables 1, 7
  and 10 and Fig. 2 on the tiny task);
- :func:`figure2`: the paper's Fig. 2 on the tiny task;
- :func:`reproduction_report`: the grid's report in each regime: the offline tables, Fig. 1 and 2 and ``claims.md``
  (each "A beats B" claim of the paper judged by the relative dominance test); the on-policy regime's tables
  (``tabletiny-onpolicy``, ``tabletiny-rounds``) and ``claims-onpolicy.md``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from ...dominance import min_resamples, relative_test
from ...evaluation.results import read_samples
from ...io import write_text
from ...tables import (
    METHODS,
    Row,
    Table,
    alpaca_column,
    build,
    cell_values,
    current_results,
    matches,
    render,
    table_spec,
    to_csv,
    to_latex,
    to_markdown,
)

# make reproduce-tiny's layouts (recipes/tiny/reproduce.grid.yaml): the paper's tables on the tiny task
REPRODUCE_TABLES = ("tiny1", "tiny7", "tiny10", "tiny-batch", "tiny-penalty", "tiny-sort-scope")


NLL_VARIANTS = (("+ NLL", 1.0), ("no NLL", 0.0))


TABLE_DEFAULTS = {"base_model": "tiny", "batch_size": 64}  # the grid's shared settings


AOT_DEFAULTS = {"sort": "hard", "penalty": "logistic"}


WIN = ("Win rate vs SFT", "tiny:win_rate_vs_sft")


ACC = ("Accuracy", "tiny:accuracy")


FIG1 = [("Reward acc.", "tiny:reward_accuracy"), ("FSD viol. rewards", "tiny:rewards_fsd_violation"),
        ("Min gap rewards", "tiny:rewards_min_gap", {"digits": 3}),
        ("FSD viol. margins", "tiny:margins_fsd_violation"),
        ("Min gap margins", "tiny:margins_min_gap", {"digits": 2})]


def table(n: str):
    """The tiny task's table layouts: ``tiny`` (the evaluation chain) and :data:`REPRODUCE_TABLES`."""

    def row(label: str, method: str, nll: tuple[str, float], **where) -> Row:
        base = {**TABLE_DEFAULTS, **(AOT_DEFAULTS if method.startswith("aot") else {})}
        return Row((label, nll[0]), {**base, "method": method, "nll_weight": nll[1], **where})

    if n == "tiny":
        rows = [Row((label,), {"method": m, "base_model": "tiny"}) for label, m in METHODS]
        rows += [Row(("NLL control",), {"method": "sft", "base_model": "tiny", "recipe_name": "nll_control"}),
                 Row(("SFT",), {"method": "sft", "base_model": "tiny", "recipe_name": "sft"})]
        cols = [("Accuracy", "tiny:accuracy"), ("Carry", "tiny:carry"), ("No carry", "tiny:no_carry"),
                ("Win rate vs SFT (program)", "tiny:win_rate_vs_sft"), alpaca_column("program", "win_rate"),
                ("lm-eval MC", "tiny_mc"), ("lm-eval gen", "tiny_gen")]
        return Table(n, "Tiny offline task (2-digit addition), judged by program", ("Method",), cols, rows)
    control = [Row(("NLL control", "NLL only"), {**TABLE_DEFAULTS, "method": "sft", "recipe_name": "nll_control"}),
               Row(("SFT (start)", "-"), {"base_model": "tiny", "method": "sft", "recipe_name": "sft"})]
    if n == "tiny1":  # paper Table 1: methods x metrics, mean +- std over seeds
        rows = [row(label, m, nll) for nll in NLL_VARIANTS for label, m in METHODS] + control
        return Table(n, "Tiny task: every method from the same SFT model, with and without the NLL term "
                        "(mean ± std over seeds; Fig. 1 statistics on held-out pairs)",
                     ("Method", "NLL"), [WIN, ACC, ("Carry", "tiny:carry"), ("No carry", "tiny:no_carry"), *FIG1],
                     rows, std=True)
    if n == "tiny7":  # paper Table 7: hard vs soft sort
        rows = [row(label, m, nll, sort=sort) for nll in NLL_VARIANTS for label, m in METHODS[:2]
                for sort in ("hard", "soft")]
        for r in rows:
            r.labels = (*r.labels, r.where["sort"].capitalize())
        return Table(n, "Tiny task: hard vs soft (Sinkhorn) sort, mean ± std over seeds", ("Method", "NLL", "Sort"),
                     [WIN, ACC, *FIG1], rows, std=True)
    if n == "tiny10":  # paper Table 10: spread over seeds
        seeds = [(f"WR seed {s}", WIN[1], {"where": {"seed": s}, "std": False}) for s in (0, 1, 2)]
        rows = [row(label, m, nll) for nll in NLL_VARIANTS for label, m in METHODS] + control
        return Table(n, "Tiny task: win rate vs SFT per training seed, and mean ± std", ("Method", "NLL"),
                     [*seeds, ("WR mean ± std", WIN[1]), ("Accuracy mean ± std", ACC[1])], rows, std=True)
    if n == "tiny-batch":  # paper Fig. 2 (left), as a table; 256 and 1024: micro-batches of 64, accumulated
        rows = [Row((str(bs), nll[0]), {**TABLE_DEFAULTS, **AOT_DEFAULTS, "method": "aot_unpaired",
                                         "nll_weight": nll[1], "batch_size": bs,
                                         **({"sort_scope": "optimizer_batch"} if bs > 128 else {})})
                for nll in NLL_VARIANTS for bs in (16, 32, 64, 128, 256, 1024)]
        return Table(n, "Tiny task: AOT unpaired by the batch it sorts, same number of samples (256 and 1024: "
                        "64 x 4 and 64 x 16 accumulated; mean ± std over seeds)",
                     ("Batch size", "NLL"), [WIN, ACC, *FIG1], rows, std=True)
    if n == "tiny-sort-scope":  # the same 9 steps of 1024 samples (64 x 16): sorted whole, or 64 at a time
        rows = [Row((label, nll[0]), {**TABLE_DEFAULTS, **AOT_DEFAULTS, "method": "aot_unpaired",
                                      "nll_weight": nll[1], "batch_size": 1024, "sort_scope": scope})
                for nll in NLL_VARIANTS for label, scope in (("1024 sorted together", "optimizer_batch"),
                                                             ("64 x 16 sorted alone", "micro_batch"))]
        return Table(n, "Tiny task: AOT unpaired, the same steps of 1024 samples (micro-batches of 64) sorted whole "
                        "(optimizer_batch) or per micro-batch (micro_batch); mean ± std over seeds",
                     ("Sorted", "NLL"), [WIN, ACC, *FIG1], rows, std=True)
    if n == "tiny-penalty":  # paper Fig. 2 (right), as a table
        rows = [Row((p, nll[0]), {**TABLE_DEFAULTS, **AOT_DEFAULTS, "method": "aot_unpaired", "nll_weight": nll[1],
                                   "penalty": p})
                for nll in NLL_VARIANTS for p in ("logistic", "hinge", "squared_hinge", "least_squares")]
        return Table(n, "Tiny task: AOT unpaired by penalty (mean ± std over seeds)", ("Penalty", "NLL"),
                     [WIN, ACC, *FIG1], rows, std=True)
    raise ValueError(f"unknown tiny table {n!r}")


def figure2(results: list[dict], path: str | Path) -> Path:
    """Paper Fig. 2 on the tiny task: AOT unpaired by batch size (left) and by penalty (right); win rate
    vs SFT (top) and the smallest chosen-over-rejected reward quantile gap (bottom), mean and std over
    seeds, with and without the NLL term. Cells are the ``tiny-batch`` / ``tiny-penalty`` tables' own."""
    metrics = {"tiny:win_rate_vs_sft": "win rate vs SFT (%)",
               "tiny:rewards_min_gap": "min quantile gap, chosen - rejected rewards"}
    data = {}
    for name in ("tiny-batch", "tiny-penalty"):
        rows_of = table(name).rows
        for key in metrics:
            for nll in dict.fromkeys(r.labels[1] for r in rows_of):
                rows = [r for r in rows_of if r.labels[1] == nll]
                values = [cell_values(results, r, key) for r in rows]
                data.setdefault(name, {}).setdefault(key, {})[nll] = {
                    "x": [r.labels[0] for r, v in zip(rows, values) if v],
                    "mean": [statistics.mean(v) for v in values if v],
                    "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values if v]}
    from ...plots import draw_grid  # matplotlib loads when a figure is drawn, not with the task

    return draw_grid(data, path, ylabels=metrics, series="AOT unpaired {}", log2_x={"tiny-batch"},
                     xlabels={"tiny-batch": "batch size (same number of samples)", "tiny-penalty": "penalty"},
                     title="Fig. 2 (tiny task): batch size and penalty, mean ± std over seeds")


def offline_report(results: list[dict], out_dir: Path) -> dict[str, Path]:
    """The offline grid's tables (``out_dir/tables``), figures (``out_dir/plots``: Fig. 2, and Fig. 1 from the
    first seed's run folders) and ``claims.md``, from its results."""
    from ...heldout import heldout_rows, run_statistics  # models and matplotlib load for the report only
    from ...plots import figure1

    out = {}
    for number in REPRODUCE_TABLES:
        out[f"table {number}"] = render(number, out_dir, results=results)["md"]
    plots = out_dir / "plots"
    out["fig2"] = figure2(results, plots / "fig2.png")
    out["claims"] = claims_report(results, out_dir / "claims.md")
    first_seed = min((r["run"]["seed"] for r in results if r["run"].get("seed") is not None), default=None)
    for tag, weight in (("nll", 1.0), ("no_nll", 0.0)):  # Fig. 1 per NLL variant, default settings, one seed
        chosen = {}
        for r in results:
            run = r["run"]
            if (run["method"] in ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto") and run["nll_weight"] == weight
                    and run["seed"] == first_seed and run["batch_size"] == 64
                    and run.get("sort") in (None, "hard") and run.get("penalty") in (None, "logistic")):
                chosen[run["method"]] = run["path"]
        if chosen:
            rows = heldout_rows(next(iter(chosen.values())))
            stats = {m: run_statistics(path, rows) for m, path in sorted(chosen.items())}
            paths = figure1(stats, plots, prefix=f"fig1-{tag}-")
            out[f"fig1a {tag}"], out[f"fig1b {tag}"] = paths["a"], paths["b"]
    return out


# The paper's "A beats B" claims (docs/REPRODUCTION.md), each on the rows of a tiny table, per NLL
# variant: (claim, table, metric, pairs of row keys, "beats" or "par"). Claims 1 and 6 are about
# FSD statistics and seed spread, not a comparison of per-prompt scores.
CLAIMS = (
    ("2. AOT beats DPO, KTO and IPO on the win rate", "tiny1", "tiny:win_rate_vs_sft",
     [(a, b) for a in ("AOT paired", "AOT unpaired") for b in ("DPO", "KTO", "IPO")], "beats"),
    ("3. Bigger batches help AOT", "tiny-batch", "tiny:win_rate_vs_sft",
     [("32", "16"), ("64", "32"), ("128", "64"), ("256", "128"), ("1024", "256")], "beats"),
    ("3b. Sorting the whole optimizer batch beats sorting its micro-batches", "tiny-sort-scope",
     "tiny:win_rate_vs_sft", [("1024 sorted together", "64 x 16 sorted alone")], "beats"),
    ("4. The logistic penalty beats the others", "tiny-penalty", "tiny:win_rate_vs_sft",
     [("logistic", p) for p in ("hinge", "squared_hinge", "least_squares")], "beats"),
    ("5. Hard and soft sorting are on par", "tiny7", "tiny:win_rate_vs_sft",
     [(f"{m} Hard", f"{m} Soft") for m in ("AOT paired", "AOT unpaired")], "par"),
)


def _per_prompt(results: list[dict], row, metric: str) -> tuple[dict[str, list[float]] | None, int]:
    """A table row's per-prompt scores, one per seed (the seeds of one configuration answer the same prompts;
    the test takes the seed variance from them). (None, 0) without data."""
    per: dict[str, list[float]] = {}
    seeds = 0
    for r in results:
        if not matches(r["run"], row.where) or r["scores"].get(metric) is None:
            continue
        rows = read_samples(r)
        if rows is None:
            continue
        seeds += 1
        for x in rows:
            if x.get(metric) is not None:
                per.setdefault(str(x["id"]), []).append(float(x[metric]))
    if not seeds:
        return None, 0
    return {k: v for k, v in per.items() if len(v) == seeds}, seeds


def claims_report(results: list[dict], out: Path, *, alpha: float = 0.05, seed: int = 0) -> Path:
    """``claims.md``: each "A beats B" claim judged by the relative dominance test (paired over
    prompts, Holm over the pairs of the rows involved, level alpha) instead of by comparing means."""
    lines = ["# The paper's claims, judged by the relative dominance test", "",
             ("Per prompt: the program-judged win against the SFT model (100 / 50 / 0), each seed's run kept; "
              "first-order relative test (aot_handbook.dominance.relative_test): each pair on its own ratio "
              "eps(A, B) (0: A dominates B), paired over prompts, with the seed variance (the runs' means against "
              f"the seed-to-seed spread), Holm over the pairs of each block, alpha = {alpha}. p is the corrected "
              "p-value."), ""]
    for claim, number, metric, pairs, kind in CLAIMS:
        lines += [f"## {claim}", ""]
        table = table_spec(number)
        for nll, _ in NLL_VARIANTS:
            rows = {" ".join(x for i, x in enumerate(r.labels) if i != 1): r for r in table.rows if r.labels[1] == nll}
            wanted = sorted({k for pair in pairs for k in pair}, key=list(rows).index)
            scores, missing = {}, []
            for key in wanted:
                per, _ = _per_prompt(results, rows[key], metric)
                if per:
                    scores[key] = per
                else:
                    missing.append(key)
            if missing:
                lines += [f"- {nll}: no per-sample scores for {', '.join(missing)} (evaluate them again)", ""]
                continue
            lines += _judged(nll, scores, pairs, kind, alpha=alpha, seed=seed)
    return write_text(out, "\n".join(lines) + "\n")


def _judged(label: str, scores: dict[str, dict[str, float]], pairs, kind: str, *, alpha: float,
            seed: int) -> list[str]:
    """The lines of one block of a claims report: the relative test over the prompts every row answered,
    then each pair's verdict ("beats": held / reversed / not significant; "par": no difference or not)."""
    common = sorted(set.intersection(*(set(v) for v in scores.values())))
    try:
        n_boot = max(1000, min_resamples(len(scores), alpha))
        res = relative_test({k: np.array([v[i] for i in common]).T for k, v in scores.items()}, alpha=alpha,
                            paired=True, seed=seed, n_boot=n_boot)   # (seeds, prompts) per row
    except ValueError as exc:
        return [f"- {label}: not tested ({exc})", ""]
    runs = "/".join(sorted({str(r) for r in res.runs}))
    lines = [f"- {label} (n = {len(common)} prompts x {runs} seeds; uncertainty: {res.variance}; "
             f"ranking {', '.join(res.ranking)}):"]
    for a, b in pairs:
        i, j = res.names.index(a), res.names.index(b)
        p = res.p_value[i, j]
        if kind == "par":
            verdict = "held (no significant difference)" if not (res.beats(a, b) or res.beats(b, a)) \
                else f"did not hold ({a if res.beats(a, b) else b} is better)"
        else:
            verdict = "held" if res.beats(a, b) else "reversed" if res.beats(b, a) else "not significant"
        lines.append(f"  - {a} vs {b}: {verdict} (eps(A, B) {res.pair_eps[i, j]:.3f}, p = {p:.3g})")
    return [*lines, ""]


# ---- the on-policy regime's tables and claims (new files: the offline ones above are left as they are) ----


# (label, method, recipe file stem): every method of recipes/tiny/onpolicy/, none with an NLL term but the control
ONPOLICY_METHODS = (("AOT paired", "aot_paired", "aot_paired"), ("AOT unpaired", "aot_unpaired", "aot_unpaired"),
                    ("DPO", "dpo", "dpo"), ("IPO", "ipo", "ipo"), ("KTO", "kto", "kto"),
                    ("NLL control", "sft", "nll_control"))


SFT_WHERE = {"method": "sft", "recipe_name": "sft"}


ROUND_COLUMNS = (("Sampled answers right", "rounds:right"), ("Pairs", "rounds:pairs", {"digits": 0}))


def _seeds(results: list[dict]) -> str:
    return ", ".join(str(x) for x in sorted({r["run"]["seed"] for r in results if r["run"].get("seed") is not None}))


def onpolicy_table(results: list[dict], tuned: bool = False) -> Table:
    """tabletiny-onpolicy: every on-policy method from the same SFT model, mean ± std over seeds, each seed's
    accuracy, the 95% interval over prompts, and the Fig. 1 statistics on held-out pairs; ``tuned``: each method at
    the cell its fair tuning chose (the grid's tuning.json)."""
    runs = [r for r in results if r["run"].get("recipe_name") != "sft"]
    rows = [Row((label, "NLL only" if stem == "nll_control" else "no NLL"), {"method": m, "recipe_name": stem})
            for label, m, stem in ONPOLICY_METHODS] + [Row(("SFT (start)", "-"), SFT_WHERE)]
    seeds = sorted({r["run"]["seed"] for r in runs if r["run"].get("seed") is not None})
    per_seed = [(f"Acc. seed {x}", ACC[1], {"where": {"seed": x}, "std": False}) for x in seeds]
    caption = ("Tiny task, on-policy regime (recipes/tiny/onpolicy/: LoRA from the SFT model, no NLL term but the "
               "control's, trained on answers the SFT model sampled itself, judged by program"
               + ("; each method at the cell its fair tuning chose on validation prompts, tuning.json"
                  if tuned else "")
               + "): mean ± std over "
               f"seeds {_seeds(runs) or '-'} (n runs), [95% interval over prompts]; Fig. 1 statistics on held-out "
               "pairs")
    return Table("tiny-onpolicy", caption, ("Method", "NLL"),
                 [WIN, ACC, ("Carry", "tiny:carry"), ("No carry", "tiny:no_carry"), *per_seed, *FIG1], rows, std=True)


def rounds_table(rounds_recipe: str, round_seeds: list[int], n_rounds: int) -> Table:
    """tabletiny-rounds: per round seed, the SFT start then each round's policy (sampled from the one before)."""
    rows = []
    for seed in round_seeds:
        rows.append(Row(("0 (SFT)", str(seed)), SFT_WHERE))
        rows += [Row((str(r), str(seed)), {"round": r, "round_seed": seed}) for r in range(1, n_rounds + 1)]
    caption = (f"Tiny task, iterative on-policy rounds ({rounds_recipe}): round r samples answers from round r-1's "
               "policy (round 1 from the SFT model), judges them by program and trains AOT paired (LoRA, no NLL) "
               "from that policy on its best-vs-worst pairs; one run per round and seed, [95% interval over "
               "prompts]. Win rate against the SFT model; the last two columns describe the round's data")
    return Table("tiny-rounds", caption, ("Round", "Seed"),
                 [("Accuracy", ACC[1]), ("Carry", "tiny:carry"), ("No carry", "tiny:no_carry"), WIN,
                  *ROUND_COLUMNS], rows)


def _write_table(table, results: list[dict], out_dir: Path) -> Path:
    grid = build(table, current_results(results)[0])
    for ext, text in (("csv", to_csv(grid)), ("tex", to_latex(table, grid))):
        write_text(out_dir / f"table{table.number}.{ext}", text)
    return write_text(out_dir / f"table{table.number}.md", to_markdown(table, grid))


def onpolicy_report(results: list[dict], out_dir: Path, *, rounds: list[dict] = (), rounds_recipe: str | None = None,
                    round_seeds: list[int] = (), n_rounds: int = 0, tuning: dict | None = None) -> dict[str, Path]:
    """The on-policy tables (``out_dir/tables``, beside the offline ones, under new names) and
    ``out_dir/claims-onpolicy.md``; ``rounds``: each round policy's result (``round`` and ``round_seed`` in its run
    fields) of the rounds recipe ``rounds_recipe`` (None: no rounds), ``n_rounds`` for each of ``round_seeds``;
    ``tuning``: the regime's fair tuning (``tuning.json``: each cell's validation scores and the chosen cells)."""
    tables_dir = out_dir / "tables"
    sft = [r for r in results if r["run"].get("method") == "sft" and r["run"].get("recipe_name") == "sft"]
    out = {"table tiny-onpolicy": _write_table(onpolicy_table(results, tuned=bool(tuning)), results, tables_dir)}
    if rounds_recipe:
        table = rounds_table(rounds_recipe, list(round_seeds), n_rounds)
        out["table tiny-rounds"] = _write_table(table, [*sft, *rounds], tables_dir)
    out["claims on-policy"] = onpolicy_claims(results, list(rounds), out_dir / "claims-onpolicy.md", tuning=tuning)
    return out


def reproduction_report(regime: str, results: list[dict], out_dir: Path, **context) -> dict[str, Path]:
    """``TinyTask.report``: the ``offline`` or the ``onpolicy`` regime's report (``context``: the rounds)."""
    if regime == "offline":
        return offline_report(results, out_dir)
    if regime == "onpolicy":
        return onpolicy_report(results, out_dir, **context)
    raise ValueError(f"regime must be offline or onpolicy, got {regime!r}")


def tuning_lines(tuning: dict, labels: dict[str, str]) -> list[str]:
    """Markdown: each recipe's tuning cells with their validation scores (the ``select`` metrics), the chosen one
    in bold; ``labels``: recipe stem -> row label."""
    metrics = tuning["select"]
    lines = [f"Fair tuning: every method the same budget, each cell trained at seed 0 and evaluated with "
             f"{tuning['evaluation']}; the cell with the best {metrics[0]} (then {', '.join(metrics[1:]) or '-'}) "
             "is chosen. Validation " + " / ".join(m.split(":")[-1] for m in metrics) + " per cell:", "",
             "| Method | Chosen cell | Cells |", "|---|---|---|"]
    for base, cell in (tuning.get("chosen") or {}).items():
        cells = []
        for c in (c for c in tuning["cells"] if c["base"] == base):
            text = ", ".join(f"{k} {v:g}" for k, v in c["cell"].items()) + ": " + (
                " / ".join(f"{c['scores'][m]:.1f}" for m in metrics) if c["scores"] else "failed")
            cells.append(f"**{text}**" if c["cell"] == cell else text)
        stem = Path(base).stem
        lines.append(f"| {labels.get(stem, stem)} | {', '.join(f'{k} {v:g}' for k, v in cell.items())} | "
                     f"{'; '.join(cells)} |")
    for base in tuning.get("unscored") or []:
        lines.append(f"| {labels.get(Path(base).stem, base)} | none scored: not run | |")
    return lines + [""]


def onpolicy_claims(results: list[dict], rounds: list[dict], out: Path, *, alpha: float = 0.05,
                    seed: int = 0, tuning: dict | None = None) -> Path:
    """``claims-onpolicy.md``: the must-show (each method's accuracy against its SFT start, mean over seeds,
    and the relative test of it against SFT), claim 2 of claims.md in this regime, every method against the
    NLL-only control, and the rounds, each judged by the relative dominance test as in claims.md."""
    acc, win = "tiny:accuracy", "tiny:win_rate_vs_sft"
    sft_row = Row(("SFT",), SFT_WHERE)
    rows = {label: Row((label,), {"method": m, "recipe_name": stem}) for label, m, stem in ONPOLICY_METHODS}
    sft_acc = cell_values(results, sft_row, acc)
    lines = ["# The paper's claims in the on-policy regime, judged by the relative dominance test", "",
             ("Regime: recipes/tiny/onpolicy/ (LoRA from the SFT model, trained on answers it sampled itself, "
              f"judged by program); seeds {_seeds([r for r in results if r['run'].get('recipe_name') != 'sft'])}. "
              "Per prompt: a score per seed; first-order relative test (aot_handbook.dominance.relative_test: "
              "each pair on its own ratio, with the seed variance), paired over prompts, Holm over the pairs of each "
              "block, "
              f"alpha = {alpha}. '>' significantly better, '~' no significant difference; p is the corrected "
              "p-value."), "",
             *(tuning_lines(tuning, {stem: label for label, _, stem in ONPOLICY_METHODS}) if tuning else []),
             "## Preference training without an NLL term improves on its SFT start by >= 10 points", "",
             "Held-out accuracy (600 prompts), mean ± std over seeds, against the SFT model every run started "
             "from.", "", "| Method | NLL term | Seeds | Accuracy | SFT | Difference | >= 10 points |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for label, row in rows.items():
        values = cell_values(results, row, acc)
        if not values or not sft_acc:
            lines.append(f"| {label} | {'NLL only' if label == 'NLL control' else 'none'} | 0 | - | - | - | - |")
            continue
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        diff = mean - sft_acc[0]
        lines.append(f"| {label} | {'NLL only' if label == 'NLL control' else 'none'} | {len(values)} | "
                     f"{mean:.1f} ± {std:.1f} | {sft_acc[0]:.1f} | {diff:+.1f} | {'yes' if diff >= 10 else 'no'} |")
        if label != "NLL control":
            verdicts.append((label, diff))
    yes = [label for label, d in verdicts if d >= 10]
    lines += ["", f"Without an NLL term, {len(yes)} of {len(verdicts)} preference methods gain >= 10 points"
              + (f": {', '.join(yes)}." if yes else "."), ""]

    def block(title: str, metric: str, named: dict[str, Row], pairs, kind: str, label: str) -> None:
        nonlocal lines
        lines += [f"## {title}", ""]
        scores, missing = {}, []
        for key, row in named.items():
            per, _ = _per_prompt(results, row, metric)
            (scores.__setitem__(key, per) if per else missing.append(key))
        if missing:
            lines += [f"- {label}: no per-sample scores for {', '.join(missing)} (evaluate them again)", ""]
            return
        lines += _judged(label, scores, pairs, kind, alpha=alpha, seed=seed)

    prefs = [k for k in rows if k != "NLL control"]
    block("Each method against its SFT start (accuracy)", acc, {**rows, "SFT": sft_row},
          [(k, "SFT") for k in rows], "beats", "accuracy")
    block("2. AOT beats DPO, KTO and IPO on the win rate", win, {k: rows[k] for k in prefs},
          [(a, b) for a in ("AOT paired", "AOT unpaired") for b in ("DPO", "KTO", "IPO")], "beats", "no NLL")
    block("The preference methods against the NLL-only control (accuracy)", acc, rows,
          [(k, "NLL control") for k in prefs], "beats", "accuracy")
    lines += ["## 3.-5. Batch size, penalty, hard vs soft sort", "",
              "Not varied in this regime (the offline grid's claims.md judges them).", ""]
    if rounds:
        results = [*results, *rounds]
        for s in sorted({r["run"]["round_seed"] for r in rounds}):
            named = {"SFT": sft_row, **{f"round {r['run']['round']}": Row((), {"round": r["run"]["round"],
                                                                               "round_seed": s})
                                        for r in sorted(rounds, key=lambda x: x["run"]["round"])
                                        if r["run"]["round_seed"] == s}}
            keys = list(named)
            block(f"Rounds (seed {s}): each round against the one before (accuracy)", acc, named,
                  list(zip(keys[1:], keys[:-1])), "beats", "accuracy")
    return write_text(out, "\n".join(lines) + "\n")
