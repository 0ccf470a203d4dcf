"""`aot-reproduce recipes/tiny/graded/reproduce.grid.yaml --quick` end to end: the fair tuning (every cell on the
validation prompts), the chosen cells on the held-out prompts, the report's claims G1-G5, and a resumed rerun."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # 24 + 6 runs of 3 steps and a short SFT stage: minutes


def test_quick_graded_grid_tunes_then_judges_the_claims(tmp_path, monkeypatch):
    for sub in ("recipes/tiny", "recipes/eval"):  # the real recipes, spec and eval recipes; a short SFT stage
        shutil.copytree(REPO / sub, tmp_path / sub)
    sft = tmp_path / "recipes" / "tiny" / "sft.yaml"
    sft.write_text(yaml.safe_dump({**yaml.safe_load(sft.read_text()), "max_steps": 100}))
    monkeypatch.chdir(tmp_path)
    command = [sys.executable, "-m", "aot_handbook.cli", "reproduce", "recipes/tiny/graded/reproduce.grid.yaml",
               "--quick"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    results = Path("results/reproduce-tiny-graded-quick")
    tuning = json.loads((results / "tuning.json").read_text())
    assert len(tuning["cells"]) == 24 and all(c["scores"] for c in tuning["cells"]) and not tuning["unscored"]
    assert {Path(b).stem for b in tuning["chosen"]} == {"aot_paired", "aot_unpaired", "dpo", "ipo", "kto",
                                                          "nll_control"}
    assert len(list(results.glob("tune/*/tiny_graded_val.json"))) == 24 + 1  # every cell and the SFT start
    held_out = sorted(p.parent.name for p in results.glob("*/tiny_graded.json"))
    assert len(held_out) == 6 + 1 and "tiny-sft" in held_out
    for base, cell in tuning["chosen"].items():  # each chosen cell's held-out run is its tuning run, evaluated
        run = next(p for p in held_out if p.startswith(f"graded-{Path(base).stem}-"))
        recipe = json.loads(Path("runs/reproduce-tiny-graded-quick", run, "recipe.json").read_text())["resolved"]
        assert all(recipe[k] == v for k, v in cell.items()) and recipe["max_steps"] == 3
    claims = (results / "claims-graded.md").read_text()
    assert "chosen answers right in 0.0%" in claims
    for row in ("| SFT start | - | 1 |", "| chosen answers | - | 1 | 0.0 ± 0.0", "| AOT paired | beta ",
                "| NLL control | learning_rate "):
        assert row in claims, row
    for title in ("## G1.", "## G2.", "## G3.", "## G4.", "## G5."):
        assert title in claims
    verdicts = [line for line in claims.splitlines() if line.startswith("- AOT ")]
    assert len(verdicts) == 2 + 2 + 2 + 6
    assert all(line.count("held") + line.count("reversed") + line.count("not significant") == 2 for line in verdicts)

    # Resumable: a second call trains and evaluates nothing, and writes the same report.
    stamps = {p: p.stat().st_mtime_ns for p in Path("runs/reproduce-tiny-graded-quick").glob("*/run.json")}
    assert len(stamps) == 24
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (results / "claims-graded.md").read_text() == claims
