"""``make reproduce-tiny``: the paper's claims on the offline tiny task, one command, resumable.

The grid is a spec file (``recipes/tiny/reproduce.yaml``): named sweeps (the format of
:mod:`aot_handbook.sweep`) crossed with the seeds, plus ``fixed`` overrides. Each run trains in
this process (the imports and the tiny assets are paid once), its log going to
``<run>/train.log``; then it is evaluated with the spec's evaluation recipe into ``results_dir``.
A run with ``run.json``, trained from the same base recipe file and arguments (``reproduce.json``),
is not retrained, and a result newer than its run is not recomputed, so an interrupted grid
resumes where it stopped and an edited grid reruns only what the edit changed. At the end: the
tables (``tiny.REPRODUCE_TABLES``) and the figures (Fig. 1a/1b per NLL variant, Fig. 2) under
``results_dir``.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from .sweep import SweepError, SweepRun, expand_mapping, to_cli

SPEC = "recipes/tiny/reproduce.yaml"
SPEC_KEYS = {"output_root", "results_dir", "evaluation", "fixed", "seeds", "quick", "sweeps"}


@dataclass
class Grid:
    runs: list[SweepRun]
    results_dir: Path
    evaluation: str
    eval_name: str  # the evaluation recipe's name: results_dir/<run>/<eval_name>.json
    late: list[str]  # overrides applied after every run's own (quick mode)


def load(spec_path: str = SPEC, *, quick: bool = False, check: bool = True) -> Grid:
    """The runs of a reproduction spec; every run parsed as it will run when ``check``."""
    if not Path(spec_path).is_file():
        raise SweepError(f"reproduction spec not found: {spec_path}")
    spec = yaml.safe_load(Path(spec_path).read_text()) or {}
    if not isinstance(spec, dict) or set(spec) - SPEC_KEYS:
        raise SweepError(f"{spec_path}: a reproduction spec is a mapping with keys {sorted(SPEC_KEYS)}; "
                         f"unknown: {sorted(set(spec) - SPEC_KEYS) if isinstance(spec, dict) else spec!r}")
    for key in ("output_root", "results_dir", "evaluation", "sweeps"):
        if not spec.get(key):
            raise SweepError(f"{spec_path}: key '{key}' is required")
    late = {}
    if quick:
        q = spec.get("quick") or {}
        if set(q) - {"seeds", "fixed", "output_root", "results_dir"}:
            raise SweepError(f"{spec_path}: 'quick' takes seeds, fixed, output_root, results_dir")
        spec = {**spec, **{k: v for k, v in q.items() if k != "fixed"}}
        late = q.get("fixed") or {}
    if not Path(spec["evaluation"]).is_file():
        raise SweepError(f"{spec_path}: 'evaluation' file not found: {spec['evaluation']}")
    seeds = spec.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise SweepError(f"{spec_path}: 'seeds' must be a list of integers, got {seeds!r}")
    if not isinstance(spec["sweeps"], dict):
        raise SweepError(f"{spec_path}: 'sweeps' must map names to sweeps")
    runs, seen = [], set()
    for name, sweep in spec["sweeps"].items():
        where = f"{spec_path}: sweeps.{name}"
        if not isinstance(sweep, dict):
            raise SweepError(f"{where}: a sweep is a mapping (base, grid, runs, fixed)")
        grid = {**(sweep.get("grid") or {}), **({"seed": seeds} if seeds else {})}
        sweep = {**sweep, "grid": grid, "output_root": spec["output_root"],
                 "fixed": {**(spec.get("fixed") or {}), **(sweep.get("fixed") or {})}}
        for run in expand_mapping(sweep, where, check=False):
            if run.output_dir in seen:
                raise SweepError(f"{where}: run {run.name} is also in an earlier sweep; remove one")
            seen.add(run.output_dir)
            runs.append(run)
    from .evaluation.common import load_eval_recipe

    try:
        eval_name = load_eval_recipe(spec["evaluation"])["name"]
    except ValueError as err:
        raise SweepError(f"{spec_path}: 'evaluation': {err}") from None
    grid = Grid(runs, Path(spec["results_dir"]), spec["evaluation"], eval_name, to_cli(late))
    if check:
        from .sweep import _check_run

        for run in runs:
            _check_run(SweepRun(run.name, run.base, {**run.overrides, **late}, run.output_dir), spec_path)
    return grid


def _result_path(grid: Grid, run_dir: str) -> Path:
    return grid.results_dir / Path(run_dir).name / f"{grid.eval_name}.json"


def _stamp(grid: Grid, run: SweepRun) -> dict:
    """What a finished run was trained from: a run whose base recipe or arguments changed is retrained."""
    import hashlib

    return {"base": run.base, "base_sha256": hashlib.sha256(Path(run.base).read_bytes()).hexdigest(),
            "args": [*run.args, *grid.late]}


def _late_wins(args: list[str], late: list[str]) -> list[str]:
    """The run's ``--key value`` arguments less the keys ``late`` sets, then ``late`` (train refuses a key
    given twice)."""
    keys, kept, skip = {a for a in late if a.startswith("--")}, [], False
    for a in args:
        skip = a in keys if a.startswith("--") else skip
        if not skip:
            kept.append(a)
    return [*kept, *late]


def _trained(grid: Grid, run: SweepRun) -> bool:
    from .run import is_complete

    stamp = Path(run.output_dir) / "reproduce.json"
    return is_complete(run.output_dir) and stamp.is_file() and json.loads(stamp.read_text()) == _stamp(grid, run)


def _fresh(result: Path, run_dir: str) -> bool:
    done = Path(run_dir) / "run.json"
    return result.is_file() and done.is_file() and result.stat().st_mtime >= done.stat().st_mtime


def run_grid(grid: Grid, *, only: str | None = None) -> list[str]:
    """Train and evaluate every run not done yet; returns the names of the runs that failed."""
    from tqdm.auto import tqdm

    from .evaluation.pipeline import evaluate
    from .io import write_json
    from .run import train

    runs = [r for r in grid.runs if only is None or only in r.name]
    failed = []
    bar = tqdm(runs, desc="reproduce-tiny", unit="run", file=sys.stderr, dynamic_ncols=True)
    for run in bar:
        bar.set_postfix_str(run.name, refresh=True)
        result = _result_path(grid, run.output_dir)
        trained = _trained(grid, run)
        if trained and _fresh(result, run.output_dir):
            continue
        Path(run.output_dir).mkdir(parents=True, exist_ok=True)
        log = Path(run.output_dir) / "train.log"
        started = time.time()
        try:
            with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                if not trained:
                    (Path(run.output_dir) / "run.json").unlink(missing_ok=True)
                    write_json(Path(run.output_dir) / "reproduce.json", _stamp(grid, run))
                    train(run.base, _late_wins(run.args, grid.late))
                evaluate(run.output_dir, grid.evaluation, results_dir=grid.results_dir)
        except Exception:  # one bad cell must not lose the others; the log says why
            failed.append(run.name)
            with open(log, "a") as f:
                traceback.print_exc(file=f)
            bar.write(f"[reproduce-tiny] {run.name} failed ({time.time() - started:.0f} s); see {log}")
    return failed


def evaluate_sft(grid: Grid) -> None:
    """The SFT row: the model every run started from, evaluated once like the runs."""
    from .evaluation.common import RunInfo
    from .evaluation.pipeline import evaluate

    finished = [r for r in grid.runs if Path(r.output_dir, "run.json").is_file()]
    references = {RunInfo.from_path(r.output_dir).reference for r in finished}
    for ref in sorted(r for r in references if r and Path(r, "run.json").is_file()):
        if not _fresh(_result_path(grid, ref), ref):
            evaluate(ref, grid.evaluation, results_dir=grid.results_dir)


def report(grid: Grid) -> dict[str, Path]:
    """The tables and figures from ``results_dir`` (and, for Fig. 1, the seed-0 run folders)."""
    from .evaluation.common import load_results
    from .heldout import heldout_rows, run_statistics
    from .plots import figure1
    from .tables import render
    from .tiny import REPRODUCE_TABLES, figure2

    results = load_results(grid.results_dir)
    out = {}
    for number in REPRODUCE_TABLES:
        out[f"table {number}"] = render(number, grid.results_dir, results=results)["md"]
    plots = grid.results_dir / "plots"
    out["fig2"] = figure2(results, plots / "fig2.png")
    out["claims"] = claims_report(results, grid.results_dir / "claims.md")
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
    ("3. Bigger batches help AOT", "tiny-batch", "tiny:win_rate_vs_sft", [("32", "16"), ("64", "32"), ("128", "64")],
     "beats"),
    ("4. The logistic penalty beats the others", "tiny-penalty", "tiny:win_rate_vs_sft",
     [("logistic", p) for p in ("hinge", "squared_hinge", "least_squares")], "beats"),
    ("5. Hard and soft sorting are on par", "tiny7", "tiny:win_rate_vs_sft",
     [(f"{m} Hard", f"{m} Soft") for m in ("AOT paired", "AOT unpaired")], "par"),
)


def _per_prompt(results: list[dict], row, metric: str) -> tuple[dict[str, float] | None, int]:
    """A table row's per-prompt scores, averaged over its seeds (prompts are the unit the test
    resamples; the seeds of one configuration answer the same prompts). (None, 0) without data."""
    from .evaluation.common import read_samples
    from .tables import _matches

    per: dict[str, list[float]] = {}
    seeds = 0
    for r in results:
        if not _matches(r["run"], row.where) or r["scores"].get(metric) is None:
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
    return {k: sum(v) / len(v) for k, v in per.items() if len(v) == seeds}, seeds


def claims_report(results: list[dict], out: Path, *, alpha: float = 0.05, seed: int = 0) -> Path:
    """``claims.md``: each "A beats B" claim judged by the relative dominance test (paired over
    prompts, Holm over the pairs of the rows involved, level alpha) instead of by comparing means."""
    from .dominance import relative_test
    from .io import write_text
    from .tables import table_spec
    from .tiny import NLL_VARIANTS

    lines = ["# The paper's claims, judged by the relative dominance test", "",
             ("Per prompt: the program-judged win against the SFT model (100 / 50 / 0), averaged over seeds; "
              "first-order relative test (aot_handbook.dominance.relative_test), paired over prompts, "
              f"Holm over the pairs of each block, alpha = {alpha}. '>' significantly better, '~' no significant "
              "difference; p is the corrected p-value."), ""]
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
            common = sorted(set.intersection(*(set(v) for v in scores.values())))
            try:
                n_boot = max(1000, math.ceil(len(wanted) * (len(wanted) - 1) / alpha))
                res = relative_test({k: [v[i] for i in common] for k, v in scores.items()}, alpha=alpha,
                                    paired=True, seed=seed, n_boot=n_boot)
            except ValueError as exc:
                lines += [f"- {nll}: not tested ({exc})", ""]
                continue
            lines.append(f"- {nll} (n = {len(common)} prompts; ranking {' > '.join(res.ranking)}):")
            for a, b in pairs:
                i, j = res.names.index(a), res.names.index(b)
                p = res.p_value[i, j]
                if kind == "par":
                    verdict = "held (no significant difference)" if not (res.beats(a, b) or res.beats(b, a)) \
                        else f"did not hold ({a if res.beats(a, b) else b} is better)"
                else:
                    verdict = "held" if res.beats(a, b) else "reversed" if res.beats(b, a) else "not significant"
                lines.append(f"  - {a} vs {b}: {verdict} (eps {res.eps[i]:.3f} vs {res.eps[j]:.3f}, p = {p:.3g})")
            lines.append("")
    return write_text(out, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Reproduce the paper's claims on the tiny task: train and evaluate the spec's grid, then the "
                    "tables and figures (resumable: finished cells are skipped).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  aot-reproduce --dry-run\n  aot-reproduce --quick     # one seed, 3 steps per run")
    parser.add_argument("spec", nargs="?", default=SPEC,
                        help=f"the grid's spec file (default: {SPEC}, relative to the working directory)")
    parser.add_argument("--quick", action="store_true", help="the spec's smoke grid (one seed, a few steps)")
    parser.add_argument("--only", default=None, help="only the runs whose name contains this text")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")
    args = parser.parse_args(argv)
    try:
        grid = load(args.spec, quick=args.quick)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in grid.runs:
            trained = _trained(grid, run)
            state = "done" if trained and _fresh(_result_path(grid, run.output_dir), run.output_dir) else \
                "trained" if trained else "to do"
            print(f"{state:8s} {run.name}")
        print(f"{len(grid.runs)} run(s)")
        return 0
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars, once per run; the grid has its own bar
    started = time.time()
    print(f"[reproduce-tiny] {len(grid.runs)} runs -> {grid.results_dir} (finished cells are skipped)", flush=True)
    failed = run_grid(grid, only=args.only)
    evaluate_sft(grid)
    outputs = report(grid)
    print(f"[reproduce-tiny] done in {(time.time() - started) / 60:.1f} min")
    for name, path in outputs.items():
        print(f"  {name}: {path}")
    if failed:
        print(f"[reproduce-tiny] {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
