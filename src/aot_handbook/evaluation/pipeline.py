"""``make eval RUN=... EVAL=...``: one run x one evaluation recipe -> ``results/<run>/<eval>.json``.

Kinds of evaluation recipe (``recipes/eval/*.yaml``):
- ``alpaca_eval``: generate on the AlpacaEval instructions, judge with alpaca_eval
  (GPT-4 or an OpenAI-compatible endpoint), win rate + LC win rate;
- ``lm_eval``: lm-eval tasks zero-shot (the paper's six benchmarks, tinyBenchmarks, local tasks);
- ``tiny_task``: the tiny default: greedy accuracy on the arithmetic task judged by program, and
  the win rate against the SFT model the run started from, judged by program per prompt
  (aligned right and SFT wrong = win, both equal = tie (0.5), else loss).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from .common import RESULTS_DIR, RunInfo, load_eval_recipe, save_result, sha256, write_json


def check_run_path(run_path: str) -> None:
    """RUN is a run folder, a model folder, or a hub id; anything else is an error naming it, before any
    file is written (a missing folder would otherwise be tried as a hub id)."""
    from ..model_utils import check_model_path

    if not (Path(run_path) / "recipe.json").is_file():
        check_model_path(run_path, "RUN")


def evaluate(run_path: str, eval_recipe: str, *, results_dir: str | Path = RESULTS_DIR,
             work_dir: str | Path | None = None, allow_incomplete: bool = False) -> Path:
    recipe = load_eval_recipe(eval_recipe)
    check_run_path(run_path)
    run = RunInfo.from_path(run_path)
    if not run.complete and not allow_incomplete:
        raise RuntimeError(f"{run_path}: no run.json, the run is not complete "
                           "(pass --allow-incomplete to evaluate anyway)")
    work = Path(work_dir) if work_dir else Path(results_dir) / run.name / f"{recipe['name']}.work"
    _reset_if_stale(work, run, recipe)
    kind = recipe["kind"]
    if kind == "alpaca_eval":
        scores, details, judge = _alpaca_eval(run, recipe, work)
    elif kind == "lm_eval":
        scores, details, judge = _lm_eval(run, recipe, work)
    else:
        scores, details, judge = _tiny_task(run, recipe, work)
    path = save_result(run, recipe, scores, details, judge=judge, results_dir=results_dir)
    print_result(run, recipe, scores, details, path)
    return path


def _reset_if_stale(work: Path, run: RunInfo, recipe: dict) -> None:
    """Generations are resumed from ``work``, but only for the same trained run and generation settings."""
    run_json = Path(run.path) / "run.json"
    stamp = {"run": run.path, "recipe_json_sha256": run.recipe_sha256, "fingerprint": run.fingerprint,
             "run_json_sha256": sha256(run_json) if run_json.is_file() else None,
             "generation": recipe.get("generation"), "tiny_task": recipe.get("tiny_task")}
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
    from .alpaca import annotate, resolve_reference
    from .generation import generate_outputs

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
    from .harness import OPEN_LLM_COLUMNS, column_tasks, run_lm_eval, write_tiny_tasks

    cfg = dict(recipe.get("lm_eval") or {})
    include = cfg.pop("include_path", None)
    if cfg.pop("tiny_tasks", False):  # write the tiny arithmetic tasks (local data) and include them
        from ..tiny import ensure_tiny_assets, read_jsonl

        rows = read_jsonl(ensure_tiny_assets(cfg.pop("tiny_assets", ".cache/tiny"))["eval_prompts"])
        include = str(write_tiny_tasks(work / "tasks", rows[: cfg.pop("tiny_rows", len(rows))]))
    columns = cfg.pop("columns", None) or OPEN_LLM_COLUMNS
    tasks = cfg.pop("tasks", None) or column_tasks(columns)
    scores, details = run_lm_eval(run.model, run.adapter, tasks=tasks, columns=columns, include_path=include, **cfg)
    return scores, details, None


def _tiny_task(run: RunInfo, recipe: dict, work: Path):
    from ..tiny import ensure_tiny_assets, has_carry, judge
    from .generation import generate_outputs

    cfg = recipe.get("tiny_task") or {}
    known = {"split", "limit", "max_new_tokens", "batch_size", "reference", "tiny_assets", "heldout_pairs"}
    if set(cfg) - known:
        raise ValueError(f"{recipe['_path']}: unknown key(s) in 'tiny_task': {sorted(set(cfg) - known)} "
                         f"(known: {sorted(known)})")
    assets = ensure_tiny_assets(cfg.get("tiny_assets", run.recipe.get("tiny_assets") or ".cache/tiny"))
    split = cfg.get("split", "eval_prompts")
    gen = dict(instructions=str(assets[split]), limit=cfg.get("limit"), max_new_tokens=cfg.get("max_new_tokens", 5),
               batch_size=cfg.get("batch_size", 256), backend="hf", strip=False)
    reference_run = cfg.get("reference") or _sft_of(run)
    mine = json.loads(generate_outputs(run.model, work / "model_outputs.json", adapter=run.adapter,
                                       generator=run.name, **gen).read_text())
    ref_info = RunInfo.from_path(reference_run)
    # Cached per reference (and per training of it), so a changed or retrained reference is regenerated.
    ref_done = Path(reference_run) / "run.json"
    ref_tag = f"{ref_info.name}-{sha256(ref_done)[:12] if ref_done.is_file() else 'model'}"
    theirs = json.loads(generate_outputs(ref_info.model, work / f"reference_outputs--{ref_tag}.json",
                                         adapter=ref_info.adapter, generator=ref_info.name, **gen).read_text())
    scores, details = program_scores(mine, theirs, judge=judge, has_carry=has_carry)
    details.update(reference=reference_run, split=str(assets[split]))
    if _sft_of(run) != run.path:  # paper Fig. 1 statistics on held-out pairs, against the SFT run it started from
        scores.update(heldout_scores(run, cfg.get("heldout_pairs", 512)))
    return scores, details, {"label": "program", "description": "aot_handbook.tiny.judge (exact sum)"}


def heldout_scores(run: RunInfo, max_rows: int) -> dict:
    """On the tiny task's held-out pairs, against the model the run started from: reward accuracy
    (chosen reward > rejected reward, rewards = beta * log-ratio), the FSD violation shares of chosen
    over rejected rewards and of policy over reference chosen-rejected margins (percent), and the
    smallest quantile gap of each pair (raw units)."""
    from ..plots import heldout_rows, run_statistics

    stats = run_statistics(run.path, heldout_rows(run.path, max_rows=max_rows))
    return {"tiny:reward_accuracy": 100.0 * stats["reward_accuracy"],
            "tiny:rewards_fsd_violation": 100.0 * stats["rewards_fsd"]["fsd_violation_share"],
            "tiny:margins_fsd_violation": 100.0 * stats["margins_fsd"]["fsd_violation_share"],
            "tiny:margin_accuracy": 100.0 * stats["policy_margin_accuracy"],
            # min over quantile levels of Q_chosen - Q_rejected (rewards) and Q_policy - Q_reference (margins):
            # > 0 iff dominance holds, and how much room it holds with (raw units, not percent)
            "tiny:rewards_min_gap": stats["rewards_fsd"]["min_quantile_gap"],
            "tiny:margins_min_gap": stats["margins_fsd"]["min_quantile_gap"]}


def _sft_of(run: RunInfo) -> str:
    """The model a tiny run started from when that is itself a finished run (the SFT stage: AOT, DPO,
    the NLL control, ...); the SFT stage itself, started from the untrained base model, is its own."""
    if run.method == "base" or not run.reference or not (Path(run.reference) / "run.json").is_file():
        return run.path
    return run.reference


def program_scores(mine: list[dict], theirs: list[dict], *, judge, has_carry) -> tuple[dict, dict]:
    """Accuracy (overall, carry, no-carry) and the program-judged win rate of ``mine`` over ``theirs``."""
    ref = {r["instruction"]: r["output"] for r in theirs}
    wins = ties = losses = 0
    ok, carry, no_carry, samples = [], [], [], []
    for r in mine:
        a = judge(r["instruction"], r["output"])
        b = judge(r["instruction"], ref[r["instruction"]])
        wins, ties, losses = wins + (a and not b), ties + (a == b), losses + (b and not a)
        ok.append(a)
        (carry if has_carry(r["instruction"]) else no_carry).append(a)
        # per prompt, in the units of the scores (their mean over prompts is the score); the
        # program judge's preference over the SFT answer is the tiny task's per-prompt reward
        c = has_carry(r["instruction"])
        samples.append({"id": r["instruction"], "tiny:accuracy": 100.0 * a, "tiny:carry": 100.0 * a if c else None,
                        "tiny:no_carry": None if c else 100.0 * a,
                        "tiny:win_rate_vs_sft": 100.0 if a and not b else 50.0 if a == b else 0.0,
                        "length": len(r["output"])})
    n = len(mine)
    pct = lambda xs: 100.0 * sum(xs) / len(xs) if xs else None  # noqa: E731
    scores = {"tiny:accuracy": pct(ok), "tiny:carry": pct(carry), "tiny:no_carry": pct(no_carry),
              "tiny:win_rate_vs_sft": 100.0 * (wins + 0.5 * ties) / n}
    return scores, {"n": n, "wins": wins, "ties": ties, "losses": losses,
                    "reference_accuracy": pct([judge(r["instruction"], r["output"]) for r in theirs]),
                    "samples": samples}


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
