"""Open LLM Leaderboard tasks through lm-eval (``lm_eval.simple_evaluate``), zero-shot as in the paper.

The eval recipe lists ``tasks`` and maps each table column to ``task/metric`` (lm-eval's
metric key, filter included, e.g. ``gsm8k/exact_match,strict-match``), or to a list of them whose
mean is the column (TruthfulQA as the mean of mc1 and mc2). A LoRA run is loaded as
``pretrained=<base>,peft=<adapter>``. ``include_path`` adds task YAMLs (local data, e.g. a registered task's own,
``Task.lm_eval_include``). tinyBenchmarks tasks (tinyArc, ...) need
the ``tinyBenchmarks`` package, which is not on PyPI:
``pip install git+https://github.com/felipemaiapolo/tinyBenchmarks``.

:func:`lm_eval_tasks` is lm-eval's task registry, read offline, and :func:`check_lm_eval_recipe` checks an lm_eval
recipe against it (``aot-validate``).
"""

from __future__ import annotations

import difflib
import functools
import json
import tempfile
from pathlib import Path

import yaml

from ..errors import UserError
from ..tasks import tasks as registered_tasks

# The paper's six benchmarks (Table 1 columns) -> lm-eval task and metric, zero-shot: the variants the paper's
# numbers imply (recipes/eval/open_llm_paper.eval.yaml gives the evidence for each).
OPEN_LLM_COLUMNS = {
    "arc": "arc_easy/acc,none",
    "hellaswag": "hellaswag/acc,none",
    "mmlu": "mmlu/acc,none",
    "truthfulqa": ["truthfulqa_mc1/acc,none", "truthfulqa_mc2/acc,none"],
    "winogrande": "winogrande/acc,none",
    "gsm8k": "gsm8k/exact_match,flexible-extract",
}


# The tasks of the tinyBenchmarks suite (lm-eval task names; the package is GitHub-only): they need that package.
TINYBENCHMARKS_TASKS = ("tinyArc", "tinyGSM8k", "tinyHellaswag", "tinyMMLU", "tinyTruthfulQA", "tinyWinogrande",
                        "tinyAlpacaEval")


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
    if any(t.startswith(TINYBENCHMARKS_TASKS) for t in tasks):
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


# ---------------------------------------------------------------- what lm-eval knows, offline


@functools.cache
def _lm_eval_registry() -> dict[str, tuple[str, set | None, set]] | None:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        return None
    return {name: _task_entry(e.kind.name, e.cfg or {}) for name, e in TaskManager().task_index.items()}


def lm_eval_tasks(include_path: str | None = None) -> dict[str, tuple[str, set | None, set]] | None:
    """lm-eval's task registry, offline: name -> (kind, metric names or None if unknown, filter names).
    Built once per process (the index takes 7-9 s); None when lm-eval is not installed."""
    registry = _lm_eval_registry()
    if registry is None:
        return None
    out = dict(registry)
    if include_path:  # local task YAMLs (e.g. a registered task's own): read directly, no second index
        for f in Path(include_path).glob("*.yaml"):
            cfg = yaml.load(f.read_text(), Loader=_AnyTagLoader) or {}
            if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
                out[cfg["task"]] = _task_entry("TASK", cfg)
    return out


class _AnyTagLoader(yaml.SafeLoader):
    """lm-eval task YAMLs use tags such as !function; their values do not matter here."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _task_entry(kind: str, cfg: dict) -> tuple[str, set | None, set]:
    listed = cfg.get("metric_list") or cfg.get("aggregate_metric_list")
    metrics = {m["metric"] for m in listed if isinstance(m, dict) and "metric" in m} if listed else None
    return kind, metrics, {f["name"] for f in cfg.get("filter_list") or [] if isinstance(f, dict)} or {"none"}


def check_lm_eval_recipe(path, recipe: dict) -> None:
    """Every task and every ``columns`` entry (``task/metric,filter``, or a list of them averaged) of an
    lm_eval recipe names a task lm-eval knows, and a metric and filter that task reports (``UserError``
    naming the file and the key). A registered task's own lm-eval files are written to a temporary folder."""
    cfg = dict(recipe.get("lm_eval") or {})
    include = cfg.get("include_path")
    with tempfile.TemporaryDirectory() as tmp:
        for task in registered_tasks():  # written at evaluation time: write them once to read their names
            include = task.lm_eval_include(cfg, Path(tmp)) or include
        registry = lm_eval_tasks(include)
    if registry is None:
        return
    for name in cfg.get("tasks") or []:
        if name not in registry:
            raise _bad(path, "lm_eval.tasks", f"{name!r} is not a task lm-eval knows ({_near(name, registry)})")
    for column, specs in (cfg.get("columns") or {}).items():
        for spec in [specs] if isinstance(specs, str) else specs or []:
            key = f"lm_eval.columns.{column}"
            task, _, metric = str(spec).partition("/")
            name, _, filt = metric.partition(",")
            if task not in registry:
                raise _bad(path, key, f"{task!r} is not a task lm-eval knows ({_near(task, registry)})")
            kind, metrics, filters = registry[task]
            if kind not in ("TASK", "GROUP"):
                raise _bad(path, key, f"{task!r} is an lm-eval {kind.lower()}, which reports no score of its own; "
                                       "name one of its tasks")
            if not filt or (metrics is not None and name not in metrics) or (kind == "TASK" and filt not in filters):
                raise _bad(path, key, f"{spec!r}: task {task!r} reports "
                                       f"{sorted(f'{m},{f}' for m in metrics or [] for f in filters)}")


def _bad(path, key: str, why: str) -> UserError:
    return UserError(f"{path}: key '{key}': {why}")


def _near(name: str, registry: dict) -> str:
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6)
    return f"did you mean {close}?" if close else "see `lm-eval ls tasks`"
