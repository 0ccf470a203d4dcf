"""Bad recipes fail fast and clearly; secrets stay out of run folders; concurrent builds don't collide."""

import hashlib
import json
import subprocess
import sys
from multiprocessing import get_context
from pathlib import Path

import pytest
import yaml

from aot_handbook.run import train

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, tiny, **changes):
    recipe = {
        "method": "aot_paired", "model_name_or_path": str(tiny["base_model"]), "dtype": "float32",
        "dataset_mixture": {"datasets": [{"data_files": {"train": str(tiny["paired_train"])}, "test_split": None}]},
        "bf16": False, "use_cpu": True, "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no",
        "max_steps": 1, "per_device_train_batch_size": 4, "summary": False, "output_dir": str(tmp_path / "run"),
    }
    recipe.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del recipe[key]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


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
    path = _recipe(tmp_path, tiny, **changes)
    with pytest.raises(ValueError) as err:
        train(path)
    assert str(err.value).startswith(path) and message in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing was loaded or written


def test_train_script_exits_non_zero_with_the_message(tiny, tmp_path):
    path = _recipe(tmp_path, tiny, aot_penalty="cubic")
    done = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "train", path], capture_output=True, text=True)
    assert done.returncode != 0
    assert f"error: {path}: aot_penalty: unknown penalty 'cubic'" in done.stderr
    bad_override = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "train", path, "--aot_penalty",
                                   "logistic",
                                   "--no_such_key", "1"], capture_output=True, text=True)
    assert bad_override.returncode != 0 and "--no_such_key" in bad_override.stderr


def test_secrets_in_a_recipe_env_never_reach_the_run_folder(tiny, tmp_path, monkeypatch):
    secret = "sk-test-5f2b9c0d1e-not-a-real-key"
    path = _recipe(tmp_path, tiny, env={"OPENAI_API_KEY": secret})
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = train(path)
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    assert files and (Path(out) / "run.json").exists()
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaks, f"the secret was written to {leaks}"
    assert json.loads((Path(out) / "recipe.json").read_text())["recipe"]["env"] == {"OPENAI_API_KEY": "<redacted>"}


def _build(root):
    from aot_handbook.tiny import ensure_tiny_assets

    paths = ensure_tiny_assets(root)
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items() if p.is_file()}


def test_two_processes_building_the_same_cache_agree(tmp_path):
    with get_context("spawn").Pool(2) as pool:
        first, second = pool.map(_build, [str(tmp_path / "shared")] * 2)
    alone = _build(str(tmp_path / "alone"))
    assert first == second == alone
    leftovers = [p.name for p in (tmp_path / "shared").rglob(".*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_errors_during_training_keep_their_traceback(tiny, tmp_path):
    """aot-train shortens recipe errors to one line, but not an error raised while training."""
    path = _recipe(tmp_path, tiny, learning_rate=1e30, max_steps=10, logging_steps=1)  # overflows at step 2
    done = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "train", path], capture_output=True, text=True)
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "FloatingPointError" in done.stderr


def test_only_errors_before_training_are_recipe_errors(tiny, tmp_path, monkeypatch):
    """A ValueError from inside training is not reported as a bad recipe (aot-train would have
    cut it to one line); bad data found while building the trainer is."""
    from aot_handbook.run import RecipeError
    from aot_handbook.trainers import AOTTrainer

    missing = {"datasets": [{"data_files": {"train": str(tmp_path / "missing.jsonl")}, "test_split": None}]}
    with pytest.raises(RecipeError, match="missing.jsonl"):
        train(_recipe(tmp_path, tiny, dataset_mixture=missing))

    def fail(self, *args, **kwargs):
        raise ValueError("raised inside a training step")

    monkeypatch.setattr(AOTTrainer, "training_step", fail)
    with pytest.raises(ValueError, match="inside a training step") as err:
        train(_recipe(tmp_path, tiny))
    assert not isinstance(err.value, RecipeError)
