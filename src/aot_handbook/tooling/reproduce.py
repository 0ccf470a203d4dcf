"""``aot-reproduce``: a task's reproduction grid (e.g. ``make reproduce-tiny``: the paper's claims on the tiny task),
one command, resumable.

The grid is a spec file (``*.grid.yaml``, e.g. ``recipes/tiny/reproduce.grid.yaml``): named sweeps (the format of
:mod:`.sweep`) crossed with the seeds, plus ``fixed`` overrides. Each run trains in this process (the imports and
a task's assets are paid once; ``aot_handbook.plan.train``: a run's ``requires`` first), its log going to
``<run>/train.log``; then it is evaluated with the spec's evaluation recipe into ``results_dir``.
A run with ``run.json``, trained from the same base recipe file and arguments (``reproduce.json``),
is not retrained, and a result newer than its run is not recomputed, so an interrupted grid
resumes where it stopped and an edited grid reruns only what the edit changed. At the end, the report of the
task whose evaluation kind the spec's evaluation recipe has (``Task.report``): its tables, figures and judged
claims under ``results_dir``.

The spec's ``onpolicy`` block is a second regime: runs on answers the SFT model sampled itself (a pairs recipe,
its data built first), and iterative rounds (a pairs recipe with ``rounds``, ``aot_handbook.plan``), each round's
policy evaluated like a run. Its results live in their own folder, so the offline report is computed from the
offline runs alone; the task's on-policy report (new tables and claims) is written beside it.

The spec's ``tune`` block makes the offline sweeps a fair tuning (issue 28): each sweep's ``grid`` is the tuning
grid, every cell trained at ``tune.seeds`` and evaluated with ``tune.evaluation`` (validation prompts) into
``<results_dir>/tune``; for each base recipe the cell with the best ``tune.select`` scores (their mean over the
tuning seeds; the first metric first, the earlier cell on a tie) is chosen, written to ``<results_dir>/tuning.json``,
and run with the spec's ``seeds`` and evaluated with its ``evaluation`` (held-out prompts). A chosen cell's run at a
tuning seed is the tuning run itself (same name, same arguments), so it is evaluated, not retrained. The ``onpolicy``
block takes a ``tune`` block of its own, the same way: its sweeps tuned on its data, ``tuning.json`` in its
``results_dir``, after the data stage and before its runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ..errors import UserError
from ..evaluation.pipeline import evaluate, load_eval_recipe
from ..evaluation.results import load_results
from ..io import write_json
from ..pairs import parse_pairs_recipe
from ..plan import make, train
from ..recipe import parse_recipe, read_recipe
from ..run_folder import RunInfo, is_complete
from ..tasks import task_for_kind
from .sweep import SweepError, SweepRun, check_run, expand_mapping, to_cli

SPEC_KEYS = {"output_root", "results_dir", "evaluation", "fixed", "seeds", "quick", "sweeps", "onpolicy", "tune"}
TUNE_KEYS = {"evaluation", "select", "seeds"}
ONPOLICY_KEYS = {"results_dir", "data", "data_overrides", "sweeps", "fixed", "rounds", "round_seeds",
                 "rounds_overrides", "tune"}


@dataclass
class Grid:
    runs: list[SweepRun]
    results_dir: Path
    evaluation: str
    eval_name: str  # the evaluation recipe's name: results_dir/<run>/<eval_name>.json
    late: list[str]  # overrides applied after every run's own (quick mode)
    onpolicy: OnPolicy | None = None  # the spec's on-policy regime (its own results_dir)
    tune: Tune | None = None  # the spec's fair tuning: ``runs`` are the chosen cells' (select), known after it


@dataclass
class Tune:
    """The fair tuning of a grid's sweeps: the tuning runs (a Grid of their own, evaluated on validation
    prompts), each base recipe's cells in grid order, and how a chosen cell becomes the grid's runs."""

    grid: Grid
    select: list[str]  # the metrics a cell is chosen by (mean over the tuning seeds), the first first
    cells: dict[str, list[tuple[dict, list[SweepRun]]]]  # base recipe -> [(cell, its tuning runs)], grid order
    final: dict[str, dict]  # base recipe -> its sweep mapping (the grid's seeds), a chosen cell substituted
    spec: dict
    spec_path: str
    key: str = "sweeps"  # where the sweeps are in the spec file (for errors)
    moved: tuple[str, str, str] | None = None  # the on-policy data stage's (recipe, own, moved) folders (quick)

    def prepare(self, run: SweepRun) -> SweepRun:
        return _moved_data(run, *self.moved) if self.moved else run

    def expand(self, base: str, cell: dict) -> list[SweepRun]:
        """The grid's runs of ``base`` at ``cell``: the sweep with the cell's values as one-value grid entries (so
        the names and arguments are those of the tuning runs at the same seed)."""
        sweep = self.final[base]
        sweep = {**sweep, "base": base, "grid": {k: [cell[k]] if k in cell else v for k, v in sweep["grid"].items()}}
        runs, _ = _expand(self.spec, {"chosen": sweep}, self.spec.get("seeds") or [], self.spec_path,
                          "tune", set())
        return [self.prepare(run) for run in runs]


@dataclass
class OnPolicy:
    """The on-policy regime: its data stage, its runs (a Grid of their own) and the iterative rounds."""

    grid: Grid
    data: str  # the pairs recipe every run trains on, built first
    data_args: list[str]  # its overrides (quick: fewer prompts, another folder)
    rounds: str | None  # a pairs recipe with rounds: N
    round_seeds: list[int]
    rounds_args: list[str]
    output_root: str
    fixed: list[str]  # the spec's fixed overrides, for the rounds' training too

    def rounds_dir(self, seed: int) -> Path:
        return Path(self.output_root) / f"onpolicy-rounds-seed_{seed}"

    def round_results(self, seed: int, r: int) -> Path:
        return self.grid.results_dir / f"rounds-seed_{seed}-round{r}"


def load(spec_path: str, *, quick: bool = False, check: bool = True) -> Grid:
    """The runs of a reproduction spec; every run parsed as it will run when ``check``."""
    try:
        spec = read_recipe(spec_path, "grid")
    except UserError as err:
        raise SweepError(str(err)) from None
    if set(spec) - SPEC_KEYS:
        raise SweepError(f"{spec_path}: a reproduction spec is a mapping with keys {sorted(SPEC_KEYS)}; "
                         f"unknown: {sorted(set(spec) - SPEC_KEYS)}")
    for key in ("output_root", "results_dir", "evaluation", "sweeps"):
        if not spec.get(key):
            raise SweepError(f"{spec_path}: key '{key}' is required")
    late = {}
    if quick:
        q = spec.get("quick") or {}
        if set(q) - {"seeds", "fixed", "output_root", "results_dir", "onpolicy", "tune"}:
            raise SweepError(f"{spec_path}: 'quick' takes seeds, fixed, output_root, results_dir, onpolicy, tune")
        spec = {**spec, **{k: v for k, v in q.items() if k not in ("fixed", "onpolicy", "tune")}}
        if spec.get("onpolicy") and q.get("onpolicy"):
            spec["onpolicy"] = {**spec["onpolicy"], **q["onpolicy"]}
        if spec.get("tune") and q.get("tune"):
            spec["tune"] = {**spec["tune"], **q["tune"]}
        late = q.get("fixed") or {}
    if not Path(spec["evaluation"]).is_file():
        raise SweepError(f"{spec_path}: 'evaluation' file not found: {spec['evaluation']}")
    seeds = spec.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise SweepError(f"{spec_path}: 'seeds' must be a list of integers, got {seeds!r}")
    if not isinstance(spec["sweeps"], dict):
        raise SweepError(f"{spec_path}: 'sweeps' must map names to sweeps")
    tune = _load_tune(spec, spec_path, late) if spec.get("tune") else None
    runs, seen = (([], {r.output_dir for r in tune.grid.runs}) if tune else
                  _expand(spec, spec["sweeps"], seeds, spec_path, "sweeps", set()))
    try:
        eval_name = load_eval_recipe(spec["evaluation"])["name"]
    except ValueError as err:
        raise SweepError(f"{spec_path}: 'evaluation': {err}") from None
    grid = Grid(runs, Path(spec["results_dir"]), spec["evaluation"], eval_name, to_cli(late), tune=tune)
    if spec.get("onpolicy"):
        grid.onpolicy = _load_onpolicy(spec, seeds, spec_path, seen, eval_name, late)
    if check:
        op = grid.onpolicy.grid if grid.onpolicy else None
        for run in [*runs, *(tune.grid.runs if tune else []), *(op.runs if op else []),
                    *(op.tune.grid.runs if op and op.tune else [])]:
            check_run(SweepRun(run.name, run.base, {**run.overrides, **late}, run.output_dir), spec_path)
    return grid


def _load_tune(spec: dict, spec_path: str, late: dict, sweeps_key: str = "sweeps",
               moved: tuple[str, str, str] | None = None) -> Tune:
    """The ``tune`` block of ``spec`` (the file's, or its ``onpolicy`` block merged into it: ``sweeps_key`` says where
    the sweeps are): the sweeps' cells at the tuning seeds, grouped by base recipe and cell."""
    prefix = sweeps_key.rsplit("sweeps", 1)[0]
    block, where = spec["tune"], f"{spec_path}: {prefix}tune"
    if not isinstance(block, dict) or set(block) - TUNE_KEYS:
        raise SweepError(f"{where}: a mapping with keys {sorted(TUNE_KEYS)}; unknown: "
                         f"{sorted(set(block) - TUNE_KEYS) if isinstance(block, dict) else block!r}")
    for key in ("evaluation", "select"):
        if not block.get(key):
            raise SweepError(f"{where}: key '{key}' is required")
    if not Path(block["evaluation"]).is_file():
        raise SweepError(f"{where}: 'evaluation' file not found: {block['evaluation']}")
    select = block["select"] if isinstance(block["select"], list) else [block["select"]]
    if not all(isinstance(m, str) and m for m in select):
        raise SweepError(f"{where}: 'select' must be a metric name or a list of them, got {block['select']!r}")
    seeds = block.get("seeds") or [0]
    if not isinstance(seeds, list) or not all(isinstance(x, int) for x in seeds):
        raise SweepError(f"{where}: 'seeds' must be a list of integers, got {seeds!r}")
    if not isinstance(spec["sweeps"], dict):
        raise SweepError(f"{spec_path}: '{sweeps_key}' must map names to sweeps")
    cells, final = {}, {}
    for name, sweep in spec["sweeps"].items():
        if isinstance(sweep, dict) and (sweep.get("runs") or not sweep.get("grid")):
            raise SweepError(f"{spec_path}: {sweeps_key}.{name}: with 'tune', a sweep is a 'grid' (the tuning grid), "
                             "not a list of 'runs'")
        runs, _ = _expand(spec, {name: sweep}, seeds, spec_path, sweeps_key, set())
        for run in runs:
            base = run.base
            if base in final and final[base] is not sweep:
                raise SweepError(f"{spec_path}: {sweeps_key}.{name}: base {base} is tuned in two sweeps; "
                                 "tune it in one")
            final[base] = sweep
            cell = {k: run.overrides[k] for k in sweep["grid"] if k != "seed"}
            group = cells.setdefault(base, [])
            if group and group[-1][0] == cell:
                group[-1][1].append(run)
            else:
                group.append((cell, [run]))
    tune = Tune(None, select, cells, final, spec, spec_path, sweeps_key, moved)
    runs = [tune.prepare(r) for group in cells.values() for _, rs in group for r in rs]
    try:
        eval_name = load_eval_recipe(block["evaluation"])["name"]
    except ValueError as err:
        raise SweepError(f"{where}: 'evaluation': {err}") from None
    tune.grid = Grid(runs, Path(spec["results_dir"]) / "tune", block["evaluation"], eval_name, to_cli(late))
    return tune


def tune_and_select(grid: Grid, *, only: str | None = None, jobs: int = 1) -> list[str]:
    """The grid's tuning runs trained and evaluated, then each recipe's cell chosen (:func:`select`); returns what
    failed (a recipe none of whose cells was scored among it)."""
    print(f"[aot-reproduce] tuning: {len(grid.tune.grid.runs)} runs -> {grid.tune.grid.results_dir}, "
          f"chosen by {', '.join(grid.tune.select)}", flush=True)
    failed = run_grid(grid.tune.grid, only=only, jobs=jobs)
    evaluate_sft(grid.tune.grid)
    return failed + [f"tuning of {base}" for base in select(grid)["unscored"]]


def _tuning(grid: Grid) -> dict | None:
    """The grid's ``tuning.json`` (what :func:`select` wrote), None for a grid without ``tune``."""
    path = grid.results_dir / "tuning.json"
    return json.loads(path.read_text()) if grid.tune and path.is_file() else None


def select(grid: Grid) -> dict:
    """Choose each base recipe's cell from the tuning results (``Tune``), set ``grid.runs`` to the chosen cells at
    the grid's seeds, and write the choice and every cell's scores to ``<results_dir>/tuning.json``. A base
    without a scored cell (its tuning runs failed) is left out and named under ``unscored``."""
    tune = grid.tune
    cells, chosen, unscored, runs = [], {}, [], []
    for base, group in tune.cells.items():
        best = None
        for i, (cell, cell_runs) in enumerate(group):
            scores = [_scores(_result_path(tune.grid, r.output_dir)) for r in cell_runs]
            values = None if any(s is None or any(s.get(m) is None for m in tune.select) for s in scores) \
                else [statistics.mean(s[m] for s in scores) for m in tune.select]
            cells.append({"base": base, "cell": cell, "seeds": len(cell_runs),
                          "scores": dict(zip(tune.select, values)) if values else None})
            if values is not None and (best is None or (values, -i) > (best[0], -best[1])):
                best = (values, i, cell)
        if best is None:
            unscored.append(base)
            continue
        chosen[base] = best[2]
        runs += tune.expand(base, best[2])
    grid.runs = runs
    out = {"select": tune.select, "evaluation": tune.grid.evaluation, "chosen": chosen, "unscored": unscored,
           "cells": cells}
    write_json(grid.results_dir / "tuning.json", out)
    return out


def _scores(result: Path) -> dict | None:
    return json.loads(result.read_text())["scores"] if result.is_file() else None


def _expand(spec: dict, sweeps: dict, seeds: list[int], spec_path: str, key: str,
            seen: set) -> tuple[list[SweepRun], set]:
    """The runs of named sweeps, crossed with the seeds; an output folder in two sweeps is an error."""
    runs = []
    for name, sweep in sweeps.items():
        where = f"{spec_path}: {key}.{name}"
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
    return runs, seen


def _load_onpolicy(spec: dict, seeds: list[int], spec_path: str, seen: set, eval_name: str,
                   late: dict) -> OnPolicy:
    """The ``onpolicy`` block. When the data stage writes elsewhere than its recipe's own folder (quick),
    every run's data files are moved there and the run no longer ``requires`` the recipe's own data."""
    block, where = spec["onpolicy"], f"{spec_path}: onpolicy"
    if not isinstance(block, dict) or set(block) - ONPOLICY_KEYS:
        raise SweepError(f"{where}: a mapping with keys {sorted(ONPOLICY_KEYS)}; unknown: "
                         f"{sorted(set(block) - ONPOLICY_KEYS) if isinstance(block, dict) else block!r}")
    for key in ("results_dir", "data", "sweeps"):
        if not block.get(key):
            raise SweepError(f"{where}: key '{key}' is required")
    if Path(block["results_dir"]).resolve() == Path(spec["results_dir"]).resolve():
        raise SweepError(f"{where}: 'results_dir' must differ from the offline grid's ({spec['results_dir']}): "
                         "the offline tables are computed from every result there")
    round_seeds = block.get("round_seeds") or [0]
    if not isinstance(round_seeds, list) or not all(isinstance(x, int) for x in round_seeds):
        raise SweepError(f"{where}: 'round_seeds' must be a list of integers, got {round_seeds!r}")
    args = {}
    for key, recipe in (("data", block["data"]), ("rounds", block.get("rounds"))):
        if recipe is None:
            continue
        overrides = block.get(f"{key}_overrides") or {}
        if not isinstance(overrides, dict):
            raise SweepError(f"{where}: '{key}_overrides' must be a mapping of pairs recipe keys to values")
        args[key] = to_cli(overrides)
        try:
            cfg = parse_pairs_recipe(recipe, args[key])
        except (FileNotFoundError, ValueError) as err:
            raise SweepError(f"{where}: '{key}': {err}") from None
        if key == "rounds" and not cfg.rounds:
            raise SweepError(f"{where}: 'rounds': {recipe} has no 'rounds' (iterations) set")
        if key == "data":
            own, moved = str(parse_pairs_recipe(recipe).output_dir), str(cfg.output_dir)
    if not isinstance(block["sweeps"], dict):
        raise SweepError(f"{where}: 'sweeps' must map names to sweeps")
    if not isinstance(block.get("fixed") or {}, dict):
        raise SweepError(f"{where}: 'fixed' must be a mapping of recipe keys to values")
    spec = {**spec, "fixed": {**(spec.get("fixed") or {}), **(block.get("fixed") or {})}}  # its runs and rounds
    moving = (block["data"], own, moved) if own != moved else None
    tune = None
    if block.get("tune"):  # its sweeps are a tuning grid on its own data; the runs are the chosen cells'
        tune = _load_tune({**spec, "tune": block["tune"], "sweeps": block["sweeps"], "seeds": seeds,
                           "results_dir": block["results_dir"]}, spec_path, late, "onpolicy.sweeps", moving)
        runs = []
        for run in tune.grid.runs:
            if run.output_dir in seen:
                raise SweepError(f"{spec_path}: onpolicy.sweeps: run {run.name} is also in an earlier sweep; "
                                 "remove one")
    else:
        runs, _ = _expand(spec, block["sweeps"], seeds, spec_path, "onpolicy.sweeps", seen)
        runs = [_moved_data(run, *moving) for run in runs] if moving else runs
    grid = Grid(runs, Path(block["results_dir"]), spec["evaluation"], eval_name, to_cli(late), tune=tune)
    return OnPolicy(grid, block["data"], args["data"], block.get("rounds"), round_seeds, args.get("rounds", []),
                    spec["output_root"], to_cli(spec.get("fixed") or {}))


def _moved_data(run: SweepRun, data_recipe: str, own: str, moved: str) -> SweepRun:
    """``run`` reading its data files from ``moved`` instead of ``own`` (the data stage's folder)."""
    raw = read_recipe(run.base, "train")
    mixture = json.loads(json.dumps(run.overrides.get("dataset_mixture", raw.get("dataset_mixture"))))
    for entry in mixture.get("datasets", []):
        files = entry.get("data_files") or {}
        for split, f in files.items():
            if isinstance(f, str) and Path(f).parent == Path(own):
                files[split] = str(Path(moved) / Path(f).name)
    requires = [r for r in raw.get("requires") or [] if Path(r) != Path(data_recipe)]
    if not requires and raw.get("requires"):  # an empty list cannot be passed as an override
        raise SweepError(f"{run.base}: requires only {data_recipe}, so its data cannot be moved to {moved}; "
                         "add the run it starts from to its 'requires'")
    overrides = {**run.overrides, "dataset_mixture": mixture, **({"requires": requires} if requires else {})}
    return SweepRun(run.name, run.base, overrides, run.output_dir)


def _result_path(grid: Grid, run_dir: str) -> Path:
    return grid.results_dir / Path(run_dir).name / f"{grid.eval_name}.json"


def _stamp(grid: Grid, run: SweepRun) -> dict:
    """What a finished run was trained from: a run whose base recipe or arguments changed is retrained."""
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
    stamp = Path(run.output_dir) / "reproduce.json"
    return is_complete(run.output_dir) and stamp.is_file() and json.loads(stamp.read_text()) == _stamp(grid, run)


def _fresh(result: Path, run_dir: str) -> bool:
    done = Path(run_dir) / "run.json"
    return result.is_file() and done.is_file() and result.stat().st_mtime >= done.stat().st_mtime


def run_grid(grid: Grid, *, only: str | None = None, jobs: int = 1) -> list[str]:
    """Train and evaluate every run not done yet, ``jobs`` at a time (:func:`run_cells`); returns the names of the
    runs that failed."""
    return run_cells(grid_cells(grid, only=only), jobs)


def grid_cells(grid: Grid, *, only: str | None = None) -> list[Cell]:
    """The cells of the grid's runs not done yet (trained and evaluated), in grid order."""
    return [Cell(r.name, functools.partial(_train_and_evaluate, grid, r), r.base, _late_wins(r.args, grid.late),
                 Path(r.output_dir) / "train.log")
            for r in grid.runs if (only is None or only in r.name)
            and not (_trained(grid, r) and _fresh(_result_path(grid, r.output_dir), r.output_dir))]


@dataclass
class Cell:
    """One independent piece of a grid: ``work()`` (picklable; returns whether it did anything) builds it, once
    what ``recipe`` with ``args`` requires (e.g. the SFT run) is built (None: nothing); its output goes to ``log``."""

    name: str
    work: functools.partial
    recipe: str | None
    args: list[str]
    log: Path


def run_cells(cells: list[Cell], jobs: int = 1) -> list[str]:
    """Run the cells, the one place that schedules: with ``jobs`` 1 in this process, one after the other (each
    builds what it requires itself, ``aot_handbook.plan``); else what they require is built here first, each
    once, then ``jobs`` child processes (spawned, one thread each for the small models:
    ``training.set_cpu_threads``) run the cells side by side. A failing cell does not stop the others: its
    traceback goes to its log and its name to the returned list (in the cells' order)."""
    failed = set()
    if jobs > 1:
        for cell in (c for c in cells if c.recipe):
            try:
                with _logged(cell.log):
                    make(cell.recipe, cell.args, requires_only=True)
            except Exception:  # the cell's requirement failed: so does the cell (the others go on)
                failed.add(cell.name)
                with open(cell.log, "a") as f:
                    traceback.print_exc(file=f)
                tqdm.write(f"[aot-reproduce] {cell.name} failed (what it requires); see {cell.log}", file=sys.stderr)
    todo = [c for c in cells if c.name not in failed]
    bar = tqdm(total=len(todo), desc="aot-reproduce", unit="run", file=sys.stderr, dynamic_ncols=True)
    for cell, outcome, seconds in _each(todo, jobs):
        bar.update()
        if isinstance(outcome, BaseException):
            failed.add(cell.name)
            cell.log.parent.mkdir(parents=True, exist_ok=True)
            with open(cell.log, "a") as f:  # a child's traceback is in the log already; this is the parent's
                print(f"[aot-reproduce] {cell.name} failed: {outcome!r}", file=f)
            bar.write(f"[aot-reproduce] {cell.name} failed ({seconds:.0f} s); see {cell.log}")
        elif outcome:
            bar.write(f"[aot-reproduce] {cell.name}: {seconds:.0f} s")
    bar.close()
    return [c.name for c in cells if c.name in failed]


def _each(cells: list[Cell], jobs: int):
    """(cell, what its work returned or the exception it raised, seconds) for each cell, as they finish."""
    if jobs <= 1:
        for cell in cells:
            yield (cell, *_timed(cell.work))
        return
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet) as pool:
        futures = {pool.submit(_timed, cell.work): cell for cell in cells}
        for future in as_completed(futures):
            try:
                outcome, seconds = future.result()
            except Exception as err:  # the child itself died (killed, out of memory): BrokenProcessPool
                outcome, seconds = err, 0.0
            yield futures[future], outcome, seconds


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars, once per run; the grid has its own bar


def _timed(work) -> tuple[object, float]:
    started = time.time()
    try:
        return work(), time.time() - started
    except Exception as err:
        return err, time.time() - started


def _train_and_evaluate(grid: Grid, run: SweepRun) -> bool:
    """One run trained (unless it is already, from the same recipe and arguments) and evaluated, its output into
    ``<run>/train.log`` (a failure's traceback too, then raised)."""
    Path(run.output_dir).mkdir(parents=True, exist_ok=True)
    log = Path(run.output_dir) / "train.log"
    started, cpu = time.time(), time.process_time()
    trained = _trained(grid, run)
    try:
        with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            if not trained:
                (Path(run.output_dir) / "run.json").unlink(missing_ok=True)
                write_json(Path(run.output_dir) / "reproduce.json", _stamp(grid, run))
                train(run.base, _late_wins(run.args, grid.late))
            evaluate(run.output_dir, grid.evaluation, results_dir=grid.results_dir)
            print(f"[aot-reproduce] {run.name}: {'evaluated' if trained else 'trained and evaluated'} "
                  f"in {time.time() - started:.0f} s ({time.process_time() - cpu:.0f} s of CPU)")
    except Exception:
        with open(log, "a") as f:
            traceback.print_exc(file=f)
        raise
    return True


@contextlib.contextmanager
def _logged(log: Path):
    """stdout and stderr into ``log`` (appended)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def run_onpolicy(op: OnPolicy, *, only: str | None = None, jobs: int = 1) -> list[str]:
    """The on-policy regime: its data stage (skipped once written), its tuning and choice (with ``tune``), then its
    runs and the rounds of each round seed (every round's policy evaluated like a run), ``jobs`` at a time.
    Returns what failed."""
    data = Path(parse_pairs_recipe(op.data, op.data_args).output_dir)
    if not (data / "provenance.json").is_file():
        started = time.time()
        print(f"[aot-reproduce] on-policy data: {op.data} {' '.join(op.data_args)} -> {data}", flush=True)
        try:
            with _logged(data.parent / f"{data.name}.log"):
                make(op.data, op.data_args)  # its requires (the SFT run) first
        except Exception:
            with open(data.parent / f"{data.name}.log", "a") as f:
                traceback.print_exc(file=f)
            print(f"[aot-reproduce] the on-policy data stage failed; see {data.parent / f'{data.name}.log'}",
                  file=sys.stderr)
            return ["onpolicy-data"]
        print(f"[aot-reproduce] on-policy data: {time.time() - started:.0f} s", flush=True)
    failed = tune_and_select(op.grid, only=only, jobs=jobs) if op.grid.tune else []
    # Each seed's rounds are one cell, listed first: the longest, so it does not finish alone at the end.
    rounds = [Cell(op.rounds_dir(seed).name, functools.partial(_rounds_logged, op, seed), None, [],
                   op.rounds_dir(seed) / "rounds.log")
              for seed in (op.round_seeds if op.rounds else []) if only is None or only in op.rounds_dir(seed).name]
    return failed + run_cells([*rounds, *grid_cells(op.grid, only=only)], jobs)


def _rounds_logged(op: OnPolicy, seed: int) -> bool:
    """:func:`_rounds` with its output (a failure's traceback too, then raised) into ``rounds.log``."""
    log = op.rounds_dir(seed) / "rounds.log"
    try:
        with _logged(log):
            return _rounds(op, seed)
    except Exception:
        with open(log, "a") as f:
            traceback.print_exc(file=f)
        raise


def _round_policies(op: OnPolicy, seed: int) -> list[Path]:
    n = parse_pairs_recipe(op.rounds, op.rounds_args).rounds
    return [op.rounds_dir(seed) / f"round{r}" / "policy" for r in range(1, n + 1)]


def _round_result(op: OnPolicy, seed: int, r: int) -> Path:
    return op.round_results(seed, r) / "policy" / f"{op.grid.eval_name}.json"


def _rounds(op: OnPolicy, seed: int) -> bool:
    """One seed's rounds (``aot_handbook.plan.make`` of the rounds recipe: each piece resumes or is skipped), then
    each round's policy evaluated; False when everything was done already. Round r samples with the rounds
    recipe's seed + 1000 seed + r - 1 and trains with ``seed``; the data is each round's own, so the training
    recipe's own data stage is not required."""
    policies = _round_policies(op, seed)
    if (op.rounds_dir(seed) / "rounds.json").is_file() and all(
            _fresh(_round_result(op, seed, r), str(p)) for r, p in enumerate(policies, 1)):
        return False
    args = [*op.rounds_args, "--output_dir", str(op.rounds_dir(seed))]
    cfg = parse_pairs_recipe(op.rounds, args)
    requires = [r for r in parse_recipe(cfg.train_recipe).recipe.requires or [] if Path(r) != Path(op.data)]
    train_args = _late_wins([*(str(x) for x in cfg.train_overrides or []), *op.fixed, "--seed", str(seed),
                             *(["--requires", *requires] if requires else [])], op.grid.late)
    make(op.rounds, [*args, "--seed", str(cfg.seed + 1000 * seed), "--train_overrides", json.dumps(train_args)])
    # Every round is compared with the rounds' start (a round's own start is a merged model, not a run, and the
    # evaluation would compare the round with itself): the evaluation kind's ``reference`` option.
    evaluation = read_recipe(op.grid.evaluation, "eval")
    evaluation.setdefault(evaluation.get("kind"), {})["reference"] = cfg.model
    eval_file = op.rounds_dir(seed) / "rounds.eval.yaml"
    eval_file.write_text(yaml.safe_dump(evaluation, sort_keys=False))
    for r, policy in enumerate(policies, 1):
        if not _fresh(_round_result(op, seed, r), str(policy)):
            evaluate(str(policy), str(eval_file), results_dir=op.round_results(seed, r))
    return True


def evaluate_sft(grid: Grid) -> None:
    """The SFT row: the model every run started from, evaluated once like the runs."""
    finished = [r for r in grid.runs if Path(r.output_dir, "run.json").is_file()]
    references = {RunInfo.from_path(r.output_dir).reference for r in finished}
    for ref in sorted(r for r in references if r and Path(r, "run.json").is_file()):
        if not _fresh(_result_path(grid, ref), ref):
            evaluate(ref, grid.evaluation, results_dir=grid.results_dir)


def rounds_results(op: OnPolicy) -> list[dict]:
    """Each round policy's result, with the round's data counts (rounds.json) as two more scores."""
    out = []
    for seed in op.round_seeds if op.rounds else []:
        done = op.rounds_dir(seed) / "rounds.json"
        counts = {x["round"]: x["counts"] for x in json.loads(done.read_text())} if done.is_file() else {}
        for r, _ in enumerate(_round_policies(op, seed), 1):
            for res in load_results(op.round_results(seed, r)):
                c = counts.get(r) or {}
                if c.get("samples"):
                    res["scores"].update({"rounds:right": 100.0 * c["positives"] / c["samples"],
                                          "rounds:pairs": c["pairs"]})
                res["run"]["round"], res["run"]["round_seed"] = r, seed
                out.append(res)
    return out


def dry_run(grid: Grid, *, offline: bool = True, onpolicy: bool = True) -> None:
    """List the grid's runs (and rounds) with their state: done, trained (not evaluated), to do."""
    op = grid.onpolicy if onpolicy else None
    tuning = [(grid.tune.grid, r) for r in grid.tune.grid.runs] if offline and grid.tune else []
    listed = [*tuning, *((grid, r) for r in grid.runs)] if offline else []
    listed += [(op.grid.tune.grid, r) for r in op.grid.tune.grid.runs] if op and op.grid.tune else []
    listed += [(op.grid, r) for r in op.grid.runs] if op else []
    for g, run in listed:
        trained = _trained(g, run)
        state = "done" if trained and _fresh(_result_path(g, run.output_dir), run.output_dir) else \
            "trained" if trained else "to do"
        print(f"{state:8s} {run.name}")
    for seed in op.round_seeds if op and op.rounds else []:
        policies = _round_policies(op, seed)
        done = sum(_fresh(_round_result(op, seed, r), str(p)) for r, p in enumerate(policies, 1))
        print(f"{'done' if done == len(policies) else 'to do':8s} {op.rounds_dir(seed).name} "
              f"({len(policies)} rounds, {done} evaluated)")
    for g in [*([grid] if tuning else []), *([op.grid] if op and op.grid.tune else [])]:
        print(f"then the chosen cell of each of {len(g.tune.cells)} recipe(s) (by {', '.join(g.tune.select)} "
              f"on {g.tune.grid.evaluation}) at seeds {g.tune.spec.get('seeds')}, evaluated with "
              f"{g.evaluation}")
    print(f"{len(listed)} run(s)" + (f" + rounds of {len(op.round_seeds)} seed(s)" if op and op.rounds else ""))


def reproduce(grid: Grid, *, offline: bool = True, onpolicy: bool = True, only: str | None = None,
              jobs: int = 1) -> list[str]:
    """Train and evaluate the grid (the offline runs, the on-policy regime, or both), ``jobs`` runs at a time
    (:func:`run_cells`; the stages in order: the tuning, its choice, the chosen cells; the on-policy data, its runs
    and rounds), then the task's report of each; returns the names of what failed."""
    _quiet()
    task = task_for_kind(load_eval_recipe(grid.evaluation)["kind"])
    if task is None:
        raise UserError(f"{grid.evaluation}: a reproduction grid's evaluation must be a registered task's own "
                        "(its kind: a task's eval_kind), whose report the grid writes")
    op = grid.onpolicy if onpolicy else None
    started = time.time()
    failed, outputs = [], {}
    if offline and grid.tune:
        failed += tune_and_select(grid, only=only, jobs=jobs)
    if offline:
        print(f"[aot-reproduce] {len(grid.runs)} runs -> {grid.results_dir} (finished cells are skipped)",
              flush=True)
        failed += run_grid(grid, only=only, jobs=jobs)
        evaluate_sft(grid)
        outputs.update(task.report("offline", load_results(grid.results_dir), grid.results_dir))
    if op:
        print("[aot-reproduce] on-policy regime: "
              + (f"{len(op.grid.tune.grid.runs)} tuning runs, then the chosen cells" if op.grid.tune else
                 f"{len(op.grid.runs)} runs")
              + (f" + {op.rounds} for seeds {op.round_seeds}" if op.rounds else "")
              + f" -> {op.grid.results_dir}", flush=True)
        failed += run_onpolicy(op, only=only, jobs=jobs)
        evaluate_sft(op.grid)
        rounds = {"rounds": rounds_results(op), "rounds_recipe": op.rounds,
                  "round_seeds": op.round_seeds if op.rounds else [],
                  "n_rounds": parse_pairs_recipe(op.rounds, op.rounds_args).rounds if op.rounds else 0,
                  "tuning": _tuning(op.grid)}
        outputs.update(task.report("onpolicy", load_results(op.grid.results_dir), grid.results_dir, **rounds))
    print(f"[aot-reproduce] done in {(time.time() - started) / 60:.1f} min")
    for name, path in outputs.items():
        print(f"  {name}: {path}")
    if failed:
        print(f"[aot-reproduce] {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return failed
