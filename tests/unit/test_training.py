"""aot_handbook.training: one recipe trained; bad recipes, paths and data fail before anything loads; secrets stay
out of the run folder."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from aot_handbook.errors import UserError
from aot_handbook.plan import train
from aot_handbook.run_folder import RunInfo
from aot_handbook.training import ONE_THREAD_BELOW_PARAMS, set_cpu_threads
from tests.helpers import tree_digest, write_recipe


@pytest.mark.slow
def test_data_format_is_decided_from_the_loaded_rows(tiny, tmp_path):
    unpaired = {"datasets": [{"data_files": {"train": str(tiny["unpaired_train"])}, "test_split": None}]}
    out = train(write_recipe(tmp_path, tiny, method="aot_unpaired", dataset_mixture=unpaired))
    resolved = json.loads((out / "recipe.json").read_text())["resolved"]
    assert resolved["data_format"] == "unpaired" and resolved["loss_type"] == "apo_zero_unpaired"
    assert json.loads((out / "run.json").read_text())["data_format"] == "unpaired"
    info = RunInfo.from_path(out)
    assert info.method == "aot_unpaired" and info.data_format == "unpaired"


@pytest.mark.parametrize("inside", ["", "sub"])
def test_output_dir_in_the_model_it_starts_from_is_refused(tiny, tmp_path, nothing_loads, inside):
    model = Path(tiny["base_model"])
    before = tree_digest(model)
    path = write_recipe(tmp_path, tiny, output_dir=str(model / inside) if inside else str(model))
    with pytest.raises(UserError, match=r"output_dir .* is model_name_or_path .* or inside it"):
        train(path)
    assert tree_digest(model) == before


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
    ({}, ["--max_steps", "0"], "key 'max_steps' must be >= 1 (or -1: train num_train_epochs), got 0"),
    ({}, ["--max_steps", "-1", "--num_train_epochs", "0"], "key 'num_train_epochs' must be a finite number > 0"),
    ({}, ["--beta", "0.1", "--beta=0.2"], "override(s) given more than once: ['--beta']"),
    ({"model_name_or_path": "./no/such/model"}, [], "model_name_or_path: no such folder './no/such/model'"),
    ({"model_name_or_path": "nobody/no-such-model"}, [], "no hub model 'nobody/no-such-model' in the local cache"),
])
def test_bad_values_fail_before_anything_loads(tiny, tmp_path, nothing_loads, changes, overrides, message):
    if changes.get("method") == "kto":
        changes["dataset_mixture"] = {"datasets": [{"data_files": {"train": str(tiny["unpaired_train"])},
                                                    "test_split": None}]}
    path = write_recipe(tmp_path, tiny, **changes)
    with pytest.raises(UserError) as err:
        train(path, overrides)
    assert str(err.value).startswith(path) and message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_an_empty_model_folder_is_named(tiny, tmp_path, nothing_loads):
    (tmp_path / "empty").mkdir()
    path = write_recipe(tmp_path, tiny, model_name_or_path=str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"folder '.*empty' is not a model: no config.json and no weight files"):
        train(path)


def test_a_dataset_smaller_than_one_batch_is_refused_before_the_model_loads(tiny, tmp_path, monkeypatch):
    rows = tmp_path / "three.jsonl"
    rows.write_text("\n".join(tiny["paired_train"].read_text().splitlines()[:3]) + "\n")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded"))
    path = write_recipe(tmp_path, tiny, per_device_train_batch_size=16,
                   dataset_mixture={"datasets": [{"data_files": {"train": str(rows)}, "test_split": None}]})
    with pytest.raises(UserError, match=r"train split has 3 row\(s\), fewer than one batch \(16"):
        train(path)
    assert not (tmp_path / "run").exists()


def test_cpu_threads_follow_model_size_and_omp(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with torch.device("meta"):  # a 7B-shaped model costs nothing on the meta device
        large = LlamaForCausalLM(LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4))
    assert small.num_parameters() < ONE_THREAD_BELOW_PARAMS < large.num_parameters()
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert set_cpu_threads(large, on_cpu=True) == 2  # a real model keeps torch's threads
        assert set_cpu_threads(small, on_cpu=False) == 2  # training on a GPU: untouched
        assert set_cpu_threads(small, on_cpu=True) == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins for a real model
        assert set_cpu_threads(large, on_cpu=True) == 2
        assert set_cpu_threads(small, on_cpu=True) == 1  # not for a small one: its weights would depend on it
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("changes,message", [
    ({"learning_rat": 1e-4}, "unknown key(s) ['learning_rat']"),
    ({"beta": "high"}, "key 'beta' expects"),
    ({"max_steps": "ten"}, "key 'max_steps' expects"),
    ({"model_name_or_path": None}, "key 'model_name_or_path' is required"),
    ({"dataset_mixture": None}, "key 'dataset_mixture' is required"),
    ({"method": "orpo"}, "key 'method' must be one of"),
    ({"aot_penalty": "cubic"}, "aot_penalty: unknown penalty 'cubic'"),
    ({"aot_sort": "bogo"}, "aot_sort: unknown sort 'bogo'"),
    ({"beta": 0.0}, "beta must be a finite number > 0"),
    ({"beta": -0.1}, "beta must be a finite number > 0"),
])
def test_bad_recipe_errors_name_key_and_file_before_loading(tiny, tmp_path, changes, message):
    path = write_recipe(tmp_path, tiny, **changes)
    with pytest.raises(ValueError) as err:
        train(path)
    assert str(err.value).startswith(path) and message in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing was loaded or written


@pytest.mark.slow
def test_secrets_in_a_recipe_env_never_reach_the_run_folder(tiny, tmp_path, monkeypatch):
    secret = "sk-test-5f2b9c0d1e-not-a-real-key"
    path = write_recipe(tmp_path, tiny, env={"OPENAI_API_KEY": secret})
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = train(path)
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    assert files and (Path(out) / "run.json").exists()
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaks, f"the secret was written to {leaks}"
    assert json.loads((Path(out) / "recipe.json").read_text())["recipe"]["env"] == {"OPENAI_API_KEY": "<redacted>"}


@pytest.mark.slow
def test_only_errors_before_training_are_recipe_errors(tiny, tmp_path, monkeypatch):
    """A ValueError from inside training is not reported as a bad recipe (aot-train would have
    cut it to one line); bad data found while building the trainer is."""
    from aot_handbook.errors import UserError
    from aot_handbook.trainers import AOTTrainer

    missing = {"datasets": [{"data_files": {"train": str(tmp_path / "missing.jsonl")}, "test_split": None}]}
    with pytest.raises(UserError, match="missing.jsonl"):
        train(write_recipe(tmp_path, tiny, dataset_mixture=missing))

    def fail(self, *args, **kwargs):
        raise ValueError("raised inside a training step")

    monkeypatch.setattr(AOTTrainer, "training_step", fail)
    with pytest.raises(ValueError, match="inside a training step") as err:
        train(write_recipe(tmp_path, tiny))
    assert not isinstance(err.value, UserError)


def test_output_dir_on_a_model_that_is_not_a_run_is_refused_unless_overwrite(tiny, tmp_path, nothing_loads):
    """Issue 30: output_dir on a downloaded model (not the one the run starts from) overwrote it."""
    import shutil

    from aot_handbook.recipe import parse_recipe
    from aot_handbook.training import check_paths

    model = tmp_path / "models" / "my-model"
    shutil.copytree(tiny["base_model"], model)
    before = tree_digest(model)
    path = write_recipe(tmp_path, tiny, output_dir=str(model))
    with pytest.raises(UserError, match=rf"output_dir '{model}' holds a model that is not a run of aot-handbook .*"
                                        r"--overwrite_output_dir true"):
        train(path)
    assert tree_digest(model) == before
    check_paths(parse_recipe(path, ["--overwrite_output_dir", "true"]))  # asked for: allowed
    (model / "fingerprint.json").write_text("{}")  # a run folder of ours: resume_decision decides
    check_paths(parse_recipe(path))
