"""aot_handbook.model_utils: a model or tokenizer that fails to load is named."""

import pytest


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
