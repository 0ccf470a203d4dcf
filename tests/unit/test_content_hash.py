"""content_hash.model_content_hash: a byte-identical copy is the same model, a changed weight file is not, and
the cache never hands out a digest for bytes it did not hash."""

import json
import os
import shutil
from pathlib import Path

import pytest

from aot_handbook.content_hash import HashCache, file_sha256, model_content_hash


@pytest.fixture
def model(tiny, tmp_path):
    """A copy of the tiny base model (config, tokenizer, model.safetensors) to edit."""
    return Path(shutil.copytree(tiny["base_model"], tmp_path / "model"))


def _flip_byte(path: Path, at: int = -100, keep_times: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_times:  # what a careless "restore" or a same-second rewrite looks like to size + mtime
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_copy_is_the_same_model_and_a_changed_weight_is_not(model, tmp_path):
    cache = tmp_path / "cache.json"
    first = model_content_hash(model, cache=cache)
    copy = shutil.copytree(model, tmp_path / "elsewhere" / "restored")  # new path, new inode, new mtime
    assert model_content_hash(copy, cache=cache) == first
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("{", '{"_name_or_path": "x",', 1))
    (copy / "training_args.bin").write_bytes(b"not weights")  # what Trainer.save_model adds beside the weights
    (copy / "README.md").write_text("notes")
    assert model_content_hash(copy, cache=cache) == first  # only weight files count
    _flip_byte(copy / "model.safetensors")
    assert model_content_hash(copy, cache=cache) != first
    _flip_byte(copy / "model.safetensors")  # flipped back: the same bytes again
    assert model_content_hash(copy, cache=cache) == first


def test_an_in_place_edit_with_size_and_mtime_restored_is_still_seen(model, tmp_path):
    cache = tmp_path / "cache.json"
    first = model_content_hash(model, cache=cache)
    _flip_byte(model / "model.safetensors", keep_times=True)
    assert model_content_hash(model, cache=cache) != first


def test_the_cache_is_used_for_an_unchanged_file_and_only_for_it(model, tmp_path):
    """Planting a wrong digest under a file's exact key shows the cache is read (no re-hash); touching the
    file shows a stale entry is not."""
    cache = tmp_path / "cache.json"
    honest = model_content_hash(model, cache=cache)
    entries = json.loads(cache.read_text())["entries"]
    (key,) = [k for k in entries if json.loads(k)[0] == str((model / "model.safetensors").resolve())]
    assert entries[key] == file_sha256(model / "model.safetensors")
    entries[key] = "0" * 64
    cache.write_text(json.dumps({"version": 1, "entries": entries}))
    assert model_content_hash(model, cache=cache) != honest  # read from the cache, not re-hashed
    os.utime(model / "model.safetensors")  # a new mtime (and ctime): the planted entry no longer applies
    assert model_content_hash(model, cache=cache) == honest
    assert "0" * 64 not in json.loads(cache.read_text())["entries"].values()  # dropped when the cache was written


def test_adapters_count_their_config_but_not_where_the_base_model_was(model, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    shutil.copy(model / "model.safetensors", adapter / "adapter_model.safetensors")
    cfg = {"base_model_name_or_path": "/data/base", "lora_alpha": 16, "r": 8, "peft_type": "LORA"}
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    cache = HashCache(tmp_path / "cache.json")
    first = model_content_hash(adapter, cache=cache)
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "/mnt/base"}))
    assert model_content_hash(adapter, cache=cache) == first
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 32}))  # scales the weights
    assert model_content_hash(adapter, cache=cache) != first


def test_a_folder_without_weights_is_an_error_naming_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=f"{tmp_path}: no weight files"):
        model_content_hash(tmp_path, cache=tmp_path / "cache.json")


def test_an_unreadable_or_unwritable_cache_only_costs_time(model, tmp_path):
    bad = tmp_path / "cache.json"
    bad.write_text("{not json")
    first = model_content_hash(model, cache=bad)
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the cache's folder cannot be made (works as root too, unlike a read-only folder)
    assert model_content_hash(model, cache=blocked / "cache.json") == first
    assert not (blocked / "cache.json").exists()
