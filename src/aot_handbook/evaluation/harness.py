"""Open LLM Leaderboard tasks through lm-eval (``lm_eval.simple_evaluate``), zero-shot as in the paper.

The eval recipe lists ``tasks`` and maps each table column to ``task/metric`` (lm-eval's
metric key, filter included, e.g. ``gsm8k/exact_match,strict-match``), or to a list of them whose
mean is the column (TruthfulQA as the mean of mc1 and mc2). A LoRA run is loaded as
``pretrained=<base>,peft=<adapter>``. ``include_path`` adds task YAMLs (local data, e.g. the
tiny arithmetic tasks of :func:`write_tiny_tasks`). tinyBenchmarks tasks (tinyArc, ...) need
the ``tinyBenchmarks`` package, which is not on PyPI:
``pip install git+https://github.com/felipemaiapolo/tinyBenchmarks``.
"""

from __future__ import annotations

import json
from pathlib import Path

# The paper's six benchmarks (Table 1 columns) -> lm-eval task and metric, zero-shot: the variants the paper's
# numbers imply (recipes/eval/open_llm_paper.yaml gives the evidence for each).
OPEN_LLM_COLUMNS = {
    "arc": "arc_easy/acc,none",
    "hellaswag": "hellaswag/acc,none",
    "mmlu": "mmlu/acc,none",
    "truthfulqa": ["truthfulqa_mc1/acc,none", "truthfulqa_mc2/acc,none"],
    "winogrande": "winogrande/acc,none",
    "gsm8k": "gsm8k/exact_match,flexible-extract",
}


def column_specs(spec: str | list[str]) -> list[str]:
    """A column's ``task/metric,filter`` specs: one, or several whose mean is the column."""
    return [spec] if isinstance(spec, str) else list(spec)


def column_tasks(columns: dict) -> list[str]:
    """The lm-eval tasks the columns read."""
    return sorted({s.split("/")[0] for spec in columns.values() for s in column_specs(spec)})


def column_score(results: dict, column: str, spec: str | list[str]) -> float:
    """The column's value in percent from lm-eval's ``results`` (the mean when it lists several metrics)."""
    values = []
    for one in column_specs(spec):
        task, metric = one.split("/", 1)
        if task not in results or metric not in results[task]:
            raise KeyError(f"columns.{column}: lm-eval returned no {metric!r} for task {task!r} "
                           f"(has: {sorted(results.get(task, {}))})")
        values.append(100.0 * float(results[task][metric]))
    return sum(values) / len(values)


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
    scores = {column: column_score(results, column, spec) for column, spec in columns.items()}
    details = {"results": json.loads(json.dumps(results, default=str)), "stderr": column_stderr(results, columns),
               "samples": lm_eval_samples(out.get("samples") or {}, columns),
               "n_samples": out.get("n-samples"), "versions": out.get("versions"),
               "num_fewshot": num_fewshot, "limit": limit, "model_args": model_args(model, adapter, model_extra)}
    return scores, details


def column_stderr(results: dict, columns: dict) -> dict[str, float | None]:
    """lm-eval's own standard error of each column, in percent (None where it reported none). For a column
    that averages several metrics, the mean of their standard errors: an upper bound on the standard error of
    the mean, whatever the metrics' correlation (sd((a + b) / 2) <= (sd(a) + sd(b)) / 2)."""
    out = {}
    for column, spec in columns.items():
        errs = []
        for one in column_specs(spec):
            task, metric = one.split("/", 1)
            name, _, filt = metric.partition(",")
            errs.append(results.get(task, {}).get(f"{name}_stderr,{filt}"))
        ok = all(isinstance(e, (int, float)) for e in errs)
        out[column] = 100.0 * sum(errs) / len(errs) if ok and errs else None
    return out


def lm_eval_samples(logged: dict, columns: dict) -> list[dict]:
    """lm-eval's logged samples -> one row per (task, document): ``id`` ``task/doc_id`` and the
    column scores in percent. A group column (e.g. ``mmlu``) takes the documents of its subtasks
    (``mmlu_*``): their mean is the size-weighted group score. A column that averages several metrics
    (e.g. TruthfulQA mc1 and mc2, on the same questions) gets, per document, the mean of those metrics,
    under the first metric's task; a document missing from one of them is left out of that column."""
    rows: dict[str, dict] = {}
    for column, spec in columns.items():
        parts = []
        for one in column_specs(spec):
            task, metric = one.split("/", 1)
            name, _, filt = metric.partition(",")
            values = {}
            for sub in [task] if task in logged else sorted(k for k in logged if k.startswith(task + "_")):
                for s in logged[sub]:
                    if s.get("filter", "none") != (filt or "none") or name not in s:
                        continue
                    # one metric: documents by (subtask, id); several: by id, to average them per document
                    key = (sub if len(column_specs(spec)) == 1 else None, s["doc_id"])
                    values[key] = (sub, 100.0 * float(s[name]))
            parts.append(values)
        for key in set(parts[0]).intersection(*parts[1:]):
            sub = parts[0][key][0]
            row = rows.setdefault(f"{sub}/{key[1]}", {"id": f"{sub}/{key[1]}", "task": sub})
            row[column] = sum(p[key][1] for p in parts) / len(parts)
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
