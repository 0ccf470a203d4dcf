"""The `make train` path end to end: assets, the required SFT stage, AOT, run folder, summary."""

import json
from pathlib import Path

import pytest

from aot_handbook.errors import UserError
from aot_handbook.plan import train
from aot_handbook.run_folder import is_complete
from tests.helpers import copy_tiny_recipes

pytestmark = pytest.mark.slow  # every test here: make test-fast leaves them out


def test_make_train_default_runs_end_to_end(tmp_path, monkeypatch, capsys):
    copy_tiny_recipes(tmp_path, steps={True: 20, False: 4})
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
    with pytest.raises(UserError,
                       match=r"holds a finished run of another configuration; changed: max_steps: 4 -> 1"):
        train("recipes/tiny/aot_unpaired.yaml", ["--max_steps", "1", "--summary", "false"])
    train("recipes/tiny/aot_unpaired.yaml", ["--max_steps", "1", "--summary", "false", "--output_dir", "runs/other"])
    assert is_complete("runs/other")
    assert (Path("runs/tiny-sft") / "run.json").stat().st_mtime == sft_mtime
