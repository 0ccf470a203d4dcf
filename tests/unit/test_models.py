"""aot_handbook.models: the base-model registry is what recipes, tables and validation read."""

import yaml

from aot_handbook.models import BASE_MODELS, model_key
from aot_handbook.run_folder import base_model_key, recipe_chat_template
from tests.helpers import REPO


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
    from aot_handbook.tooling.validate import model_family

    for key, model in BASE_MODELS.items():
        assert model_key(model.hub_id.upper()) == base_model_key(model.hub_id) == key  # the hub ignores case
        assert BASE_NAMES[key] == model.name
        assert model_family(model.hub_id) == model.family
        assert recipe_chat_template(key) == model.recipe_template
    assert model_key("some/Other-Model") == "other-model"
