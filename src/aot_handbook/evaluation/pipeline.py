"""``make eval RUN=... EVAL=...``: one run x one evaluation recipe -> ``results/<run>/<eval>.json``.

Kinds of evaluation recipe (``recipes/eval/*.eval.yaml``; the ``kind`` key):
- ``alpaca_eval``: generate on the AlpacaEval instructions, judge with alpaca_eval
  (GPT-4 or an OpenAI-compatible endpoint), win rate + LC win rate;
- ``lm_eval``: lm-eval tasks zero-shot (the paper's six benchmarks, the hub's small benchmark subsets,
  local tasks, a registered task's own lm-eval tasks);
- a registered task's ``eval_kind`` (:mod:`aot_handbook.tasks`): that task's own evaluation
  (:meth:`Task.evaluate`), e.g. program-judged accuracy and win rate against the run it started from.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from ..errors import UserError, user_errors
from ..io import write_json
from ..model_utils import check_model_path, weight_files
from ..provenance import sha256
from ..recipe import read_recipe
from ..run_folder import RunInfo
from ..runlock import describe_holder, is_locked, main_process_lock
from ..tasks import task_for_kind
from ..tasks import tasks as registered_tasks
from .results import RESULTS_DIR, read_result_file, result_path, save_result


def load_eval_recipe(path: str | Path) -> dict:
    """An evaluation recipe (``recipes/eval/<name>.eval.yaml``): ``name`` (default: the file name less
    ``.eval.yaml``), ``kind`` and the kind's blocks; ``_path`` and ``_sha256`` added for provenance."""
    path = Path(path)
    recipe = read_recipe(path, "eval")
    recipe.setdefault("name", path.name.split(".")[0])
    kinds = ("alpaca_eval", "lm_eval", *(t.eval_kind for t in registered_tasks()))
    if recipe.get("kind") not in kinds:
        raise UserError(f"{path}: key 'kind' must be one of {kinds}, got {recipe.get('kind')!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(recipe["name"])):
        raise UserError(f"{path}: key 'name' must be a file-name-safe string, got {recipe['name']!r}")
    recipe["_path"] = str(path)
    recipe["_sha256"] = sha256(path)
    return recipe


def check_run_path(run_path: str) -> None:
    """RUN is a run folder, a model folder, or a hub id; anything else is an error naming it, before any
    file is written (a missing folder would otherwise be tried as a hub id)."""
    if not (Path(run_path) / "recipe.json").is_file():
        check_model_path(run_path, "RUN")


def evaluate(run_path: str, eval_recipe: str, *, results_dir: str | Path = RESULTS_DIR,
             work_dir: str | Path | None = None, allow_incomplete: bool = False) -> Path:
    """Evaluate one run (a run folder, or a base model: folder or hub id) with one evaluation recipe; write and
    print its result. The recipe and the run are checked first (``UserError``), before anything is generated."""
    with user_errors():
        recipe = load_eval_recipe(eval_recipe)
        check_run_path(run_path)
        run = RunInfo.from_path(run_path)
    if not run.complete and not allow_incomplete:
        raise UserError(f"{run_path}: no run.json, the run is not complete "
                        "(pass --allow-incomplete to evaluate anyway)")
    if not run.complete:
        _check_weights_are_this_runs(run)
    if recipe["kind"] == "lm_eval":  # task, metric and filter names, before any model loads (as aot-validate does)
        from .harness import check_lm_eval_recipe

        check_lm_eval_recipe(recipe["_path"], recipe)
    if recipe["kind"] not in ("alpaca_eval", "lm_eval"):  # a task's scores compare the run with its reference
        with user_errors():
            run.check_reference()
    _check_result_is_ours(result_path(run, recipe["name"], results_dir), run)
    holder = is_locked(run.path) if Path(run.path).is_dir() else None
    if holder is not None:
        raise UserError(f"{run_path} is being written by {describe_holder(holder)}: evaluate it once that is done")
    # One process writes a run's results at a time (a second evaluation of the same run stops at once, naming it).
    with main_process_lock(Path(results_dir) / run.name, "evaluation"):
        work = Path(work_dir) if work_dir else Path(results_dir) / run.name / f"{recipe['name']}.work"
        _reset_if_stale(work, run, recipe)
        kind = recipe["kind"]
        if kind == "alpaca_eval":
            scores, details, judge = _alpaca_eval(run, recipe, work)
        elif kind == "lm_eval":
            scores, details, judge = _lm_eval(run, recipe, work)
        else:
            scores, details, judge = task_for_kind(kind).evaluate(run, recipe, work)
        path = save_result(run, recipe, scores, details, judge=judge, results_dir=results_dir)
    print_result(run, recipe, scores, details, path)
    return path


def _check_weights_are_this_runs(run: RunInfo) -> None:
    """An incomplete run folder (--allow-incomplete) is evaluated only if its weights were written by the
    configuration its fingerprint.json names: training writes fingerprint.json first and the weights after, so
    weights older than it were left by an earlier run whose overwrite was interrupted (issue 30: they were
    evaluated under the new fingerprint)."""
    folder = Path(run.adapter or run.path)
    stamp = Path(run.path) / "fingerprint.json"
    weights = weight_files(folder)
    if stamp.is_file() and weights and max(w.stat().st_mtime_ns for w in weights) < stamp.stat().st_mtime_ns:
        raise UserError(f"{run.path}: its weights are older than its fingerprint.json: an earlier run's weights, "
                        "left by an overwrite that was interrupted before it saved; train it again")


def _check_result_is_ours(path: Path, run: RunInfo) -> None:
    """results/<run name>/<eval>.json is keyed by the run folder's name: a UserError naming both when it holds the
    result of another run folder of the same name that is still there (issue 30: evaluating a second run of one
    folder name replaced the first one's result). The same run evaluated again (retrained, say) replaces its own."""
    if not path.is_file():
        return
    other = (read_result_file(path).get("run") or {}).get("path")
    if other and Path(other).exists() and Path(other).resolve() != Path(run.path).resolve():
        raise UserError(f"{path} holds the result of another run, {other}, also named {run.name!r} (this is "
                        f"{run.path}): evaluate {run.path} with --results-dir <another folder>, or move that result "
                        "away first")


def _reset_if_stale(work: Path, run: RunInfo, recipe: dict) -> None:
    """Generations are resumed from ``work``, but only for the same trained run and generation settings."""
    run_json = Path(run.path) / "run.json"
    stamp = {"run": run.path, "recipe_json_sha256": run.recipe_sha256, "fingerprint": run.fingerprint,
             "run_json_sha256": sha256(run_json) if run_json.is_file() else None,
             "generation": recipe.get("generation"),
             **{t.eval_kind: recipe.get(t.eval_kind) for t in registered_tasks()}}  # each task's settings
    stamp_file = work / "stamp.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) != json.loads(json.dumps(stamp)):
        print(f"[aot-handbook] {work}: the run or the generation settings changed; starting over")
        shutil.rmtree(work)
    write_json(stamp_file, stamp)


def _generation_kwargs(recipe: dict) -> dict:
    g = dict(recipe.get("generation") or {})
    g.setdefault("instructions", "tatsu-lab/alpaca_eval")
    known = {"instructions", "limit", "max_new_tokens", "batch_size", "do_sample", "temperature", "top_p", "backend",
             "dtype"}
    unknown = set(g) - known
    if unknown:
        raise ValueError(f"{recipe['_path']}: unknown key(s) in 'generation': {sorted(unknown)} "
                         f"(known: {sorted(known)})")
    return g


def _alpaca_eval(run: RunInfo, recipe: dict, work: Path):
    from ..generation import generate_outputs
    from .alpaca import annotate, resolve_reference

    judge = dict(recipe.get("judge") or {})
    label = judge.get("label", "gpt4")
    outputs = generate_outputs(run.model, work / "model_outputs.json", adapter=run.adapter, generator=run.name,
                               chat_template=run.chat_template, **_generation_kwargs(recipe))
    reference = resolve_reference(judge.get("reference_outputs"))
    metrics = annotate(outputs, reference, judge, work / "alpaca_eval", name=run.name)
    scores = {f"alpaca_eval:{label}:win_rate": metrics["win_rate"],
              f"alpaca_eval:{label}:lc_win_rate": metrics["lc_win_rate"]}
    metrics["samples"] = alpaca_samples(metrics["annotations"], f"alpaca_eval:{label}:win_rate")
    metrics["model_outputs"] = str(outputs)
    metrics["reference_outputs"] = reference
    return scores, metrics, metrics["judge"]


def alpaca_samples(annotations: str | Path, column: str) -> list[dict]:
    """Per instruction: the judge's preference as a win (100), draw (50) or loss (0) of the model
    (``output_2``) over the reference (alpaca_eval's encoding: 1 reference, 2 model, 1.5 or 0
    draw, fractions for log-prob judges; the mean is alpaca_eval's win rate), and both lengths."""
    rows = []
    for a in json.loads(Path(annotations).read_text()):
        p = a.get("preference")
        win = None if p is None or math.isnan(float(p)) else 50.0 if p == 0 else 100.0 * (float(p) - 1.0)
        rows.append({"id": a["instruction"], column: win, "length": len(str(a.get("output_2", ""))),
                     "reference_length": len(str(a.get("output_1", "")))})
    return rows


def _lm_eval(run: RunInfo, recipe: dict, work: Path):
    from .harness import OPEN_LLM_COLUMNS, column_tasks, run_lm_eval

    cfg = dict(recipe.get("lm_eval") or {})
    include = cfg.pop("include_path", None)
    for task in registered_tasks():  # a task's own lm-eval tasks (local data), when the recipe asks for them
        include = task.lm_eval_include(cfg, work) or include
    columns = cfg.pop("columns", None) or OPEN_LLM_COLUMNS
    tasks = cfg.pop("tasks", None) or column_tasks(columns)
    scores, details = run_lm_eval(run.model, run.adapter, tasks=tasks, columns=columns, include_path=include, **cfg)
    return scores, details, None


def print_result(run: RunInfo, recipe: dict, scores: dict, details: dict, path: Path) -> None:
    lines = ["", "=" * 72, f"Evaluation {recipe['name']} of {run.path} ({run.method})"]
    for k, v in scores.items():
        lines.append(f"  {k:40s} {'-' if v is None else f'{v:.2f}'}")
    if details.get("lc_win_rate_error"):
        lines.append(f"  LC win rate: null -- {details['lc_win_rate_error'][:160]}")
    if "wins" in details:
        lines.append(f"  vs {details['reference']}: {details['wins']} wins, {details['ties']} ties, "
                     f"{details['losses']} losses (n={details['n']}, program judge)")
    lines += [f"  result: {path}", "=" * 72]
    print("\n".join(lines))
