"""aot_handbook.methods: the method registry is what recipes, tables and sweeps use."""

import pytest
from transformers import Trainer

from aot_handbook.methods import METHODS, get_method
from aot_handbook.recipe import parse_recipe
from tests.helpers import write_recipe


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_parses_with_its_classes(tiny, tmp_path, name):
    method = METHODS[name]
    data = tiny["unpaired_train"] if method.data == "unpaired" else tiny["paired_train"]
    entry = {"data_files": {"train": str(data)}, "test_split": None}
    extra = {}
    if name == "aot_multi":  # its required key, naming an attribute the dataset lists
        extra, entry = {"aot_attributes": {"good": 1.0}}, {**entry, "attributes": {"good": {"score": "score"}}}
    path = write_recipe(tmp_path, tiny, method=name, per_device_train_batch_size=4, **extra,
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
    from aot_handbook.tables import METHODS as TABLE_METHODS
    from aot_handbook.tooling.sweep import recipe_keys

    assert TABLE_METHODS == [(m.label, m.name) for m in METHODS.values() if m.label]
    assert [name for _, name in TABLE_METHODS] == ["aot_paired", "aot_unpaired", "dpo", "kto", "ipo"]
    assert "aot_positive_share" in recipe_keys("aot_unpaired") and "nll_weight" in recipe_keys("kto")
    assert "aot_share_prompt" in recipe_keys("aot_unpaired")  # a key of the paired-format AOTConfig too
    with pytest.raises(ValueError, match=r"x.yaml: key 'method' must be one of"):
        get_method("orpo", "x.yaml")
