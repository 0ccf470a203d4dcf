"""aot_handbook.tooling.validate: every kind of recipe file checked offline, naming the file and the key."""

import os

import datasets  # noqa: E402
import pytest

from aot_handbook.tooling.validate import (  # noqa: E402
    ValidationError,
    validate_file,
    validate_paths,
    validate_recipe,
)
from tests.helpers import REPO, sort_scope_recipe, write_validation_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets.disable_progress_bars()


def test_make_validate_recipes_checks_pairs_recipes(tmp_path):

    assert validate_file(REPO / "recipes" / "tiny" / "sft.pairs.yaml") == "pairs"
    bad = tmp_path / "bad.pairs.yaml"
    pairs = (REPO / "recipes" / "tiny" / "sft.pairs.yaml").read_text()
    bad.write_text(pairs.replace("num_samples: 8", "num_samples: 1"))
    with pytest.raises(ValidationError, match=r"pairs.yaml: key 'num_samples' must be >= 2"):
        validate_file(bad)


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
@pytest.mark.parametrize("changes,key", [
    ({"learning_rat": 1e-5}, "learning_rat"),
    ({"method": "aot_fancy"}, "method"),
    ({"aot_penalty": "cubic"}, "aot_penalty"),
    ({"aot_sort": "bubble"}, "aot_sort"),
    ({"lora_target_modules": ["q_proj", "query_key_value"]}, "lora_target_modules"),
    ({"dataset_mixture": {"datasets": [{"path": "x/y", "wieght": 0.5}]}}, "wieght"),
    ({"chat_template": "{% for m in messages %}{{ m['content'] }"}, "chat_template"),
])
def test_bad_recipe_fails_naming_file_and_key(tmp_path, changes, key):
    path = write_validation_recipe(tmp_path, **changes)
    with pytest.raises(ValueError) as err:
        validate_recipe(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_validate_prints_the_sort_batch_and_warns_for_micro_batch(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    ok = sort_scope_recipe(tmp_path / "a", method="aot_paired", per_device_train_batch_size=2,
                           gradient_accumulation_steps=16, aot_global_sort=False)
    micro = sort_scope_recipe(tmp_path / "b", method="aot_paired", per_device_train_batch_size=4,
                              gradient_accumulation_steps=8, aot_sort_scope="micro_batch")
    dpo = sort_scope_recipe(tmp_path / "c", method="dpo", gradient_accumulation_steps=8)
    validate_paths([ok, micro, dpo])
    out, err = capsys.readouterr()
    assert f"{ok}  [sort batch: 2 x 16 = 32 per rank, each rank alone]" in out
    assert f"{micro}  [sort batch: R x 4 x 1 = 4 x R, R ranks together]" in out
    assert f"ok  train       {dpo}\n" in out  # no sort: nothing to print
    assert f"warning: {micro}: aot_sort_scope: micro_batch with gradient_accumulation_steps 8" in err
    assert ok not in err and dpo not in err
