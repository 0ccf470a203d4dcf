"""`make reproduce-tiny QUICK=1` end to end: the quick grid of both regimes, its report, and a resumed rerun."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import scratch_grid

pytestmark = pytest.mark.slow  # every test here: make test-fast leaves them out


def test_quick_grid_end_to_end_and_resumes(tmp_path, monkeypatch):
    # 200 SFT steps: the on-policy data stage needs answers both right and wrong (150 steps: 17 of 512 right;
    # 20 steps: none, and then no pairs and no positives to train on)
    scratch_grid(tmp_path, monkeypatch, sft_steps=200)
    command = [sys.executable, "-m", "aot_handbook.cli", "reproduce", "recipes/tiny/reproduce.grid.yaml", "--quick"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    results = Path("results/reproduce-tiny-quick")
    for name in ("tiny1", "tiny7", "tiny10", "tiny-batch", "tiny-penalty", "tiny-sort-scope"):
        for ext in ("md", "csv", "tex"):
            assert (results / "tables" / f"table{name}.{ext}").is_file()
    table1 = (results / "tables" / "tabletiny1.md").read_text()
    for label in ("| AOT paired | + NLL |", "| AOT unpaired | no NLL |", "| KTO | + NLL |", "| NLL control |",
                  "| SFT (start) |"):
        line = next(line for line in table1.splitlines() if line.startswith(label))
        assert "(n=1)" in line, line  # every cell of the grid was trained and evaluated
    for png in ("fig2", "fig1-nll-a", "fig1-nll-b", "fig1-no_nll-a", "fig1-no_nll-b"):
        assert (results / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    claims = (results / "claims.md").read_text()  # each "A beats B" claim judged by the relative test
    assert "## 2. AOT beats DPO" in claims and "- + NLL (n = " in claims and "AOT paired vs DPO: " in claims
    assert "## 3b. Sorting the whole optimizer batch" in claims and "1024 sorted together vs 64 x 16 sorted alone: " \
        in claims and "1024 vs 256: " in claims
    scope = (results / "tables" / "tabletiny-sort-scope.md").read_text()
    for label in ("| 1024 sorted together | + NLL |", "| 64 x 16 sorted alone | no NLL |"):
        assert "(n=1)" in next(line for line in scope.splitlines() if line.startswith(label))
    # The on-policy regime: its own tables and claims beside the offline ones, every cell trained and evaluated.
    onpolicy = (results / "tables" / "tabletiny-onpolicy.md").read_text()
    for label in ("| AOT paired | no NLL |", "| AOT unpaired | no NLL |", "| DPO | no NLL |", "| IPO | no NLL |",
                  "| KTO | no NLL |", "| NLL control | NLL only |", "| SFT (start) | - |"):
        line = next(line for line in onpolicy.splitlines() if line.startswith(label))
        assert "(n=1) [" in line, line  # mean ± std (n runs) [95% interval over prompts]
    assert "seeds 0 (n runs)" in onpolicy and "Acc. seed 0" in onpolicy
    rounds = (results / "tables" / "tabletiny-rounds.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in rounds if line.startswith("| ") and "Round" not in line] == \
        ["| 0 (SFT)", "| 1", "| 2"]
    assert all(" [" in line.split(" | ")[2] for line in rounds[-2:])  # accuracy with its interval
    assert (results / "tables" / "tabletiny-onpolicy.tex").is_file()
    # Fair tuning (issue 28): every method's 4 cells on the validation prompts, one chosen, run on held-out ones.
    tuning = json.loads((results / "onpolicy" / "tuning.json").read_text())
    assert tuning["evaluation"] == "recipes/eval/tiny_val.eval.yaml" and tuning["unscored"] == []
    assert len(tuning["cells"]) == 24 and len(tuning["chosen"]) == 6
    assert len(list(results.glob("onpolicy/tune/onpolicy-*/tiny_val.json"))) == 24
    held_out = sorted(p.parent.name for p in results.glob("onpolicy/onpolicy-*/tiny.json"))
    assert len(held_out) == 6 and len([n for n in held_out if n.startswith("onpolicy-kto-beta_")]) == 1
    assert not list(results.glob("onpolicy-*")) and [p.name for p in results.glob("onpolicy/*.json")] == \
        ["tuning.json"]  # the on-policy results in their own folder only
    op_claims = (results / "claims-onpolicy.md").read_text()
    for text in ("| AOT paired | none | 1 |", "| NLL control | NLL only | 1 |", "AOT paired vs SFT: ",
                 "AOT unpaired vs DPO: ", "KTO vs NLL control: ", "round 2 vs round 1: ",
                 "Fair tuning: every method the same budget", "| NLL control | learning_rate "):
        assert text in op_claims, text
    assert "each method at the cell its fair tuning chose" in onpolicy
    assert "onpolicy" not in table1 and "tabletiny-onpolicy" not in claims
    quick_data = Path("runs/reproduce-tiny-quick/onpolicy-pairs/provenance.json")
    assert json.loads(quick_data.read_text())["counts"]["prompts"] == 64 and not Path("runs/tiny-pairs").exists()

    fig2 = json.loads((results / "plots" / "fig2.json").read_text())
    assert fig2["tiny-batch"]["tiny:win_rate_vs_sft"]["no NLL"]["x"] == ["16", "32", "64", "128", "256", "1024"]
    assert len(fig2["tiny-penalty"]["tiny:rewards_min_gap"]["+ NLL"]["mean"]) == 4
    (results / "plots" / "fig2.png").unlink()  # the plot command draws it again from the results
    plot = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "plot", "--figure", "fig2", "--results-dir",
                           str(results)], capture_output=True, text=True)
    assert plot.returncode == 0 and (results / "plots" / "fig2.png").is_file(), plot.stderr[-2000:]

    # Resumable: a second call retrains nothing; a lost result is recomputed alone.
    runs = sorted(Path("runs/reproduce-tiny-quick").glob("tiny-*/run.json"))
    assert len(runs) == 33
    onpolicy_runs = [*Path("runs/reproduce-tiny-quick").glob("onpolicy-*/run.json"),
                     *Path("runs/reproduce-tiny-quick").glob("onpolicy-rounds-seed_0/round*/policy/run.json")]
    assert len(onpolicy_runs) == 24 + 2  # the tuning runs (the chosen cells' at seed 0 among them), 2 rounds
    stamps = {p: p.stat().st_mtime_ns for p in [*runs, *onpolicy_runs]}
    data_stamp = quick_data.stat().st_mtime_ns
    lost = results / "tiny-dpo-nll_0.0-seed_0" / "tiny.json"
    kept = results / "tiny-ipo-nll_0.0-seed_0" / "tiny.json"
    kept_stamp = kept.stat().st_mtime_ns
    lost.unlink()
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained, on-policy rounds included
    assert quick_data.stat().st_mtime_ns == data_stamp  # nor the data stage rerun
    assert lost.is_file() and kept.stat().st_mtime_ns == kept_stamp

    # An edited grid reruns what the edit changed: here every run's steps, but only the KTO runs are asked for.
    spec = Path("recipes/tiny/reproduce.grid.yaml")
    spec.write_text(spec.read_text().replace("fixed: {max_steps: 3, logging_steps: 1}",
                                             "fixed: {max_steps: 2, logging_steps: 1}"))
    third = subprocess.run([*command, "--only", "tiny-kto-"], capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-3000:]
    changed = {p.parent.name for p in runs if p.stat().st_mtime_ns != stamps[p]}
    assert changed == {f"tiny-kto-nll_{w}-seed_0" for w in ("1.0", "0.0")}
    history = json.loads(Path("runs/reproduce-tiny-quick/tiny-kto-nll_1.0-seed_0/log_history.json").read_text())
    assert history[-1]["step"] == 2


def _what_a_grid_wrote(root: Path) -> dict:
    """What must not depend on --jobs: every table, claims file, figure, tuning choice, per-prompt score file and
    weight file (bytes), and each result's scores; not dates, timings, logs and modification times."""
    out = {}
    for path in sorted(p for sub in ("results", "runs") for p in (root / sub).rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if path.suffix in (".md", ".csv", ".tex", ".png", ".safetensors", ".jsonl") or path.name in (
                "tuning.json", "rounds.json") or path.parent.name == "plots":
            out[name] = path.read_bytes()
        elif name.startswith("results/") and path.suffix == ".json" and not path.parent.name.endswith(".work"):
            out[name] = json.loads(path.read_text())["scores"]  # a result: its date is when it was written
    return out


def test_jobs_2_writes_what_jobs_1_writes(tmp_path, monkeypatch):
    """aot-reproduce --jobs 2 and --jobs 1 on the quick grids, in two copies of one scratch folder (the same SFT
    run): the graded grid (the tuning, its choice, then the chosen cells) and the tiny on-policy regime (its data
    stage, its tuning and choice, then its runs and the rounds) write the same tables, claims, figures, scores and
    weights. The on-policy tuning grid is cut to two methods of two cells each here (the full grid runs in
    test_quick_grid_end_to_end_and_resumes), so this test stays short."""
    scratch_grid(tmp_path / "one", monkeypatch, sft_steps=200)
    spec = Path("recipes/tiny/reproduce.grid.yaml")
    grid = yaml.safe_load(spec.read_text())
    grid["onpolicy"]["sweeps"] = {
        "aot": {"base": "recipes/tiny/onpolicy/aot_paired.yaml", "grid": {"beta": [1.0, 10.0]}},
        "nll_control": {"base": "recipes/tiny/onpolicy/nll_control.yaml", "grid": {"learning_rate": [1.0e-4, 3.0e-4]}}}
    spec.write_text(yaml.safe_dump(grid, sort_keys=False))
    sft = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "train", "recipes/tiny/sft.yaml"],
                         capture_output=True, text=True)
    assert sft.returncode == 0, sft.stderr[-3000:]
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    for folder, jobs in (("one", "1"), ("two", "2")):
        monkeypatch.chdir(tmp_path / folder)
        for spec, regime in (("recipes/tiny/graded/reproduce.grid.yaml", "all"),
                             ("recipes/tiny/reproduce.grid.yaml", "onpolicy")):
            done = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "reproduce", spec, "--quick",
                                   "--regime", regime, "--jobs", jobs], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
    one, two = _what_a_grid_wrote(tmp_path / "one"), _what_a_grid_wrote(tmp_path / "two")
    assert sorted(one) == sorted(two)
    assert [name for name in one if one[name] != two[name]] == []
    for name in ("results/reproduce-tiny-graded-quick/claims-graded.md", "results/reproduce-tiny-graded-quick/"
                 "tuning.json", "results/reproduce-tiny-quick/claims-onpolicy.md",
                 "results/reproduce-tiny-quick/onpolicy/tuning.json",
                 "runs/reproduce-tiny-quick/onpolicy-rounds-seed_0/rounds.json"):
        assert name in one  # compared, not just absent from both
    assert sum(name.endswith(".safetensors") for name in one) >= 30
    assert sum(name.endswith("tiny_graded.json") for name in one) >= 6
