"""make validate-recipes: optimizer, quantization and launcher packages and pairs; lm-eval task names."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from aot_handbook import validate
from aot_handbook.validate import (
    ValidationError,
    check_optimizer,
    validate_file,
    validate_recipe,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
LAUNCHERS = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))
FSDP2 = RECIPES / "accelerate_configs" / "fsdp.yaml"
DDP = RECIPES / "accelerate_configs" / "ddp.yaml"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture
def no_bnb_declared(tmp_path, monkeypatch):
    """setup.cfg as it was before the bnb extra, and no bitsandbytes / deepspeed installed here."""
    text = re.sub(r"\nbnb =\n    bitsandbytes[^\n]*\n", "\n", (ROOT / "setup.cfg").read_text())
    text = re.sub(r"\ndeepspeed =\n    deepspeed[^\n]*\n", "\n", text)
    cfg = tmp_path / "setup.cfg"
    cfg.write_text(text)
    assert not {"bitsandbytes", "deepspeed"} & set(validate.declared_packages(cfg))
    monkeypatch.setattr(validate, "SETUP_CFG", cfg)
    monkeypatch.setattr(validate, "_installed", lambda dist: False)
    return cfg


def _recipe(tmp_path, **changes) -> Path:
    raw = yaml.safe_load((RECIPES / "merlinite-7b/aot_unpaired.yaml").read_text())
    raw.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_project_declares_bitsandbytes_in_an_extra():
    assert validate.declared_packages()["bitsandbytes"] == "bnb"
    assert validate.optimizer_package("paged_adamw_32bit") == "bitsandbytes"
    assert validate.optimizer_package("adamw_torch") is None


def test_paged_adamw_needs_bitsandbytes_installed_or_declared(tmp_path, no_bnb_declared, monkeypatch):
    path = _recipe(tmp_path, optim="paged_adamw_32bit")
    with pytest.raises(ValidationError, match=rf"{re.escape(str(path))}: key 'optim': .*`bitsandbytes`"):
        validate_recipe(path)
    monkeypatch.setattr(validate, "SETUP_CFG", ROOT / "setup.cfg")  # with the bnb extra: accepted
    validate_recipe(path, launchers=[DDP])


def test_qlora_needs_bitsandbytes(tmp_path, no_bnb_declared):
    path = _recipe(tmp_path, load_in_4bit=True)
    with pytest.raises(ValidationError, match=r"key 'load_in_4bit': .*`bitsandbytes`"):
        validate_recipe(path)


def test_paged_adamw_is_rejected_with_fsdp2_and_accepted_with_ddp(tmp_path):
    path = _recipe(tmp_path, optim="paged_adamw_32bit")
    assert validate.launcher_kind(FSDP2) == "FSDP2" and validate.launcher_kind(DDP) == "MULTI_GPU"
    with pytest.raises(ValidationError, match=r"key 'optim': 'paged_adamw_32bit' is not known to work .*FSDP2.*#1633"):
        validate_recipe(path, launchers=[FSDP2])
    validate_recipe(path, launchers=[DDP])
    # the script checks each recipe against the accelerate configs validated with it
    assert validate.main([str(path), str(DDP), "-q"]) == 0
    assert validate.main([str(path), str(FSDP2), "-q"]) == 1
    assert validate.main([str(path), "--launcher", str(FSDP2), "-q"]) == 1


def test_a_sweep_is_checked_with_its_launcher(tmp_path):
    sweep = tmp_path / "optim.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": ["recipes/merlinite-7b/dpo.yaml"], "output_root": str(tmp_path / "runs"),
                                     "grid": {"optim": ["adamw_torch", "paged_adamw_32bit"]},
                                     "launch": {"accelerate_config": str(FSDP2), "num_processes": 8}}))
    with pytest.raises(ValidationError, match=r"run .*paged_adamw_32bit.*key 'optim'.*FSDP2"):
        validate_file(sweep)


def test_the_new_defaults_run_under_every_launcher():
    spec = __import__("importlib").util.spec_from_file_location("gen", RECIPES / "_generate.py")
    gen = __import__("importlib").util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    optims = {yaml.safe_load(text)["optim"] for text in gen.all_recipes().values()}
    assert optims == {"adamw_torch"}
    for launcher in LAUNCHERS:
        check_optimizer("recipe", "adamw_torch", launcher)
    validate_recipe(RECIPES / "merlinite-7b/aot_paired.yaml", launchers=LAUNCHERS)


def test_deepspeed_launcher_needs_deepspeed(no_bnb_declared):
    with pytest.raises(ValidationError, match=r"zero3.yaml: key 'distributed_type': DeepSpeed needs the `deepspeed`"):
        validate_file(RECIPES / "accelerate_configs" / "zero3.yaml")


# ------------------------------------------------------------------ lm-eval task names, offline


def test_every_lm_eval_task_in_the_eval_recipes_is_in_lm_evals_registry():
    registry = validate.lm_eval_tasks()
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
    path = folder / "tinybenchmarks.yaml"
    shutil.copy(RECIPES / "eval" / "tinybenchmarks.yaml", path)
    recipe = yaml.safe_load(path.read_text())
    recipe["lm_eval"]["columns"][column] = spec
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValidationError, match=rf"key 'lm_eval.columns.{column}': {message}"):
        validate_file(path)


def test_a_column_listing_several_metrics_is_their_mean():
    from aot_handbook.evaluation.harness import OPEN_LLM_COLUMNS, column_score, column_tasks

    paper = yaml.safe_load((RECIPES / "eval" / "open_llm_paper.yaml").read_text())["lm_eval"]["columns"]
    assert paper == OPEN_LLM_COLUMNS  # the default columns are the paper recipe's
    results = {"truthfulqa_mc1": {"acc,none": 0.36, "acc_stderr,none": 0.01}, "truthfulqa_mc2": {"acc,none": 0.52}}
    assert column_score(results, "truthfulqa", paper["truthfulqa"]) == pytest.approx(44.0)
    assert {"truthfulqa_mc1", "truthfulqa_mc2", "arc_easy", "gsm8k"} <= set(column_tasks(paper))
    with pytest.raises(KeyError,
                       match=r"columns.truthfulqa: lm-eval returned no 'acc,none' for task 'truthfulqa_mc2'"):
        column_score({"truthfulqa_mc1": {"acc,none": 0.3}}, "truthfulqa", paper["truthfulqa"])


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
