"""One resolved config, one method registry, one base-model registry (issue 16).

A recipe is parsed once (recipe.py); the run folder keeps the resolved config and everything downstream
reads it; the method and base-model registries are what the callers use."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml
from transformers import Trainer

from aot_handbook.evaluation.common import RunInfo, base_model_key, recipe_chat_template
from aot_handbook.methods import METHODS, get_method
from aot_handbook.models import BASE_MODELS, model_key
from aot_handbook.recipe import parse_recipe
from aot_handbook.run import train
from tests.test_reliability import _recipe

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ parsing


def test_overrides_bare_flags_lists_and_json(tiny, tmp_path):
    path = _recipe(tmp_path, tiny)
    mixture = {"datasets": [{"data_files": {"train": str(tiny["unpaired_train"])}, "test_split": None}]}
    r = parse_recipe(path, ["--use_peft", "--lora_target_modules", "q_proj", "v_proj", "--beta=0.25",
                            "--dataset_mixture", json.dumps(mixture), "--no_summary"])
    assert r.model.use_peft is True  # a bare boolean flag means true
    assert r.model.lora_target_modules == ["q_proj", "v_proj"]
    assert r.training.beta == 0.25 and r.recipe.dataset_mixture == mixture
    assert r.recipe.summary is False
    resolved = r.resolved()
    assert resolved["use_peft"] is True and resolved["beta"] == 0.25 and resolved["dataset_mixture"] == mixture
    plain = parse_recipe(path).resolved()
    assert plain["use_peft"] is False and plain["beta"] == 0.01  # the defaults, where nothing overrides them


@pytest.mark.parametrize("changes,overrides,message", [
    ({"not_a_key": 1, "learning_rat": 0.1}, [], "unknown key(s) ['learning_rat', 'not_a_key'] for method "
                                               "'aot_paired'"),
    ({"method": "sft"}, [], "unknown key(s) ['beta']"),  # a key of another method's config
    ({}, ["--not_a_key", "1"], "unknown command-line override(s) ['--not_a_key', '1']"),
    ({}, ["--learning", "0.1"], "unknown command-line override(s) ['--learning', '0.1']"),  # no prefix matching
    ({}, ["--method", "orpo"], "key 'method' must be one of"),
    ({}, ["--dataset_mixture", "[1, 2]"], "override --dataset_mixture must be a JSON object"),
    ({"env": ["A=1"]}, [], "key 'env' must be a mapping"),
    ({}, ["--beta", "high"], "command-line override: argument --beta: invalid float value: 'high'"),
    ({}, ["--use_peft", "maybe"], "command-line override: argument --use_peft/--use-peft: Truthy value expected"),
])
def test_bad_keys_and_overrides_name_the_file(tiny, tmp_path, changes, overrides, message):
    path = _recipe(tmp_path, tiny, beta=0.1, **changes)
    with pytest.raises(ValueError) as err:
        parse_recipe(path, overrides)
    assert str(err.value).startswith(path) and message in str(err.value)


def test_method_override_picks_the_config_class(tiny, tmp_path):
    path = _recipe(tmp_path, tiny)
    assert type(parse_recipe(path, ["--method=dpo"]).training) is METHODS["dpo"].config_class()
    assert parse_recipe(path, ["--method", "ipo"]).training.loss_type == ["ipo"]


def test_env_block_sets_the_environment(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("AOT_TEST_VARIABLE", raising=False)
    parse_recipe(_recipe(tmp_path, tiny, env={"AOT_TEST_VARIABLE": 7}))
    assert os.environ["AOT_TEST_VARIABLE"] == "7"


def test_resolved_holds_every_key_json_safe_and_no_secret(tiny, tmp_path):
    r = parse_recipe(_recipe(tmp_path, tiny), ["--hub_token", "secret-value"])
    resolved = r.resolved()
    fields = {f.name for obj in (r.recipe, r.model, r.training) for f in dataclasses.fields(obj) if f.init}
    assert fields - {"local_rank"} <= set(resolved) and resolved["data_format"] is None
    assert json.loads(json.dumps(resolved)) == resolved
    assert "secret-value" not in json.dumps(resolved)
    assert list(resolved) == sorted(resolved)


def test_unpaired_data_format_picks_the_kto_based_config(tiny, tmp_path):
    path = _recipe(tmp_path, tiny, method="aot_unpaired")
    assert type(parse_recipe(path).training).__name__ == "AOTConfig"
    r = parse_recipe(path, data_format="unpaired")
    assert type(r.training) is METHODS["aot_unpaired"].config_class("unpaired")
    assert type(r.training).__name__ == "AOTUnpairedConfig" and r.resolved()["data_format"] == "unpaired"
    with pytest.raises(ValueError, match="data_format must be one of"):
        parse_recipe(path, data_format="pairs")


# ------------------------------------------------------------------ the run folder


def test_bare_flag_override_is_reported_by_runinfo(tiny, tmp_path):
    """``--use_peft`` (no value) trains a LoRA adapter, and the run is reported with use_peft true."""
    out = train(_recipe(tmp_path, tiny, learning_rate=1e-3), ["--use_peft", "--lora_r", "4"])
    assert (out / "adapter_config.json").is_file()
    info = RunInfo.from_path(out)
    assert info.recipe["use_peft"] is True and info.adapter == str(out)
    assert info.recipe["lora_r"] == 4
    meta = json.loads((out / "recipe.json").read_text())
    assert meta["overrides"] == ["--use_peft", "--lora_r", "4"]  # provenance kept
    assert meta["resolved"]["data_format"] == "paired"
    assert json.loads((out / "run.json").read_text())["data_format"] == "paired"


def test_data_format_is_decided_from_the_loaded_rows(tiny, tmp_path):
    unpaired = {"datasets": [{"data_files": {"train": str(tiny["unpaired_train"])}, "test_split": None}]}
    out = train(_recipe(tmp_path, tiny, method="aot_unpaired", dataset_mixture=unpaired))
    resolved = json.loads((out / "recipe.json").read_text())["resolved"]
    assert resolved["data_format"] == "unpaired" and resolved["loss_type"] == "apo_zero_unpaired"
    assert json.loads((out / "run.json").read_text())["data_format"] == "unpaired"
    info = RunInfo.from_path(out)
    assert info.method == "aot_unpaired" and info.data_format == "unpaired"


def _run_folder(root: Path, name: str, meta: dict) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "recipe.json").write_text(json.dumps(meta))
    return run


def test_seeds_share_a_config_id_other_settings_do_not(tiny, tmp_path):
    path = _recipe(tmp_path, tiny)
    ids = {}
    for name, overrides in (("a", ["--seed", "1", "--output_dir", "x/a"]), ("b", ["--seed", "2", "--run_name", "b"]),
                            ("c", ["--seed", "1", "--beta", "0.5"])):
        r = parse_recipe(path, overrides)
        run = _run_folder(tmp_path / "runs", name, {"path": path, "overrides": overrides, "recipe": r.raw,
                                                    "resolved": r.resolved()})
        ids[name] = RunInfo.from_path(run).config_id
    assert ids["a"] == ids["b"] != ids["c"]


def test_an_old_run_folder_without_resolved(tiny, tmp_path):
    recipe = yaml.safe_load(Path(_recipe(tmp_path, tiny)).read_text())
    plain = _run_folder(tmp_path, "old", {"path": "r.yaml", "overrides": [], "recipe": recipe})
    assert RunInfo.from_path(plain).recipe == recipe  # no overrides: its YAML is what ran
    with_flags = _run_folder(tmp_path, "old-peft", {"path": "r.yaml", "overrides": ["--use_peft"], "recipe": recipe})
    with pytest.raises(ValueError, match=r"old-peft/recipe.json: written by an older version .*--use_peft"):
        RunInfo.from_path(with_flags)


# ------------------------------------------------------------------ the registries


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_parses_with_its_classes(tiny, tmp_path, name):
    method = METHODS[name]
    data = tiny["unpaired_train"] if method.data == "unpaired" else tiny["paired_train"]
    entry = {"data_files": {"train": str(data)}, "test_split": None}
    extra = {}
    if name == "aot_multi":  # its required key, naming an attribute the dataset lists
        extra, entry = {"aot_attributes": {"good": 1.0}}, {**entry, "attributes": {"good": {"score": "score"}}}
    path = _recipe(tmp_path, tiny, method=name, per_device_train_batch_size=4, **extra,
                   dataset_mixture={"datasets": [entry]})
    r = parse_recipe(path)
    assert type(r.training) is method.config_class()
    for fmt in ("paired", "unpaired"):
        assert issubclass(method.trainer_class(fmt), Trainer)
    if method.loss_type:
        loss_type = r.training.loss_type
        assert method.loss_type in (loss_type if isinstance(loss_type, list) else [loss_type])
    if method.nll_key:
        assert hasattr(r.training, method.nll_key)
    assert method.aot == hasattr(r.training, "aot_penalty")


def test_the_tables_and_sweeps_use_the_method_registry():
    from aot_handbook.sweep import recipe_keys
    from aot_handbook.tables import METHODS as TABLE_METHODS

    assert TABLE_METHODS == [(m.label, m.name) for m in METHODS.values() if m.label]
    assert [name for _, name in TABLE_METHODS] == ["aot_paired", "aot_unpaired", "dpo", "kto", "ipo"]
    assert "aot_positive_share" in recipe_keys("aot_unpaired") and "nll_weight" in recipe_keys("kto")
    assert "aot_share_prompt" in recipe_keys("aot_unpaired")  # a key of the paired-format AOTConfig too
    with pytest.raises(ValueError, match=r"x.yaml: key 'method' must be one of"):
        get_method("orpo", "x.yaml")


def test_every_model_folder_of_recipes_is_a_registered_base_model():
    folders = {p.parent.name for p in (REPO / "recipes").glob("*/aot_paired.yaml")} - {"tiny"}
    assert folders == set(BASE_MODELS)
    for key, model in BASE_MODELS.items():
        for recipe in (REPO / "recipes" / key).glob("*.yaml"):
            raw = yaml.safe_load(recipe.read_text())
            assert raw["model_name_or_path"] == model.hub_id, recipe
            assert raw.get("chat_template") == model.recipe_template, recipe


def test_callers_read_the_base_model_registry():
    from aot_handbook.tables import BASE_NAMES
    from aot_handbook.validate import model_family

    for key, model in BASE_MODELS.items():
        assert model_key(model.hub_id.upper()) == base_model_key(model.hub_id) == key  # the hub ignores case
        assert BASE_NAMES[key] == model.name
        assert model_family(model.hub_id) == model.family
        assert recipe_chat_template(key) == model.recipe_template
    assert model_key("some/Other-Model") == "other-model"


def test_a_sweep_value_argparse_cannot_convert_names_the_run(tiny, tmp_path):
    from aot_handbook.sweep import SweepError, expand

    base = _recipe(tmp_path, tiny)
    sweep = tmp_path / "bad.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": base, "grid": {"per_device_train_batch_size": ["two"]}}))
    with pytest.raises(SweepError, match=r"bad.sweep.yaml: run .*: .*argument --per_device_train_batch_size.*"
                                         r"invalid int value: 'two'"):
        expand(str(sweep))
