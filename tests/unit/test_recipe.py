"""aot_handbook.recipe: a recipe's kind from its file name, one reader, and a training recipe parsed once
(overrides, types, ranges, the config class) with errors that name the key and the file."""

import dataclasses
import json
import os

import pytest

from aot_handbook.errors import UserError
from aot_handbook.methods import METHODS
from aot_handbook.plan import train
from aot_handbook.recipe import parse_recipe
from tests.helpers import multi_recipe, sort_scope_recipe, write_recipe


def test_overrides_bare_flags_lists_and_json(tiny, tmp_path):
    path = write_recipe(tmp_path, tiny)
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
    path = write_recipe(tmp_path, tiny, beta=0.1, **changes)
    with pytest.raises(ValueError) as err:
        parse_recipe(path, overrides)
    assert str(err.value).startswith(path) and message in str(err.value)


def test_method_override_picks_the_config_class(tiny, tmp_path):
    path = write_recipe(tmp_path, tiny)
    assert type(parse_recipe(path, ["--method=dpo"]).training) is METHODS["dpo"].config_class()
    assert parse_recipe(path, ["--method", "ipo"]).training.loss_type == ["ipo"]


def test_env_block_sets_the_environment(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("AOT_TEST_VARIABLE", raising=False)
    parse_recipe(write_recipe(tmp_path, tiny, env={"AOT_TEST_VARIABLE": 7}))
    assert os.environ["AOT_TEST_VARIABLE"] == "7"


def test_resolved_holds_every_key_json_safe_and_no_secret(tiny, tmp_path):
    r = parse_recipe(write_recipe(tmp_path, tiny), ["--hub_token", "secret-value"])
    resolved = r.resolved()
    fields = {f.name for obj in (r.recipe, r.model, r.training) for f in dataclasses.fields(obj) if f.init}
    assert fields - {"local_rank"} <= set(resolved) and resolved["data_format"] is None
    assert json.loads(json.dumps(resolved)) == resolved
    assert "secret-value" not in json.dumps(resolved)
    assert list(resolved) == sorted(resolved)


def test_unpaired_data_format_picks_the_kto_based_config(tiny, tmp_path):
    path = write_recipe(tmp_path, tiny, method="aot_unpaired")
    assert type(parse_recipe(path).training).__name__ == "AOTConfig"
    r = parse_recipe(path, data_format="unpaired")
    assert type(r.training) is METHODS["aot_unpaired"].config_class("unpaired")
    assert type(r.training).__name__ == "AOTUnpairedConfig" and r.resolved()["data_format"] == "unpaired"
    with pytest.raises(ValueError, match="data_format must be one of"):
        parse_recipe(path, data_format="pairs")


def test_a_recipe_that_is_not_text_is_named(tmp_path, nothing_loads):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00\x9f\x92\x96 binary")
    with pytest.raises(UserError, match=f"{path}: a recipe must be UTF-8 text"):
        train(str(path))


def test_weight_for_an_unlisted_attribute_is_refused_before_loading(tmp_path, tiny_multi):
    from aot_handbook.errors import UserError
    from aot_handbook.plan import train

    path = multi_recipe(tmp_path, tiny_multi, aot_attributes={"sum": 1.0, "style": 1.0})
    with pytest.raises(UserError, match="weight for attribute 'style', which the dataset_mixture does not list"):
        train(path)
    assert not (tmp_path / "run").exists()
    # a parse-time check, so `make validate-recipes` (which loads no data) refuses the recipe too
    from aot_handbook.tooling.validate import ValidationError, validate_recipe

    with pytest.raises(ValidationError, match="'style'"):
        validate_recipe(path)


def test_a_recipe_files_kind_is_its_name_and_one_reader_reads_them_all(tmp_path):
    from aot_handbook.recipe import parse_recipe, read_recipe, recipe_kind
    from tests.helpers import REPO

    kinds = {"recipes/tiny/aot_paired.yaml": "train", "recipes/tiny/sft.pairs.yaml": "pairs",
             "recipes/ablations/penalty.sweep.yaml": "sweep", "recipes/tiny/reproduce.grid.yaml": "grid",
             "recipes/eval/tiny.eval.yaml": "eval", "recipes/accelerate_configs/ddp.yaml": "accelerate",
             "a/b.yml": "train", "a/b.pairs.yml": "pairs"}
    assert {p: recipe_kind(p) for p in kinds} == kinds
    for path, kind in kinds.items():
        if (REPO / path).is_file():
            assert isinstance(read_recipe(REPO / path, kind), dict)
    with pytest.raises(UserError, match=r"sft.pairs.yaml: this is a pairs recipe \(by its file name\), not a "
                                        r"training recipe \(a training recipe's file name ends in .yaml\)"):
        parse_recipe(str(REPO / "recipes/tiny/sft.pairs.yaml"))
    empty = tmp_path / "empty.sweep.yaml"
    empty.write_text("")
    with pytest.raises(UserError, match="empty.sweep.yaml: a sweep must be a YAML mapping of keys to values"):
        read_recipe(empty)


# aot_sort_scope (configs.py, recipe.py): parsed, refused where it means nothing


@pytest.mark.parametrize("method", ["dpo", "ipo", "kto"])
def test_a_per_sample_loss_refuses_the_key_at_parse_time(tmp_path, method):
    """DPO, IPO and KTO average per-sample terms: accumulation already gives the optimizer batch's gradient,
    and there is no sort whose batch the key could set. Named, with the reason, before anything loads."""
    with pytest.raises(ValueError, match=r"recipe.yaml: key\(s\) \['aot_sort_scope'\] apply to the AOT methods "
                                         rf"only, not to method '{method}' \({method}'s loss is a mean of per-sample"):
        parse_recipe(sort_scope_recipe(tmp_path, method=method, aot_sort_scope="optimizer_batch"))
    with pytest.raises(ValueError, match=r"\['aot_sort_scope'\] apply to the AOT methods only"):  # as an override
        parse_recipe(sort_scope_recipe(tmp_path, method=method), ["--aot_sort_scope", "micro_batch"])


def test_an_unknown_scope_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"recipe.yaml: aot_sort_scope must be one of \['optimizer_batch', "
                                         r"'micro_batch'\], got 'global'"):
        parse_recipe(sort_scope_recipe(tmp_path, method="aot_paired", aot_sort_scope="global"))


@pytest.mark.parametrize("method", ["aot_paired", "aot_unpaired", "aot_multi"])
def test_aot_methods_default_to_the_optimizer_batch(tmp_path, method):
    extra = {}
    if method == "aot_multi":
        rows = tmp_path / "rows.jsonl"
        rows.write_text('{"prompt": "1+1=", "completion": "2", "a": 1}\n')
        extra = {"aot_attributes": {"a": 1.0},
                 "dataset_mixture": {"datasets": [{"data_files": {"train": str(rows)}, "attributes": {"a": {}}}]}}
    recipe = parse_recipe(sort_scope_recipe(tmp_path, method=method, gradient_accumulation_steps=4, **extra))
    assert recipe.training.aot_sort_scope == "optimizer_batch"
    assert recipe.training.sort_batch(ranks=1) == 8 * 4
    assert recipe.training.sort_batch(ranks=2) == 2 * 8 * 4  # aot_global_sort unset: on with several ranks


def test_unpaired_micro_batch_of_one_is_allowed_only_when_the_step_is_sorted(tmp_path):
    with pytest.raises(ValueError, match="'per_device_train_batch_size' must be >= 2 for method 'aot_unpaired'"):
        parse_recipe(sort_scope_recipe(tmp_path, method="aot_unpaired", per_device_train_batch_size=1,
                             gradient_accumulation_steps=4, aot_sort_scope="micro_batch"))
    recipe = parse_recipe(sort_scope_recipe(tmp_path, method="aot_unpaired", per_device_train_batch_size=1,
                                  gradient_accumulation_steps=4))
    assert recipe.training.sort_batch() == 4


def test_a_recipe_key_given_twice_is_refused_naming_it_and_both_lines(tiny, tmp_path, nothing_loads):
    """YAML alone keeps the last of two keys, silently; a duplicate command-line override is refused, so is this."""
    path = write_recipe(tmp_path, tiny, max_steps=20)
    text = open(path).read() + "max_steps: 1\n"
    open(path, "w").write(text)
    first = text.splitlines().index("max_steps: 20") + 1
    with pytest.raises(UserError, match=rf"key 'max_steps' is given twice, on line {first} and line "
                                        rf"{len(text.splitlines())}"):
        train(path)
    assert not (tmp_path / "run").exists()
