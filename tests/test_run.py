"""The `make train` path end to end: assets, the required SFT stage, AOT, run folder, summary."""

import json
from pathlib import Path

import pytest
import yaml

from aot_handbook.run import RecipeError, is_complete, train

REPO = Path(__file__).resolve().parents[1]


def _tiny_recipes(tmp_path, steps):
    """The real tiny recipes, shortened, in a scratch working directory."""
    (tmp_path / "recipes" / "tiny").mkdir(parents=True)
    for path in (REPO / "recipes" / "tiny").glob("*.yaml"):
        recipe = yaml.safe_load(path.read_text())
        if "method" not in recipe:  # reproduce.yaml: make reproduce-tiny's grid, not a recipe
            continue
        recipe.update(max_steps=steps[recipe["method"] == "sft"], logging_steps=1)
        (tmp_path / "recipes" / "tiny" / path.name).write_text(yaml.safe_dump(recipe))


def test_make_train_default_runs_end_to_end(tmp_path, monkeypatch, capsys):
    _tiny_recipes(tmp_path, steps={True: 20, False: 4})
    monkeypatch.chdir(tmp_path)
    out = train("recipes/tiny/aot_unpaired.yaml")
    assert out == Path("runs/tiny-aot_unpaired")
    assert is_complete("runs/tiny-sft") and is_complete(out)  # the SFT stage ran first, by itself

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss"].startswith("aot_unpaired (AOT, penalty=logistic, sort=hard")
    assert set(metrics["task_accuracy"]) == {"aligned", "reference"}
    assert 0 <= metrics["task_accuracy"]["aligned"]["accuracy"] <= 1
    h = metrics["heldout"]
    assert 0 <= h["reward_accuracy"] <= 1 and 0 <= h["margins_fsd"]["fsd_violation_share"] <= 1
    for png in metrics["plots"].values():
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "log_history.json").read_text())
    assert any("aot/fsd_violation_share" in h for h in history)
    assert json.loads((out / "recipe.json").read_text())["recipe"]["method"] == "aot_unpaired"
    assert (out / "model.safetensors").exists()
    printed = capsys.readouterr().out
    assert "Summary (held-out data)" in printed and "task accuracy, aligned" in printed

    # A second run with the SFT stage present does not retrain it; other settings go to another folder
    # (the finished run is not retrained in place with them, see test_identity.py).
    sft_mtime = (Path("runs/tiny-sft") / "run.json").stat().st_mtime
    with pytest.raises(RecipeError,
                       match=r"holds a finished run of another configuration; changed: max_steps: 4 -> 1"):
        train("recipes/tiny/aot_unpaired.yaml", ["--max_steps", "1", "--summary", "false"])
    train("recipes/tiny/aot_unpaired.yaml", ["--max_steps", "1", "--summary", "false", "--output_dir", "runs/other"])
    assert is_complete("runs/other")
    assert (Path("runs/tiny-sft") / "run.json").stat().st_mtime == sft_mtime


def test_bad_recipe_fails_before_anything_loads(tmp_path, monkeypatch):
    _tiny_recipes(tmp_path, steps={True: 1, False: 1})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"recipes/tiny/aot_unpaired.yaml: .*'aot_penalty'|aot_penalty: unknown"):
        train("recipes/tiny/aot_unpaired.yaml", ["--aot_penalty", "cubic"])
    assert not Path(".cache").exists() and not Path("runs").exists()


@pytest.mark.parametrize("method", ["aot_paired", "dpo", "ipo", "kto"])
def test_every_tiny_recipe_trains(tmp_path_factory, monkeypatch, method):
    """`make train RECIPE=recipes/tiny/<method>.yaml` for the other methods (the SFT stage trained once)."""
    work = tmp_path_factory.getbasetemp() / "tiny-methods"
    if not work.exists():
        _tiny_recipes(work, steps={True: 10, False: 2})
    monkeypatch.chdir(work)
    out = train(f"recipes/tiny/{method}.yaml", ["--precompute_ref_log_probs", "false", "--summary", "false"])
    assert is_complete(out) and (out / "model.safetensors").exists()
    losses = [h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert len(losses) == 2 and all(x == x for x in losses)  # two real steps, no NaN
