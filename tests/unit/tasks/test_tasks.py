"""aot_handbook.tasks: a task registered through the interface is evaluated, tabulated and summarized without
any other module naming it; unregistered names fail clearly."""

import json
from pathlib import Path

import pytest
import yaml

from aot_handbook import tasks
from aot_handbook.evaluation import evaluate, load_eval_recipe
from aot_handbook.run_folder import RunInfo
from aot_handbook.tasks.tiny.arithmetic import answer, build_base_model, ensure_tiny_assets, generate, read_jsonl


def reversed_judge(prompt: str, completion: str) -> bool:
    """The sum written backwards: ``47+38=`` -> ``580``."""
    return completion.strip() == answer(prompt)[::-1]


class ReversedTask(tasks.Task):
    """A toy but real task: the tiny task's prompts and model, answers written backwards, judged by program."""

    name, assets_key, eval_kind, table_names = "reversed", "reversed_assets", "reversed_task", ("reversed1",)

    def ensure_assets(self, root):
        return ensure_tiny_assets(root)  # the same prompts and base model

    def heldout_pairs(self, recipe):
        rows = read_jsonl(self.ensure_assets(self.assets_root(recipe))["paired_test"])
        return [{**r, "chosen": r["chosen"][::-1], "rejected": r["rejected"][::-1]} for r in rows]

    def evaluate(self, run, recipe, work):
        from aot_handbook.generation import generate_outputs

        cfg = recipe.get(self.eval_kind) or {}
        prompts = self.ensure_assets(self.assets_root(run.recipe))["eval_prompts"]
        out = generate_outputs(run.model, work / "model_outputs.json", instructions=str(prompts), generator=run.name,
                               limit=cfg.get("limit"), max_new_tokens=5, batch_size=16, backend="hf", strip=False)
        ok = [reversed_judge(r["instruction"], r["output"]) for r in json.loads(out.read_text())]
        samples = [{"id": r["instruction"], "reversed:accuracy": 100.0 * a}
                   for r, a in zip(json.loads(out.read_text()), ok)]
        return {"reversed:accuracy": 100.0 * sum(ok) / len(ok)}, {"n": len(ok), "samples": samples}, None

    def table(self, name):
        from aot_handbook.tables import Row, Table

        rows = [Row(("AOT unpaired",), {"method": "aot_unpaired", "base_model": self.name})]
        return Table(name, "Reversed sums", ("Method",), [("Accuracy", "reversed:accuracy")], rows)


@pytest.fixture
def reversed_task():
    task = tasks.register_task(ReversedTask())
    yield task
    tasks.unregister_task(task.name)


def _run(path: Path, tiny, recipe: dict) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["base_model"])
    path.mkdir(parents=True)
    build_base_model(tok, seed=2).save_pretrained(path)
    tok.save_pretrained(path)
    (path / "recipe.json").write_text(json.dumps({"path": "recipes/x/aot_unpaired.yaml", "overrides": [],
                                                  "recipe": recipe}))
    (path / "run.json").write_text(json.dumps({"method": recipe["method"], "completed": 0}))
    return path


def test_a_registered_task_is_evaluated_and_tabulated_through_the_interface(reversed_task, tiny, tmp_path):
    from aot_handbook.heldout import heldout_rows
    from aot_handbook.run_folder import output_only
    from aot_handbook.tables import render

    assets = str(Path(tiny["base_model"]).parents[1])
    run = _run(tmp_path / "runs" / "reversed-aot", tiny,
               {"method": "aot_unpaired", "reversed_assets": assets, "model_name_or_path": str(tiny["base_model"]),
                "dataset_mixture": {"datasets": [{"data_files": {"train": f"{assets}/data/unpaired_train.jsonl"}}]}})
    info = RunInfo.from_path(run)
    assert tasks.task_of(info) is reversed_task and tasks.task_of({"tiny_assets": assets}).name == "tiny"
    assert (info.base_model, info.dataset) == ("reversed", "reversed")
    assert output_only("reversed_assets")  # where the inputs are built is not what the weights are
    pairs = heldout_rows(str(run), max_rows=8)  # the Fig. 1 rows come from the task
    assert pairs[0]["chosen"] == answer(pairs[0]["prompt"])[::-1]

    recipe = tmp_path / "reversed.eval.yaml"
    recipe.write_text(yaml.safe_dump({"name": "reversed", "kind": "reversed_task", "reversed_task": {"limit": 24}}))
    assert load_eval_recipe(recipe)["kind"] == "reversed_task"
    results = tmp_path / "results"
    result = json.loads(evaluate(str(run), str(recipe), results_dir=results).read_text())
    prompts = [r["prompt"] for r in read_jsonl(tiny["eval_prompts"])[:24]]
    from aot_handbook.generation import load_model_and_tokenizer

    lm, tok = load_model_and_tokenizer(str(run))
    expected = [reversed_judge(p, c) for p, c in zip(prompts, generate(lm, tok, prompts))]
    assert result["scores"]["reversed:accuracy"] == pytest.approx(100 * sum(expected) / 24)

    # The task's judge decides: a stored answer set to the reversed sum counts as right.
    work = results / run.name / "reversed.work" / "model_outputs.json"
    outputs = json.loads(work.read_text())
    i = next(k for k, ok in enumerate(expected) if not ok)
    outputs[i]["output"] = answer(prompts[i])[::-1]
    work.write_text(json.dumps(outputs))
    again = json.loads(evaluate(str(run), str(recipe), results_dir=results).read_text())
    want = 100 * (sum(expected) + 1) / 24
    assert again["scores"]["reversed:accuracy"] == pytest.approx(want)

    table = render("reversed1", results)["md"].read_text()  # make table TABLE=reversed1
    row = next(line for line in table.splitlines() if line.startswith("| AOT unpaired |"))
    assert row.split("|")[2].strip().split(" [")[0] == f"{want:.1f}"


def test_unregistered_names_fail_clearly(reversed_task, tmp_path):
    from aot_handbook.tables import table_spec

    with pytest.raises(ValueError, match="one task"):  # a recipe names the assets of two tasks
        tasks.task_of({"tiny_assets": "a", "reversed_assets": "b"})
    tasks.unregister_task("reversed")
    with pytest.raises(ValueError, match=r"TABLE='reversed1'.*'tiny1'"):
        table_spec("reversed1")
    bad = tmp_path / "bad.eval.yaml"
    bad.write_text("kind: reversed_task\n")
    with pytest.raises(ValueError, match=r"bad.eval.yaml: key 'kind' must be one of .*'tiny_task'"):
        load_eval_recipe(bad)
    with pytest.raises(ValueError, match="no task 'reversed'"):
        tasks.get_task("reversed")


def test_a_task_needs_its_names():
    with pytest.raises(ValueError, match="needs a name, an assets_key and an eval_kind"):
        tasks.register_task(tasks.Task())
