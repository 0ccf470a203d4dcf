"""``make reproduce-tiny``: the paper's claims on the tiny task, one command, resumable.

The grid is a spec file (``recipes/tiny/reproduce.yaml``): named sweeps (the format of
:mod:`aot_handbook.sweep`) crossed with the seeds, plus ``fixed`` overrides. Each run trains in
this process (the imports and the tiny assets are paid once), its log going to
``<run>/train.log``; then it is evaluated with the spec's evaluation recipe into ``results_dir``.
A run with ``run.json``, trained from the same base recipe file and arguments (``reproduce.json``),
is not retrained, and a result newer than its run is not recomputed, so an interrupted grid
resumes where it stopped and an edited grid reruns only what the edit changed. At the end: the
tables (``tiny.REPRODUCE_TABLES``) and the figures (Fig. 1a/1b per NLL variant, Fig. 2) under
``results_dir``.

The spec's ``onpolicy`` block is a second regime (issue 18): LoRA runs on answers the SFT model sampled
itself (``make pairs``, built first), and iterative rounds (``pairs.run_rounds``), each round's policy
evaluated like a run. Its results live in their own folder, so the offline tables and claims are computed
from the offline runs alone; its tables (``ONPOLICY_TABLES``) and claims (``claims-onpolicy.md``) are
new files beside them.
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
from typing import TYPE_CHECKING

import yaml

from .sweep import SweepError, SweepRun, expand_mapping, to_cli

if TYPE_CHECKING:
    from .tables import Table

SPEC = "recipes/tiny/reproduce.yaml"
SPEC_KEYS = {"output_root", "results_dir", "evaluation", "fixed", "seeds", "quick", "sweeps", "onpolicy"}
ONPOLICY_KEYS = {"results_dir", "data", "data_overrides", "sweeps", "fixed", "rounds", "round_seeds",
                 "rounds_overrides"}


@dataclass
class Grid:
    runs: list[SweepRun]
    results_dir: Path
    evaluation: str
    eval_name: str  # the evaluation recipe's name: results_dir/<run>/<eval_name>.json
    late: list[str]  # overrides applied after every run's own (quick mode)
    onpolicy: OnPolicy | None = None  # the spec's on-policy regime (its own results_dir)


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
        if set(q) - {"seeds", "fixed", "output_root", "results_dir", "onpolicy"}:
            raise SweepError(f"{spec_path}: 'quick' takes seeds, fixed, output_root, results_dir, onpolicy")
        spec = {**spec, **{k: v for k, v in q.items() if k not in ("fixed", "onpolicy")}}
        if spec.get("onpolicy") and q.get("onpolicy"):
            spec["onpolicy"] = {**spec["onpolicy"], **q["onpolicy"]}
        late = q.get("fixed") or {}
    if not Path(spec["evaluation"]).is_file():
        raise SweepError(f"{spec_path}: 'evaluation' file not found: {spec['evaluation']}")
    seeds = spec.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise SweepError(f"{spec_path}: 'seeds' must be a list of integers, got {seeds!r}")
    if not isinstance(spec["sweeps"], dict):
        raise SweepError(f"{spec_path}: 'sweeps' must map names to sweeps")
    runs, seen = _expand(spec, spec["sweeps"], seeds, spec_path, "sweeps", set())
    from .evaluation.common import load_eval_recipe

    try:
        eval_name = load_eval_recipe(spec["evaluation"])["name"]
    except ValueError as err:
        raise SweepError(f"{spec_path}: 'evaluation': {err}") from None
    grid = Grid(runs, Path(spec["results_dir"]), spec["evaluation"], eval_name, to_cli(late))
    if spec.get("onpolicy"):
        grid.onpolicy = _load_onpolicy(spec, seeds, spec_path, seen, eval_name, late)
    if check:
        from .sweep import _check_run

        for run in [*runs, *(grid.onpolicy.grid.runs if grid.onpolicy else [])]:
            _check_run(SweepRun(run.name, run.base, {**run.overrides, **late}, run.output_dir), spec_path)
    return grid


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
    from .pairs import parse_pairs_recipe

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
    runs, _ = _expand(spec, block["sweeps"], seeds, spec_path, "onpolicy.sweeps", seen)
    if own != moved:
        runs = [_moved_data(run, block["data"], own, moved) for run in runs]
    grid = Grid(runs, Path(block["results_dir"]), spec["evaluation"], eval_name, to_cli(late))
    return OnPolicy(grid, block["data"], args["data"], block.get("rounds"), round_seeds, args.get("rounds", []),
                    spec["output_root"], to_cli(spec.get("fixed") or {}))


def _moved_data(run: SweepRun, data_recipe: str, own: str, moved: str) -> SweepRun:
    """``run`` reading its data files from ``moved`` instead of ``own`` (the data stage's folder)."""
    raw = yaml.safe_load(Path(run.base).read_text()) or {}
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
                print(f"[reproduce-tiny] {run.name}: {'evaluated' if trained else 'trained and evaluated'} "
                      f"in {time.time() - started:.0f} s")
            bar.write(f"[reproduce-tiny] {run.name}: {time.time() - started:.0f} s")
        except Exception:  # one bad cell must not lose the others; the log says why
            failed.append(run.name)
            with open(log, "a") as f:
                traceback.print_exc(file=f)
            bar.write(f"[reproduce-tiny] {run.name} failed ({time.time() - started:.0f} s); see {log}")
    return failed


@contextlib.contextmanager
def _logged(log: Path):
    """stdout and stderr into ``log`` (appended)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def run_onpolicy(op: OnPolicy, *, only: str | None = None) -> list[str]:
    """The on-policy regime: its data stage (skipped once written), its runs, then the rounds of each
    round seed, every round's policy evaluated like a run. Returns what failed."""
    from .pairs import main as build_data
    from .pairs import parse_pairs_recipe

    data = Path(parse_pairs_recipe(op.data, op.data_args).output_dir)
    if not (data / "provenance.json").is_file():
        started = time.time()
        print(f"[reproduce-tiny] on-policy data: {op.data} {' '.join(op.data_args)} -> {data}", flush=True)
        try:
            with _logged(data.parent / f"{data.name}.log"):
                build_data(op.data, op.data_args)
        except Exception:
            with open(data.parent / f"{data.name}.log", "a") as f:
                traceback.print_exc(file=f)
            print(f"[reproduce-tiny] the on-policy data stage failed; see {data.parent / f'{data.name}.log'}",
                  file=sys.stderr)
            return ["onpolicy-data"]
        print(f"[reproduce-tiny] on-policy data: {time.time() - started:.0f} s", flush=True)
    failed = run_grid(op.grid, only=only)
    for seed in op.round_seeds if op.rounds else []:
        name = op.rounds_dir(seed).name
        if only is not None and only not in name:
            continue
        started = time.time()
        try:
            with _logged(op.rounds_dir(seed) / "rounds.log"):
                ran = _rounds(op, seed)
        except Exception:
            failed.append(name)
            with open(op.rounds_dir(seed) / "rounds.log", "a") as f:
                traceback.print_exc(file=f)
            print(f"[reproduce-tiny] {name} failed ({time.time() - started:.0f} s); see "
                  f"{op.rounds_dir(seed) / 'rounds.log'}", file=sys.stderr)
            continue
        if ran:
            print(f"[reproduce-tiny] {name}: {time.time() - started:.0f} s", flush=True)
    return failed


def _round_policies(op: OnPolicy, seed: int) -> list[Path]:
    from .pairs import parse_pairs_recipe

    n = parse_pairs_recipe(op.rounds, op.rounds_args).rounds
    return [op.rounds_dir(seed) / f"round{r}" / "policy" for r in range(1, n + 1)]


def _round_result(op: OnPolicy, seed: int, r: int) -> Path:
    return op.round_results(seed, r) / "policy" / f"{op.grid.eval_name}.json"


def _rounds(op: OnPolicy, seed: int) -> bool:
    """One seed's rounds (``pairs.run_rounds``: each piece resumes or is skipped), then each round's policy
    evaluated; False when everything was done already. Round r samples with the rounds recipe's seed
    + 1000 seed + r - 1 and trains with ``seed``; the data is each round's own, so the training recipe's
    own data stage is not required."""
    import dataclasses

    from .evaluation.pipeline import evaluate
    from .pairs import parse_pairs_recipe, run_rounds
    from .recipe import parse_recipe

    policies = _round_policies(op, seed)
    if (op.rounds_dir(seed) / "rounds.json").is_file() and all(
            _fresh(_round_result(op, seed, r), str(p)) for r, p in enumerate(policies, 1)):
        return False
    args = [*op.rounds_args, "--output_dir", str(op.rounds_dir(seed))]
    cfg = parse_pairs_recipe(op.rounds, args)
    requires = [r for r in parse_recipe(cfg.train_recipe).recipe.requires or [] if Path(r) != Path(op.data)]
    train_args = _late_wins([*(str(x) for x in cfg.train_overrides or []), *op.fixed, "--seed", str(seed),
                             *(["--requires", *requires] if requires else [])], op.grid.late)
    cfg = dataclasses.replace(cfg, seed=cfg.seed + 1000 * seed, train_overrides=train_args)
    run_rounds(cfg, recipe_path=op.rounds, overrides=args)
    # Every round is compared with the rounds' start (a round's own start is a merged model, not a run, and the
    # evaluation would compare the round with itself).
    evaluation = yaml.safe_load(Path(op.grid.evaluation).read_text())
    evaluation.setdefault("tiny_task", {})["reference"] = cfg.model
    eval_file = op.rounds_dir(seed) / "evaluation.yaml"
    eval_file.write_text(yaml.safe_dump(evaluation, sort_keys=False))
    for r, policy in enumerate(policies, 1):
        if not _fresh(_round_result(op, seed, r), str(policy)):
            evaluate(str(policy), str(eval_file), results_dir=op.round_results(seed, r))
    return True


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
            lines += _judged(nll, scores, pairs, kind, alpha=alpha, seed=seed)
    return write_text(out, "\n".join(lines) + "\n")


def _judged(label: str, scores: dict[str, dict[str, float]], pairs, kind: str, *, alpha: float,
            seed: int) -> list[str]:
    """The lines of one block of a claims report: the relative test over the prompts every row answered,
    then each pair's verdict ("beats": held / reversed / not significant; "par": no difference or not)."""
    from .dominance import relative_test

    common = sorted(set.intersection(*(set(v) for v in scores.values())))
    try:
        n_boot = max(1000, math.ceil(len(scores) * (len(scores) - 1) / alpha))
        res = relative_test({k: [v[i] for i in common] for k, v in scores.items()}, alpha=alpha,
                            paired=True, seed=seed, n_boot=n_boot)
    except ValueError as exc:
        return [f"- {label}: not tested ({exc})", ""]
    lines = [f"- {label} (n = {len(common)} prompts; ranking {' > '.join(res.ranking)}):"]
    for a, b in pairs:
        i, j = res.names.index(a), res.names.index(b)
        p = res.p_value[i, j]
        if kind == "par":
            verdict = "held (no significant difference)" if not (res.beats(a, b) or res.beats(b, a)) \
                else f"did not hold ({a if res.beats(a, b) else b} is better)"
        else:
            verdict = "held" if res.beats(a, b) else "reversed" if res.beats(b, a) else "not significant"
        lines.append(f"  - {a} vs {b}: {verdict} (eps {res.eps[i]:.3f} vs {res.eps[j]:.3f}, p = {p:.3g})")
    return [*lines, ""]


# ---- the on-policy regime's tables and claims (new files: the offline ones above are left as they are) ----
ONPOLICY_TABLES = ("tiny-onpolicy", "tiny-rounds")
# (label, method, recipe file stem): every method of recipes/tiny/onpolicy/, none with an NLL term but the control
ONPOLICY_METHODS = (("AOT paired", "aot_paired", "aot_paired"), ("AOT unpaired", "aot_unpaired", "aot_unpaired"),
                    ("DPO", "dpo", "dpo"), ("IPO", "ipo", "ipo"), ("KTO", "kto", "kto"),
                    ("NLL control", "sft", "nll_control"))
SFT_WHERE = {"method": "sft", "recipe_name": "sft"}
ROUND_COLUMNS = (("Sampled answers right", "rounds:right"), ("Pairs", "rounds:pairs", {"digits": 0}))


def _seeds(results: list[dict]) -> str:
    return ", ".join(str(x) for x in sorted({r["run"]["seed"] for r in results if r["run"].get("seed") is not None}))


def onpolicy_table(results: list[dict]) -> Table:
    """tabletiny-onpolicy: every on-policy method from the same SFT model, mean ± std over seeds, each seed's
    accuracy, the 95% interval over prompts, and the Fig. 1 statistics on held-out pairs."""
    from .tables import Row, Table
    from .tiny import ACC, FIG1, WIN

    runs = [r for r in results if r["run"].get("recipe_name") != "sft"]
    rows = [Row((label, "NLL only" if stem == "nll_control" else "no NLL"), {"method": m, "recipe_name": stem})
            for label, m, stem in ONPOLICY_METHODS] + [Row(("SFT (start)", "-"), SFT_WHERE)]
    seeds = sorted({r["run"]["seed"] for r in runs if r["run"].get("seed") is not None})
    per_seed = [(f"Acc. seed {x}", ACC[1], {"where": {"seed": x}, "std": False}) for x in seeds]
    caption = ("Tiny task, on-policy regime (recipes/tiny/onpolicy/: LoRA from the SFT model, no NLL term but the "
               "control's, trained on answers the SFT model sampled itself, judged by program): mean ± std over "
               f"seeds {_seeds(runs) or '-'} (n runs), [95% interval over prompts]; Fig. 1 statistics on held-out "
               "pairs")
    return Table("tiny-onpolicy", caption, ("Method", "NLL"),
                 [WIN, ACC, ("Carry", "tiny:carry"), ("No carry", "tiny:no_carry"), *per_seed, *FIG1], rows, std=True)


def rounds_results(op: OnPolicy) -> list[dict]:
    """Each round policy's result, with the round's data counts (rounds.json) as two more scores."""
    from .evaluation.common import load_results

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


def rounds_table(op: OnPolicy, results: list[dict]) -> Table:
    """tabletiny-rounds: per round seed, the SFT start then each round's policy (sampled from the one before)."""
    from .tables import Row, Table
    from .tiny import ACC, WIN

    rows = []
    for seed in op.round_seeds if op.rounds else []:
        rows.append(Row(("0 (SFT)", str(seed)), SFT_WHERE))
        rows += [Row((str(r), str(seed)), {"round": r, "round_seed": seed})
                 for r, _ in enumerate(_round_policies(op, seed), 1)]
    caption = (f"Tiny task, iterative on-policy rounds ({op.rounds}): round r samples answers from round r-1's "
               "policy (round 1 from the SFT model), judges them by program and trains AOT paired (LoRA, no NLL) "
               "from that policy on its best-vs-worst pairs; one run per round and seed, [95% interval over "
               "prompts]. Win rate against the SFT model; the last two columns describe the round's data")
    return Table("tiny-rounds", caption, ("Round", "Seed"),
                 [("Accuracy", ACC[1]), ("Carry", "tiny:carry"), ("No carry", "tiny:no_carry"), WIN,
                  *ROUND_COLUMNS], rows)


def _write_table(table, results: list[dict], out_dir: Path) -> Path:
    from .io import write_text
    from .tables import build, current_results, to_csv, to_latex, to_markdown

    grid = build(table, current_results(results)[0])
    for ext, text in (("csv", to_csv(grid)), ("tex", to_latex(table, grid))):
        write_text(out_dir / f"table{table.number}.{ext}", text)
    return write_text(out_dir / f"table{table.number}.md", to_markdown(table, grid))


def onpolicy_report(op: OnPolicy, tables_dir: Path) -> dict[str, Path]:
    """The on-policy tables (beside the offline ones, under new names) and ``claims-onpolicy.md``."""
    from .evaluation.common import load_results

    results = load_results(op.grid.results_dir)
    rounds = rounds_results(op)
    sft = [r for r in results if r["run"].get("method") == "sft" and r["run"].get("recipe_name") == "sft"]
    out = {"table tiny-onpolicy": _write_table(onpolicy_table(results), results, tables_dir)}
    if op.rounds:
        out["table tiny-rounds"] = _write_table(rounds_table(op, [*sft, *rounds]), [*sft, *rounds], tables_dir)
    out["claims on-policy"] = onpolicy_claims(results, rounds, tables_dir.parent / "claims-onpolicy.md")
    return out


def onpolicy_claims(results: list[dict], rounds: list[dict], out: Path, *, alpha: float = 0.05,
                    seed: int = 0) -> Path:
    """``claims-onpolicy.md``: the must-show (each method's accuracy against its SFT start, mean over seeds,
    and the relative test of it against SFT), claim 2 of claims.md in this regime, every method against the
    NLL-only control, and the rounds, each judged by the relative dominance test as in claims.md."""
    import statistics

    from .io import write_text
    from .tables import Row, cell_values

    acc, win = "tiny:accuracy", "tiny:win_rate_vs_sft"
    sft_row = Row(("SFT",), SFT_WHERE)
    rows = {label: Row((label,), {"method": m, "recipe_name": stem}) for label, m, stem in ONPOLICY_METHODS}
    sft_acc = cell_values(results, sft_row, acc)
    lines = ["# The paper's claims in the on-policy regime, judged by the relative dominance test", "",
             ("Regime: recipes/tiny/onpolicy/ (LoRA from the SFT model, trained on answers it sampled itself, "
              f"judged by program); seeds {_seeds([r for r in results if r['run'].get('recipe_name') != 'sft'])}. "
              "Per prompt: a score averaged over seeds; first-order relative test "
              "(aot_handbook.dominance.relative_test), paired over prompts, Holm over the pairs of each block, "
              f"alpha = {alpha}. '>' significantly better, '~' no significant difference; p is the corrected "
              "p-value."), "",
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
    parser.add_argument("--regime", choices=("all", "offline", "onpolicy"), default="all",
                        help="the offline grid, the on-policy regime (data stage, runs, rounds), or both")
    args = parser.parse_args(argv)
    try:
        grid = load(args.spec, quick=args.quick)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    offline = args.regime in ("all", "offline")
    op = grid.onpolicy if args.regime in ("all", "onpolicy") else None
    if args.dry_run:
        listed = [(grid, r) for r in grid.runs] if offline else []
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
        print(f"{len(listed)} run(s)" + (f" + rounds of {len(op.round_seeds)} seed(s)" if op and op.rounds else ""))
        return 0
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars, once per run; the grid has its own bar
    started = time.time()
    failed, outputs = [], {}
    if offline:
        print(f"[reproduce-tiny] {len(grid.runs)} runs -> {grid.results_dir} (finished cells are skipped)",
              flush=True)
        failed += run_grid(grid, only=args.only)
        evaluate_sft(grid)
        outputs.update(report(grid))
    if op:
        print(f"[reproduce-tiny] on-policy regime: {len(op.grid.runs)} runs"
              + (f" + {op.rounds} for seeds {op.round_seeds}" if op.rounds else "")
              + f" -> {op.grid.results_dir}", flush=True)
        failed += run_onpolicy(op, only=args.only)
        evaluate_sft(op.grid)
        outputs.update(onpolicy_report(op, grid.results_dir / "tables"))
    print(f"[reproduce-tiny] done in {(time.time() - started) / 60:.1f} min")
    for name, path in outputs.items():
        print(f"  {name}: {path}")
    if failed:
        print(f"[reproduce-tiny] {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
