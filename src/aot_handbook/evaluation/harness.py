"""Open LLM Leaderboard tasks through lm-eval (``lm_eval.simple_evaluate``), zero-shot as in the paper.

The eval recipe lists ``tasks`` and maps each table column to ``task/metric`` (lm-eval's
metric key, filter included, e.g. ``gsm8k/exact_match,strict-match``). A LoRA run is loaded as
``pretrained=<base>,peft=<adapter>``. ``include_path`` adds task YAMLs (local data, e.g. the
tiny arithmetic tasks of :func:`write_tiny_tasks`). tinyBenchmarks tasks (tinyArc, ...) need
the ``tinyBenchmarks`` package, which is not on PyPI:
``pip install git+https://github.com/felipemaiapolo/tinyBenchmarks``.
"""

from __future__ import annotations

import json
from pathlib import Path

# The paper's six benchmarks (Table 1 columns) -> lm-eval task and metric; zero-shot.
OPEN_LLM_COLUMNS = {
    "arc": "arc_challenge/acc_norm,none",
    "hellaswag": "hellaswag/acc_norm,none",
    "mmlu": "mmlu/acc,none",
    "truthfulqa": "truthfulqa_mc2/acc,none",
    "winogrande": "winogrande/acc,none",
    "gsm8k": "gsm8k/exact_match,strict-match",
}


def model_args(model: str, adapter: str | None, extra: str | None = None) -> str:
    args = f"pretrained={model}" + (f",peft={adapter}" if adapter else "")
    return args + (f",{extra}" if extra else "")


def run_lm_eval(model: str, adapter: str | None, *, tasks: list[str], columns: dict[str, str],
                num_fewshot: int | None = 0, batch_size: int | str = "auto", limit: int | float | None = None,
                include_path: str | None = None, device: str | None = None, model_extra: str | None = None,
                apply_chat_template: bool = False, bootstrap_iters: int = 1000) -> tuple[dict, dict]:
    """(scores: column -> percent, details: lm-eval's per-task results and config, its standard
    errors per column (``stderr``, percent; analytic for means, ``bootstrap_iters`` resamples
    otherwise) and ``samples``: one row per task document with that document's column scores)."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ImportError("lm-eval is not installed: pip install -e '.[eval]' (lm-eval==0.4.13)") from exc
    if any(t.startswith("tiny") and t[4:5].isupper() for t in tasks):
        try:
            import tinyBenchmarks  # noqa: F401
        except ImportError as exc:
            raise ImportError("tinyBenchmarks tasks need the tinyBenchmarks package (GitHub only, not on PyPI): "
                              "pip install git+https://github.com/felipemaiapolo/tinyBenchmarks") from exc
    import torch

    out = lm_eval.simple_evaluate(
        model="hf", model_args=model_args(model, adapter, model_extra), tasks=tasks, num_fewshot=num_fewshot,
        batch_size=batch_size, limit=limit, device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        task_manager=TaskManager(include_path=include_path) if include_path else TaskManager(),
        apply_chat_template=apply_chat_template, log_samples=True, bootstrap_iters=bootstrap_iters)
    results = out["results"]
    scores = {}
    for column, spec in columns.items():
        task, metric = spec.split("/", 1)
        if task not in results or metric not in results[task]:
            raise KeyError(f"columns.{column}: lm-eval returned no {metric!r} for task {task!r} "
                           f"(has: {sorted(results.get(task, {}))})")
        scores[column] = 100.0 * float(results[task][metric])
    stderr = {}
    for column, spec in columns.items():
        task, metric = spec.split("/", 1)
        name, _, filt = metric.partition(",")
        err = results[task].get(f"{name}_stderr,{filt}")
        stderr[column] = 100.0 * float(err) if isinstance(err, (int, float)) else None
    details = {"results": json.loads(json.dumps(results, default=str)), "stderr": stderr,
               "samples": lm_eval_samples(out.get("samples") or {}, columns),
               "n_samples": out.get("n-samples"), "versions": out.get("versions"),
               "num_fewshot": num_fewshot, "limit": limit, "model_args": model_args(model, adapter, model_extra)}
    return scores, details


def lm_eval_samples(logged: dict, columns: dict[str, str]) -> list[dict]:
    """lm-eval's logged samples -> one row per (task, document): ``id`` ``task/doc_id`` and the
    column scores in percent. A group column (e.g. ``mmlu``) takes the documents of its subtasks
    (``mmlu_*``): their mean is the size-weighted group score."""
    rows: dict[str, dict] = {}
    for column, spec in columns.items():
        task, metric = spec.split("/", 1)
        name, _, filt = metric.partition(",")
        for sub in [task] if task in logged else sorted(k for k in logged if k.startswith(task + "_")):
            for s in logged[sub]:
                if s.get("filter", "none") != (filt or "none") or name not in s:
                    continue
                row = rows.setdefault(f"{sub}/{s['doc_id']}", {"id": f"{sub}/{s['doc_id']}", "task": sub})
                row[column] = 100.0 * float(s[name])
    return list(rows.values())


# ---------------------------------------------------------------- the tiny task as lm-eval tasks


def write_tiny_tasks(directory: str | Path, rows: list[dict]) -> Path:
    """lm-eval task files for the tiny arithmetic task, on local data (no hub):

    - ``tiny_arith_mc``: multiple choice (log-likelihood) between the sum, the carry-dropped
      answer and a spurious carry; metric acc;
    - ``tiny_arith_gen``: ``generate_until``, greedy, exact match with the sum.
    """
    from ..tiny import answer, flawed, spurious_carry

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = []
    for r in rows:
        p = r["prompt"]
        wrong = [flawed(p) if flawed(p) != answer(p) else f"{int(answer(p)) - 1:03d}", spurious_carry(p)]
        data.append({"prompt": p, "answer": answer(p), "choices": [answer(p), *wrong], "gold": 0})
    (d / "tiny_arith.jsonl").write_text("".join(json.dumps(x) + "\n" for x in data))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {(d / 'tiny_arith.jsonl').resolve()}\n"
              "test_split: test\ndoc_to_text: \"{{prompt}}\"\ntarget_delimiter: \"\"\n")
    (d / "tiny_arith_mc.yaml").write_text(
        "task: tiny_arith_mc\noutput_type: multiple_choice\n" + common
        + "doc_to_choice: \"{{choices}}\"\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (d / "tiny_arith_gen.yaml").write_text(
        "task: tiny_arith_gen\noutput_type: generate_until\n" + common
        + "doc_to_target: \"{{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\", \"=\"]\n  max_gen_toks: 5\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return d
