"""The paper's tables from whatever is under ``results/``: Markdown, CSV and LaTeX.

Each table is rows (method, optionally sort) x columns (score keys of the result files, see
:mod:`aot_handbook.evaluation.results`), filtered by base model and dataset. A cell is the mean
over the matching result files (seeds); Table 10 shows mean +- std over seeds. Where the results
keep per-sample scores, a cell also shows [low, high], the 95% bootstrap interval of its mean over
prompts (``prompt_ci``). Missing cells are a dash. Scores are percentages, printed with one decimal as in the paper.

Layouts (paper, Sec. 5 and App. H):
  1     Merlinite-7B on UltraFeedback: methods x AlpacaEval (GPT-4, LC) + six benchmarks
  2     Merlinite-7B: AlpacaEval with the Llama3-70B and the GPT-4 judge + six benchmarks
  3-6   OpenHermes-2.5, Starling-LM-alpha, Llama3-8B-Instruct, Mistral-7B-Instruct-v0.2 (Llama3-70B judge)
  7     hard vs soft sort (Merlinite-7B, AOT paired and unpaired)
  8, 9  unpaired datasets HelpSteer and PKU-BeaverTails (AOT unpaired vs KTO), six benchmarks
  10    mean and std over seeds (Merlinite-7B, UltraFeedback)
  and each registered task's own layouts (:mod:`aot_handbook.tasks`, ``Task.table_names``)
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .dominance import mean_ci
from .evaluation.results import load_results, read_samples
from .io import write_text
from .methods import table_methods
from .models import BASE_MODELS
from .run_folder import run_fingerprint
from .tasks import task_for_table, tasks

# The paper's benchmark columns, headed by the lm-eval task and metric behind them
# (recipes/eval/open_llm_paper.eval.yaml).
BENCHMARKS = [("ARC-Easy acc", "arc"), ("HellaSwag acc", "hellaswag"), ("MMLU acc", "mmlu"),
              ("TruthfulQA mc1+mc2 mean", "truthfulqa"), ("Winogrande acc", "winogrande"),
              ("GSM8K flexible-extract", "gsm8k")]
METHODS = table_methods()  # (label, method) in row order: AOT paired, AOT unpaired, DPO, KTO, IPO
BASE_NAMES = {key: m.name for key, m in BASE_MODELS.items()}
BASE_METHODS = ("base", "sft")  # the base row: the SFT'd model every method started from


@dataclass
class Row:
    labels: tuple[str, ...]
    where: dict  # run field -> value or tuple of values
    prefer: dict = field(default_factory=dict)  # run field -> value used when several variants exist


@dataclass
class Table:
    number: str
    caption: str
    row_headers: tuple[str, ...]
    # (header, score key) or (header, score key, options): options "where" (extra run filter for this
    # column, e.g. one seed), "std" (mean +- std instead of the table's default), "digits" (default 1)
    columns: list[tuple]
    rows: list[Row]
    std: bool = False


def alpaca_column(judge: str, metric: str) -> tuple[str, str]:
    name = {"gpt4": "GPT-4", "llama3-70b": "Llama3-70B", "program": "program judge"}.get(judge, judge)
    kind = "LC" if metric == "lc_win_rate" else "WR"
    return f"AlpacaEval {name} ({kind})", f"alpaca_eval:{judge}:{metric}"


def _method_rows(base: str, dataset: str | None, *, base_row: bool = True, methods=METHODS) -> list[Row]:
    rows = [Row((label,), {"method": m, "base_model": base, **({"dataset": dataset} if dataset else {})},
                prefer={"sort": "soft"}) for label, m in methods]
    if base_row:
        rows.append(Row((BASE_NAMES.get(base, base),), {"method": BASE_METHODS, "base_model": base}))
    return rows


def table_spec(number: str | int, alpaca_metric: str = "lc_win_rate") -> Table:
    n = str(number)
    gpt4, llama = alpaca_column("gpt4", alpaca_metric), alpaca_column("llama3-70b", alpaca_metric)
    per_base = {"3": "openhermes-2.5-mistral-7b", "4": "starling-lm-7b-alpha", "5": "llama3-8b-instruct",
                "6": "mistral-7b-instruct-v0.2"}
    if n == "1":
        return Table(n, "Merlinite-7B aligned on UltraFeedback: AlpacaEval (GPT-4 judge) and zero-shot benchmarks",
                     ("Method",), [gpt4, *BENCHMARKS], _method_rows("merlinite-7b", "ultrafeedback"))
    if n == "2":
        return Table(n, "Merlinite-7B on UltraFeedback: Llama3-70B and GPT-4 judges", ("Method",),
                     [llama, gpt4, *BENCHMARKS], _method_rows("merlinite-7b", "ultrafeedback"))
    if n in per_base:
        base = per_base[n]
        return Table(n, f"{BASE_NAMES[base]} on UltraFeedback (Llama3-70B judge)", ("Method",),
                     [llama, *BENCHMARKS], _method_rows(base, "ultrafeedback"))
    if n == "7":
        rows = [Row((label, sort.capitalize()), {"method": m, "base_model": "merlinite-7b",
                                                 "dataset": "ultrafeedback", "sort": sort})
                for label, m in METHODS[:2] for sort in ("soft", "hard")]
        return Table(n, "Hard vs soft sort (Merlinite-7B, UltraFeedback)", ("Method", "Sort"),
                     [llama, *BENCHMARKS], rows)
    if n in ("8", "9"):
        dataset = {"8": "helpsteer", "9": "pku-beavertails"}[n]
        rows = _method_rows("merlinite-7b", dataset, methods=[METHODS[1], METHODS[3]])
        return Table(n, f"Unpaired data: {dataset} (Merlinite-7B)", ("Method",), BENCHMARKS, rows)
    if n == "10":
        return Table(n, "Mean and std over seeds (Merlinite-7B, UltraFeedback)", ("Method",),
                     [llama, gpt4, *BENCHMARKS],
                     _method_rows("merlinite-7b", "ultrafeedback", base_row=False), std=True)
    task = task_for_table(n)
    if task is not None:
        return task.table(n)
    raise ValueError(f"TABLE={number!r}: the paper's tables are 1-10, or a task's layouts "
                     f"{sorted(name for t in tasks() for name in t.table_names)}")


def matches(run: dict, where: dict) -> bool:
    for key, want in where.items():
        got = run.get(key)
        if isinstance(want, tuple) and got not in want or not isinstance(want, tuple) and got != want:
            return False
    return True


def current_results(results: list[dict]) -> tuple[list[dict], list[str]]:
    """Results whose run folder, where it is still here, holds the weights that were evaluated (same
    fingerprint); the others are stale (the run was retrained since) and are left out, by file name."""
    kept, stale = [], []
    for r in results:
        path = Path(r["run"].get("path") or "")
        if r["run"].get("method") != "base" and (path / "recipe.json").is_file() \
                and run_fingerprint(path) != r["run"].get("fingerprint"):
            stale.append(r.get("_file") or str(path))
        else:
            kept.append(r)
    return kept, stale


def distinct_results(results: list[dict]) -> tuple[list[dict], list[str]]:
    """One result per trained run and evaluation: results of the same fingerprint (a run folder copied under another
    name, evaluated twice) are one run, never two seeds of a cell; the first (by file name) is kept and the others
    are returned, by file name, to be reported."""
    kept, copies, seen = [], [], {}
    for r in sorted(results, key=lambda r: r.get("_file") or ""):
        fp = r["run"].get("fingerprint")
        key = (fp, r.get("evaluation"))
        if fp and r["run"].get("method") != "base" and key in seen:
            copies.append(f"{r.get('_file')} (run {r['run'].get('path')}: the weights of run {seen[key]})")
            continue
        seen.setdefault(key, r["run"].get("path"))
        kept.append(r)
    return kept, copies


def cell_values(results: list[dict], row: Row, key: str, where: dict | None = None, *,
                with_results: bool = False) -> list[float]:
    where = {**row.where, **(where or {})}
    if where.get("base_model") in {t.name for t in tasks()}:  # a task recipe copied onto other data: not the task
        where.setdefault("dataset", where["base_model"])
    found = [r for r in results if matches(r["run"], where) and r["scores"].get(key) is not None]
    for k, v in row.prefer.items():  # e.g. several sort variants: the paper's default one
        preferred = [r for r in found if r["run"].get(k) == v]
        if preferred:
            found = preferred
    configs = {r["run"].get("config_id") for r in found} - {None}
    if len(configs) > 1:  # never average runs that are more than seeds of one configuration
        runs = sorted(f"{r['run'].get('name')} ({r['run'].get('recipe_path')})" for r in found)
        raise ValueError(f"row {' / '.join(row.labels)!r}, column {key!r}: results of different configurations "
                         f"fall in one cell: {runs}. Keep one configuration per row in results/ (seeds only).")
    values = [float(r["scores"][key]) for r in found]
    return (values, found) if with_results else values


def prompt_ci(found: list[dict], key: str, *, alpha: float = 0.05) -> tuple[float, float] | None:
    """95% bootstrap interval over prompts of a cell's mean, from the per-sample scores of its
    results (seeds averaged per prompt first, so prompts are what is resampled); None when any
    of them has no per-sample scores for ``key`` (older results, or a column without them)."""
    per: dict[str, list[float]] = {}
    for r in found:
        rows = read_samples(r)
        vals = [(str(x["id"]), float(x[key])) for x in rows or [] if x.get(key) is not None]
        if not vals:
            return None
        for i, v in vals:
            per.setdefault(i, []).append(v)
    if len(per) < 2:
        return None
    _, lo, hi = mean_ci([sum(v) / len(v) for v in per.values()], alpha=alpha)
    return lo, hi


def build(table: Table, results: list[dict]) -> list[list[str]]:
    """The table as a list of string rows (header first); missing cells are '-'."""
    out = [list(table.row_headers) + [c[0] for c in table.columns]]
    for row in table.rows:
        cells = []
        for header, key, *rest in table.columns:
            options = rest[0] if rest else {}
            values, found = cell_values(results, row, key, options.get("where"), with_results=True)
            digits = options.get("digits", 1)
            ci = prompt_ci(found, key) if values else None
            ci = f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""  # 95% CI over prompts
            if not values:
                cells.append("-")
            elif options.get("std", table.std):
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f} (n={len(values)}){ci}")
            else:
                cells.append(f"{statistics.mean(values):.{digits}f}{ci}")
        out.append(list(row.labels) + cells)
    return out


def to_markdown(table: Table, grid: list[list[str]]) -> str:
    lines = [f"Table {table.number}: {table.caption}", "",
             "| " + " | ".join(grid[0]) + " |", "|" + "|".join("---" for _ in grid[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in grid[1:]]
    return "\n".join(lines) + "\n"


def to_csv(grid: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(grid)
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("±", r"$\pm$")):
        s = s.replace(a, b)
    return s


def to_latex(table: Table, grid: list[list[str]]) -> str:
    n_labels = len(table.row_headers)
    columns = "l" * n_labels + "c" * len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(table.caption)}}}",
             rf"\label{{tab:aot-{table.number}}}", r"\begin{tabular}{" + columns + "}",
             r"\toprule", " & ".join(_tex(h) for h in grid[0]) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in r) + r" \\" for r in grid[1:]]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render(number: str | int, results_dir: str | Path = "results", out_dir: str | Path | None = None, *,
           alpaca_metric: str = "lc_win_rate", results: list[dict] | None = None) -> dict[str, Path]:
    """Write ``table<N>.md/.csv/.tex`` under ``out_dir`` (default ``<results_dir>/tables``); return their paths."""
    table = table_spec(number, alpaca_metric)
    results, stale = current_results(load_results(results_dir) if results is None else results)
    if stale:
        print(f"[aot-handbook] table {table.number}: left out {len(stale)} stale result(s), whose run was retrained "
              f"after the evaluation (run make eval again): {', '.join(stale)}", file=sys.stderr)
    results, copies = distinct_results(results)
    if copies:
        print(f"[aot-handbook] table {table.number}: left out {len(copies)} result(s) of a run counted already "
              f"(same fingerprint: a copied run folder is not another seed): {', '.join(copies)}", file=sys.stderr)
    grid = build(table, results)
    out = Path(out_dir) if out_dir else Path(results_dir) / "tables"
    paths = {}
    for ext, text in (("md", to_markdown(table, grid)), ("csv", to_csv(grid)), ("tex", to_latex(table, grid))):
        paths[ext] = write_text(out / f"table{table.number}.{ext}", text)
    return paths
