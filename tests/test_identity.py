"""A run never lies about what it trained: its folder records a fingerprint of what determines the weights,
and a checkpoint or a finished run of another configuration is never resumed or replaced unless asked."""

import hashlib
import json
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from safetensors.torch import load_file

from aot_handbook.run import RecipeError, train
from tests.test_reliability import _recipe

STALE = ["--aot_penalty", "hinge", "--beta", "0.5", "--learning_rate", "1e-4"]


def tree_digest(folder) -> dict:
    """Every file under ``folder`` -> sha256 (what "byte-identical" means in these tests)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a model or a dataset is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the error")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)


def _with_checkpoint(tiny, tmp_path):
    path = _recipe(tmp_path, tiny, max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3)
    out = train(path)
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    return path, out


@pytest.mark.parametrize("finished", [False, True], ids=["checkpoint", "finished_run"])
def test_other_configuration_is_refused_then_overwritten(tiny, tmp_path, finished):
    path, out = _with_checkpoint(tiny, tmp_path)
    if not finished:  # an interrupted run: checkpoint-2 is there, run.json is not
        (out / "run.json").unlink()
    old_weights = load_file(out / "checkpoint-2" / "model.safetensors")
    before = tree_digest(out)
    with pytest.raises(RecipeError) as err:
        train(path, STALE)
    message = str(err.value)
    for key in ("aot_penalty: 'logistic' -> 'hinge'", "beta: 0.01 -> 0.5", "learning_rate: 0.001 -> 0.0001",
                "--overwrite_output_dir true"):
        assert key in message
    assert ("a finished run" if finished else "checkpoint checkpoint-2") in message
    assert tree_digest(out) == before  # refused: nothing in the folder changed

    train(path, [*STALE, "--overwrite_output_dir", "true"])  # from scratch, not from checkpoint-2
    new_weights = load_file(out / "model.safetensors")
    assert any(not torch.equal(old_weights[k], new_weights[k]) for k in new_weights)
    fresh = load_file(train(path, [*STALE, "--output_dir", str(tmp_path / "fresh")]) / "model.safetensors")
    for k in fresh:  # the same weights as the new configuration trained in an empty folder
        torch.testing.assert_close(new_weights[k], fresh[k])
    assert json.loads((out / "fingerprint.json").read_text())["config"]["aot_penalty"] == "hinge"


def test_finished_run_of_the_same_configuration_is_not_retrained(tiny, tmp_path, capsys, monkeypatch):
    path, out = _with_checkpoint(tiny, tmp_path)
    before = tree_digest(out)
    run = json.loads((out / "run.json").read_text())
    assert run["fingerprint"] == json.loads((out / "fingerprint.json").read_text())["sha256"]
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("a finished run was loaded again"))
    assert train(path, ["--logging_steps", "7"]) == out  # an output-only key is not part of the identity
    assert "finished run of this configuration: nothing to do" in capsys.readouterr().out
    assert tree_digest(out) == before


def test_other_data_or_base_model_changes_the_fingerprint(tiny, tmp_path):
    _with_checkpoint(tiny, tmp_path)
    rows = tiny["paired_train"].read_text().splitlines()
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(rows[:-1]) + "\n")  # one row fewer
    mixture = {"datasets": [{"data_files": {"train": str(other)}, "test_split": None}]}
    with pytest.raises(RecipeError, match=r"changed: .*the train data"):
        train(_recipe(tmp_path, tiny, max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3,
                      dataset_mixture=mixture))
    model = tmp_path / "model-copy"
    model.mkdir()
    for f in Path(tiny["base_model"]).iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    with pytest.raises(RecipeError, match=r"the base model \(folder:"):
        train(_recipe(tmp_path, tiny, max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3,
                      model_name_or_path=str(model)))


@pytest.mark.parametrize("inside", ["", "sub"])
def test_output_dir_in_the_model_it_starts_from_is_refused(tiny, tmp_path, nothing_loads, inside):
    model = Path(tiny["base_model"])
    before = tree_digest(model)
    path = _recipe(tmp_path, tiny, output_dir=str(model / inside) if inside else str(model))
    with pytest.raises(RecipeError, match=r"output_dir .* is model_name_or_path .* or inside it"):
        train(path)
    assert tree_digest(model) == before


def test_output_dir_of_a_required_run_is_refused(tiny, tmp_path, nothing_loads):
    first = _recipe(tmp_path, tiny, output_dir=str(tmp_path / "sft"))
    (tmp_path / "recipe.yaml").rename(tmp_path / "sft.yaml")
    path = _recipe(tmp_path, tiny, requires=[str(tmp_path / "sft.yaml")], output_dir=str(tmp_path / "sft"))
    assert first
    with pytest.raises(RecipeError, match=r"is the output of the required run .*sft.yaml"):
        train(path)
    assert not (tmp_path / "sft").exists()


@pytest.mark.parametrize("changes,overrides,message", [
    ({"aot_sort": "soft", "aot_sort_regularization": 0.0}, [], "aot_sort_regularization must be a finite number > 0"),
    ({"aot_sort": "soft", "aot_sort_regularization": -1.0}, [], "aot_sort_regularization must be a finite number"),
    ({"aot_sort": "soft", "aot_sort_iterations": 0}, [], "aot_sort_iterations must be >= 1"),
    ({}, ["--beta", "1.0e+400"], "beta must be a finite number > 0, got inf"),
    ({"label_smoothing": 0.5}, [], "label_smoothing must be in [0, 0.5)"),
    ({"method": "aot_unpaired", "per_device_train_batch_size": 1}, [],
     "key 'per_device_train_batch_size' must be >= 2 for method 'aot_unpaired'"),
    ({"method": "kto", "per_device_train_batch_size": 1}, [], "'per_device_train_batch_size' must be >= 2"),
    ({"per_device_train_batch_size": 0}, [], "key 'per_device_train_batch_size' must be >= 1, got 0"),
    ({}, ["--learning_rate", "nan"], "key 'learning_rate' must be a finite number > 0, got nan"),
    ({"learning_rate": 0.0}, [], "key 'learning_rate' must be a finite number > 0"),
    ({}, ["--beta", "0.1", "--beta=0.2"], "override(s) given more than once: ['--beta']"),
    ({"model_name_or_path": "./no/such/model"}, [], "model_name_or_path: no such folder './no/such/model'"),
    ({"model_name_or_path": "nobody/no-such-model"}, [], "no hub model 'nobody/no-such-model' in the local cache"),
])
def test_bad_values_fail_before_anything_loads(tiny, tmp_path, nothing_loads, changes, overrides, message):
    if changes.get("method") == "kto":
        changes["dataset_mixture"] = {"datasets": [{"data_files": {"train": str(tiny["unpaired_train"])},
                                                    "test_split": None}]}
    path = _recipe(tmp_path, tiny, **changes)
    with pytest.raises(RecipeError) as err:
        train(path, overrides)
    assert str(err.value).startswith(path) and message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_an_empty_model_folder_is_named(tiny, tmp_path, nothing_loads):
    (tmp_path / "empty").mkdir()
    path = _recipe(tmp_path, tiny, model_name_or_path=str(tmp_path / "empty"))
    with pytest.raises(RecipeError, match=r"folder '.*empty' is not a model: no config.json and no weight files"):
        train(path)


def test_a_recipe_that_is_not_text_is_named(tmp_path, nothing_loads):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00\x9f\x92\x96 binary")
    with pytest.raises(RecipeError, match=f"{path}: a recipe must be UTF-8 text"):
        train(str(path))


def test_a_dataset_smaller_than_one_batch_is_refused_before_the_model_loads(tiny, tmp_path, monkeypatch):
    rows = tmp_path / "three.jsonl"
    rows.write_text("\n".join(tiny["paired_train"].read_text().splitlines()[:3]) + "\n")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded"))
    path = _recipe(tmp_path, tiny, per_device_train_batch_size=16,
                   dataset_mixture={"datasets": [{"data_files": {"train": str(rows)}, "test_split": None}]})
    with pytest.raises(RecipeError, match=r"train split has 3 row\(s\), fewer than one batch \(16"):
        train(path)
    assert not (tmp_path / "run").exists()


# --- results follow the weights ------------------------------------------------------------------------------

EVAL = Path(__file__).resolve().parents[1] / "recipes" / "eval" / "tiny.yaml"


def _tiny_eval(tmp_path):
    import yaml

    recipe = yaml.safe_load(EVAL.read_text())
    recipe["tiny_task"] = {**(recipe.get("tiny_task") or {}), "limit": 20, "batch_size": 20}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _cell(results_dir, label="AOT paired", column="Accuracy"):
    from aot_handbook.tables import render

    grid = [line.split(" | ") for line in render("tiny", results_dir)["md"].read_text().splitlines()
            if line.startswith("| ")]
    return grid[[r[0].strip("| ") for r in grid].index(label)][[c.strip("| ") for c in grid[0]].index(column)].strip()


def test_results_follow_the_weights(tiny, tmp_path, capsys):
    from aot_handbook.evaluation import evaluate

    assets = str(Path(tiny["base_model"]).parents[1])
    path = _recipe(tmp_path, tiny, tiny_assets=assets, max_steps=2, learning_rate=1e-3)
    out = train(path)
    results, eval_recipe = tmp_path / "results", _tiny_eval(tmp_path)
    first = json.loads(evaluate(str(out), eval_recipe, results_dir=results).read_text())
    assert first["run"]["fingerprint"] == first["provenance"]["run_fingerprint"] == \
        json.loads((out / "fingerprint.json").read_text())["sha256"]
    assert first["run"]["dataset"] == "tiny" and _cell(results) != "-"

    before = {p: tree_digest(p) for p in (out, results, tiny["base_model"])}
    with pytest.raises(RecipeError, match="learning_rate: 0.001 -> 0.005"):
        train(path, ["--learning_rate", "5e-3"])
    assert {p: tree_digest(p) for p in before} == before  # refused: run, results and source model untouched
    train(path, ["--learning_rate", "5e-3", "--overwrite_output_dir", "true"])  # the weights change
    assert _cell(results) == "-"  # the old evaluation no longer fills the cell
    assert "left out 1 stale result(s)" in capsys.readouterr().err
    again = json.loads(evaluate(str(out), eval_recipe, results_dir=results).read_text())
    assert again["run"]["fingerprint"] == json.loads((out / "fingerprint.json").read_text())["sha256"]
    assert again["run"]["fingerprint"] != first["run"]["fingerprint"] and _cell(results) != "-"


def test_a_tiny_recipe_on_other_data_is_not_the_tiny_task(tiny, tmp_path):
    from aot_handbook.evaluation.common import RunInfo, save_result

    assets = str(Path(tiny["base_model"]).parents[1])
    mine = tmp_path / "mine.jsonl"
    mine.write_text(tiny["paired_train"].read_text())
    results = tmp_path / "results"
    for name, data in (("tiny-data", str(tiny["paired_train"])), ("my-data", str(mine))):
        run = tmp_path / name
        run.mkdir()
        recipe = {"method": "aot_paired", "tiny_assets": assets, "model_name_or_path": str(tiny["base_model"]),
                  "dataset_mixture": {"datasets": [{"data_files": {"train": data}}]}}
        (run / "recipe.json").write_text(json.dumps({"path": f"recipes/{name}.yaml", "overrides": [],
                                                     "recipe": recipe}))
        info = RunInfo.from_path(run)
        score = 50.0 if name == "tiny-data" else 99.0
        save_result(info, {"name": "tiny", "kind": "tiny_task", "_path": "x", "_sha256": "x"},
                    {"tiny:accuracy": score}, {}, results_dir=results)
    assert RunInfo.from_path(tmp_path / "my-data").dataset == str(mine)
    assert _cell(results) == "50.0"  # not the mean with the custom-data run, not an error


def test_eval_of_a_run_folder_that_does_not_exist_is_an_error_and_writes_nothing(tmp_path, monkeypatch):
    from aot_handbook.evaluation import evaluate

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for missing in ("runs/tiny-dppo", "./runs/x", "nobody/no-such-model"):
        with pytest.raises(ValueError, match=f"RUN: no such folder '{missing}'"):
            evaluate(missing, str(EVAL), results_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_a_model_that_fails_to_load_is_named(tiny, tmp_path):
    """Past the parse-time check (e.g. online, a hub id that does not exist): the load error names the path."""
    from trl import ModelConfig

    from aot_handbook.configs import RecipeArguments
    from aot_handbook.model_utils import load_model, load_tokenizer

    with pytest.raises(ValueError, match="model_name_or_path: cannot load 'nobody/no-such-model'"):
        load_model(ModelConfig(model_name_or_path="nobody/no-such-model"))
    with pytest.raises(ValueError, match=f"tokenizer_name_or_path: cannot load '{tmp_path}'"):
        load_tokenizer(ModelConfig(model_name_or_path=str(tiny["base_model"])),
                       RecipeArguments(tokenizer_name_or_path=str(tmp_path)))
