"""aot_handbook.evaluation.harness: lm-eval offline (a registered task's own lm-eval files, a LoRA adapter),
columns averaging several metrics, and lm-eval's task registry checked against the evaluation recipes."""

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from aot_handbook.evaluation import evaluate
from aot_handbook.evaluation.harness import lm_eval_tasks
from aot_handbook.evaluation.results import read_samples
from aot_handbook.generation import load_model_and_tokenizer
from aot_handbook.tasks.tiny.arithmetic import (
    generate,
    judge,
    read_jsonl,
)
from aot_handbook.tooling.validate import (
    ValidationError,
    validate_file,
)
from tests.helpers import REPO, eval_recipe


def _choice_logp(model, tok, prompt: str, choice: str) -> float:
    ids = tok(prompt + choice, return_tensors="pt")["input_ids"]
    n_prompt = len(tok(prompt)["input_ids"])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return float(logps[torch.arange(n_prompt - 1, ids.shape[1] - 1), ids[0, n_prompt:]].sum())


@pytest.mark.slow
def test_lm_eval_on_project_tasks_with_lora_adapter(runs, tmp_path):
    """One lm-eval call (LoRA via peft=) on the multiple-choice and generate_until tiny tasks."""
    from aot_handbook.tables import render
    from aot_handbook.tasks.tiny.arithmetic import write_lm_eval_tasks

    n = 30
    recipe = eval_recipe(tmp_path, "tiny_lm_eval.eval.yaml",
                          lm_eval={"tiny_rows": n, "tiny_assets": str(Path(runs["tiny"]["base_model"]).parents[1])})
    results = tmp_path / "results"
    result = json.loads(evaluate(str(runs["lora"]), str(recipe), results_dir=results).read_text())
    assert "peft=" + str(runs["lora"]) in result["details"]["model_args"]
    # Independent check with the merged LoRA model: greedy exact match and log-likelihood argmax.
    lm, tok = load_model_and_tokenizer(str(runs["sft"]), str(runs["lora"]))
    rows = read_jsonl(runs["tiny"]["eval_prompts"])[:n]
    prompts = [r["prompt"] for r in rows]
    gen_acc = 100 * sum(judge(p, c) for p, c in zip(prompts, generate(lm, tok, prompts))) / n
    assert result["scores"]["tiny_gen"] == pytest.approx(gen_acc)
    task_file = write_lm_eval_tasks(tmp_path / "check", rows) / "tiny_arith.jsonl"
    data = [json.loads(line) for line in task_file.read_text().splitlines()]
    mc = [max(range(3), key=lambda i: _choice_logp(lm, tok, d["prompt"], d["choices"][i])) == d["gold"] for d in data]
    assert result["scores"]["tiny_mc"] == pytest.approx(100 * sum(mc) / n)
    per = read_samples(next((results / "tiny-dpo_lora").glob("*.json")))  # lm-eval's log_samples, per document
    for column in ("tiny_mc", "tiny_gen"):
        vals = [r[column] for r in per if column in r]
        assert len(vals) == n and statistics.mean(vals) == pytest.approx(result["scores"][column])
        # lm-eval's own standard error (switched on again): the sd of the per-document scores / sqrt(n)
        assert result["details"]["stderr"][column] == pytest.approx(statistics.stdev(vals) / n ** 0.5)
    table = render("tiny", results)["md"].read_text()
    row = next(line for line in table.splitlines() if line.startswith("| DPO |"))
    cells = [c.strip() for c in row.strip("|").split("|")][-2:]  # mean [95% CI over prompts]
    assert [c.split(" [")[0] for c in cells] == [f"{result['scores'][k]:.1f}" for k in ("tiny_mc", "tiny_gen")]
    assert all(c.endswith("]") for c in cells)


RECIPES = REPO / "recipes"


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_every_lm_eval_task_in_the_eval_recipes_is_in_lm_evals_registry():
    registry = lm_eval_tasks()
    assert registry is not None and "arc_easy" in registry  # lm-eval 0.4.13 is installed in the test env
    checked = 0
    for path in sorted((RECIPES / "eval").glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        if recipe["kind"] != "lm_eval":
            continue
        validate_file(path)
        if not recipe["lm_eval"].get("tiny_tasks"):
            for specs in recipe["lm_eval"]["columns"].values():
                for spec in [specs] if isinstance(specs, str) else specs:
                    assert spec.split("/")[0] in registry
                    checked += 1
    assert checked >= 6 * 3 + 1  # open_llm_paper (TruthfulQA: two), open_llm_zero_shot, tinybenchmarks


@pytest.mark.slow  # the first case builds lm-eval's task index (~10-30 s)
@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
@pytest.mark.parametrize("column,spec,message", [
    ("truthfulqa", "tinyTruthfulQA_mc2/acc,none",
     r"'tinyTruthfulQA_mc2' is not a task lm-eval knows .*tinyTruthfulQA"),
    ("gsm8k", "gsm8k/exact_match,strict", r"'gsm8k/exact_match,strict'.*exact_match,flexible-extract"),
    ("arc", "arc_easy/acc_norm", r"'arc_easy/acc_norm'"),  # no filter part: lm-eval's key is acc_norm,none
    ("hellaswag", "hellaswag/f1,none", r"'hellaswag/f1,none'.*acc,none"),
])
def test_a_wrong_task_or_metric_is_caught(tmp_path, column, spec, message):
    folder = tmp_path / "eval"
    folder.mkdir()
    path = folder / "tinybenchmarks.eval.yaml"
    shutil.copy(RECIPES / "eval" / "tinybenchmarks.eval.yaml", path)
    recipe = yaml.safe_load(path.read_text())
    recipe["lm_eval"]["columns"][column] = spec
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValidationError, match=rf"key 'lm_eval.columns.{column}': {message}"):
        validate_file(path)


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_a_column_listing_several_metrics_is_their_mean():
    from aot_handbook.evaluation.harness import OPEN_LLM_COLUMNS, column_score, column_tasks

    paper = yaml.safe_load((RECIPES / "eval" / "open_llm_paper.eval.yaml").read_text())["lm_eval"]["columns"]
    assert paper == OPEN_LLM_COLUMNS  # the default columns are the paper recipe's
    results = {"truthfulqa_mc1": {"acc,none": 0.36, "acc_stderr,none": 0.01}, "truthfulqa_mc2": {"acc,none": 0.52}}
    assert column_score(results, "truthfulqa", paper["truthfulqa"]) == pytest.approx(44.0)
    assert {"truthfulqa_mc1", "truthfulqa_mc2", "arc_easy", "gsm8k"} <= set(column_tasks(paper))
    with pytest.raises(KeyError,
                       match=r"columns.truthfulqa: lm-eval returned no 'acc,none' for task 'truthfulqa_mc2'"):
        column_score({"truthfulqa_mc1": {"acc,none": 0.3}}, "truthfulqa", paper["truthfulqa"])


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_averaged_column_keeps_per_document_scores_and_a_bounded_stderr():
    """A column averaging two metrics on the same questions (TruthfulQA mc1, mc2) gets, per document, the mean
    of the two, so its per-sample rows average to the column's score; its standard error is the mean of the two
    (an upper bound); a group column keeps its subtasks' documents apart."""
    from aot_handbook.evaluation.harness import column_score, column_stderr, lm_eval_samples

    logged = {"truthfulqa_mc1": [{"doc_id": 0, "filter": "none", "acc": 1.0}, {"doc_id": 1, "filter": "none",
                                                                               "acc": 0.0}],
              "truthfulqa_mc2": [{"doc_id": 0, "filter": "none", "acc": 0.5}, {"doc_id": 1, "filter": "none",
                                                                               "acc": 0.25},
                                 {"doc_id": 2, "filter": "none", "acc": 1.0}],
              "mmlu_a": [{"doc_id": 0, "filter": "none", "acc": 1.0}], "mmlu_b": [{"doc_id": 0, "filter": "none",
                                                                                   "acc": 0.0}]}
    columns = {"truthfulqa": ["truthfulqa_mc1/acc,none", "truthfulqa_mc2/acc,none"], "mmlu": "mmlu/acc,none"}
    rows = {r["id"]: r for r in lm_eval_samples(logged, columns)}
    assert rows["truthfulqa_mc1/0"]["truthfulqa"] == 75.0 and rows["truthfulqa_mc1/1"]["truthfulqa"] == 12.5
    assert "truthfulqa_mc1/2" not in rows  # only in mc2: not a document of the averaged column
    assert rows["mmlu_a/0"]["mmlu"] == 100.0 and rows["mmlu_b/0"]["mmlu"] == 0.0
    results = {"truthfulqa_mc1": {"acc,none": 0.5, "acc_stderr,none": 0.01},
               "truthfulqa_mc2": {"acc,none": 0.375, "acc_stderr,none": 0.03}, "mmlu": {"acc,none": 0.5}}
    assert column_score(results, "truthfulqa", columns["truthfulqa"]) == 43.75
    assert sum(r["truthfulqa"] for r in rows.values() if "truthfulqa" in r) / 2 == 43.75
    assert column_stderr(results, columns) == {"truthfulqa": 2.0, "mmlu": None}
