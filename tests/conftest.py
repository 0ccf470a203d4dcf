import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The offline tiny assets (tokenizer, ~1M-parameter Llama, task data), built once per session."""
    from aot_handbook.tiny import ensure_tiny_assets

    return ensure_tiny_assets(tmp_path_factory.mktemp("tiny"))
