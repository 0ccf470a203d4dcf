"""`make reproduce-tiny`: the grid spec, the tables' layouts, and the quick grid end to end (resumable)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aot_handbook.reproduce import load, main, run_grid
from aot_handbook.sweep import SweepError, SweepRun
from aot_handbook.tables import build, table_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "recipes" / "tiny" / "reproduce.yaml"


def test_spec_covers_the_issue_grid(monkeypatch):
    monkeypatch.chdir(REPO)
    grid = load("recipes/tiny/reproduce.yaml", check=False)
    names = [r.name for r in grid.runs]
    assert len(names) == len(set(names)) == 81
    for seed in (0, 1, 2):
        for method in ("aot_paired", "aot_unpaired"):
            for nll in ("1.0", "0.0"):
                assert f"tiny-{method}-nll_{nll}-seed_{seed}" in names
                assert f"tiny-{method}-sort_soft-nll_{nll}-seed_{seed}" in names
        for method in ("dpo", "ipo", "kto"):
            assert {f"tiny-{method}-nll_1.0-seed_{seed}", f"tiny-{method}-nll_0.0-seed_{seed}"} <= set(names)
        assert f"tiny-nll_control-seed_{seed}" in names
        assert f"tiny-aot_unpaired-bs_16-max_steps_600-nll_0.0-seed_{seed}" in names
        assert f"tiny-aot_unpaired-penalty_squared_hinge-nll_1.0-seed_{seed}" in names
    assert all(r.overrides["summary"] is False and r.output_dir.startswith("runs/reproduce-tiny/") for r in grid.runs)


def test_spec_covers_the_onpolicy_regime(monkeypatch, capsys):
    """Issue 18: every on-policy method x seeds 0-2 and the rounds, listed by --dry-run, in their own results."""
    monkeypatch.chdir(REPO)
    grid = load("recipes/tiny/reproduce.yaml", check=False)
    op = grid.onpolicy
    names = [r.name for r in op.grid.runs]
    assert len(names) == 18 and not set(names) & {r.name for r in grid.runs}
    for method in ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto", "nll_control"):
        assert {f"onpolicy-{method}-seed_{s}" for s in (0, 1, 2)} <= set(names)
    assert op.data == "recipes/tiny/pairs.yaml" and op.data_args == [] and op.rounds and op.round_seeds
    assert op.grid.results_dir != grid.results_dir  # the offline tables never see an on-policy result
    for run in op.grid.runs:  # the recipes as they are: their own data, built by the data stage first
        assert "dataset_mixture" not in run.overrides and run.output_dir.startswith("runs/reproduce-tiny/")
    assert main(["--dry-run"]) == 0
    listing = capsys.readouterr().out.splitlines()  # "<state> <run>", the state depends on what is on disk
    listed = {line[9:].split(" (")[0] for line in listing[:-1]}
    assert {line[:8].strip() for line in listing[:-1]} <= {"to do", "trained", "done"}
    assert {"onpolicy-kto-seed_2", "tiny-ipo-nll_0.0-seed_1", "onpolicy-rounds-seed_0"} <= listed
    assert any(line[9:].startswith("onpolicy-rounds-seed_0 (3 rounds") for line in listing)
    assert listing[-1] == "99 run(s) + rounds of 1 seed(s)"
    assert main(["--dry-run", "--regime", "onpolicy"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "18 run(s) + rounds of 1 seed(s)"


def test_quick_onpolicy_data_is_its_own(monkeypatch):
    """Quick mode samples a few prompts into its own folder; every on-policy run reads its data from there."""
    monkeypatch.chdir(REPO)
    op = load("recipes/tiny/reproduce.yaml", quick=True, check=False).onpolicy
    assert len(op.grid.runs) == 6 and "--limit" in op.data_args and "--rounds" in op.rounds_args
    for run in op.grid.runs:
        files = [f for d in run.overrides["dataset_mixture"]["datasets"] for f in d["data_files"].values()]
        assert files[0].startswith("runs/reproduce-tiny-quick/onpolicy-pairs/"), files
        assert all("runs/tiny-pairs" not in f for f in files)
        assert run.overrides["requires"] == ["recipes/tiny/sft.yaml"]  # not the full data stage


def test_quick_mode_overrides_come_last(monkeypatch):
    monkeypatch.chdir(REPO)
    grid = load("recipes/tiny/reproduce.yaml", quick=True, check=False)
    assert len(grid.runs) == 27 and {r.overrides["seed"] for r in grid.runs} == {0}
    bs16 = next(r for r in grid.runs if "bs_16" in r.name)
    args = [*bs16.args, *grid.late]
    assert args[args.index("--max_steps") + 1] == "600"  # the run's own ...
    assert args[len(args) - 1 - args[::-1].index("--max_steps") + 1] == "3"  # ... and quick's, which wins
    assert str(grid.results_dir) == "results/reproduce-tiny-quick"


@pytest.mark.parametrize("edit,message", [
    ({"colour": 1}, "unknown: \\['colour'\\]"),
    ({"evaluation": "recipes/eval/nope.yaml"}, "'evaluation' file not found"),
    ({"seeds": ["a"]}, "'seeds' must be a list of integers"),
    ({"sweeps": {"x": {"base": "recipes/tiny/aot_unpaired.yaml", "grid": {"aot_penaltyy": ["hinge"]}}}},
     "override key 'aot_penaltyy' is not a recipe key"),
    ({"sweeps": {"a": {"base": "recipes/tiny/kto.yaml"}, "b": {"base": "recipes/tiny/kto.yaml"}}},
     "sweeps.b: run tiny-kto-seed_0 is also in an earlier sweep"),
    ({"onpolicy": {"results_dir": "results/reproduce-tiny", "data": "recipes/tiny/pairs.yaml",
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}}, "'results_dir' must differ"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/pairs.yaml", "colour": 1}}, "unknown: \\['colour'\\]"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/nope.yaml",
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}},
     "onpolicy: 'data': recipe file not found: recipes/tiny/nope.yaml"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/pairs.yaml", "rounds": "recipes/tiny/pairs.yaml",
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}}, "has no 'rounds'"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/pairs.yaml", "data_overrides": {"scorer": "nope"},
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}}, "key 'scorer' names an unknown"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/pairs.yaml",
                   "sweeps": {"m": {"base": "recipes/tiny/nll_control.yaml"}}}},
     "onpolicy.sweeps.m: run tiny-nll_control-seed_0 is also in an earlier sweep"),
])
def test_bad_spec_is_an_error_naming_the_key(tmp_path, monkeypatch, edit, message):
    monkeypatch.chdir(REPO)
    spec = {**yaml.safe_load(SPEC.read_text()), **edit}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=message):
        load(str(path), check=False)


def _result(method, seed, win, *, nll=1.0, config="a"):
    aot = method.startswith("aot")
    run = {"method": method, "seed": seed, "nll_weight": nll, "base_model": "tiny", "dataset": "tiny",
           "batch_size": 64, "sort": "hard" if aot else None, "penalty": "logistic" if aot else None,
           "config_id": config, "name": f"{method}-{seed}", "recipe_path": "x"}
    return {"run": run, "scores": {"tiny:win_rate_vs_sft": win, "tiny:accuracy": win + 30}}


def test_tiny_tables_mean_std_and_seed_columns():
    results = [_result("aot_unpaired", s, w) for s, w in ((0, 60.0), (1, 62.0), (2, 64.0))]
    results.append(_result("dpo", 0, 40.0, nll=0.0))
    t1 = build(table_spec("tiny1"), results)
    row = next(r for r in t1 if r[:2] == ["AOT unpaired", "+ NLL"])
    assert row[2] == "62.0 ± 2.0 (n=3)" and row[3] == "92.0 ± 2.0 (n=3)"
    assert next(r for r in t1 if r[:2] == ["DPO", "no NLL"])[2] == "40.0 ± 0.0 (n=1)"
    assert next(r for r in t1 if r[:2] == ["DPO", "+ NLL"])[2] == "-"
    t10 = build(table_spec("tiny10"), results)
    assert next(r for r in t10 if r[:2] == ["AOT unpaired", "+ NLL"])[2:5] == ["60.0", "62.0", "64.0"]
    with pytest.raises(ValueError, match="different configurations"):  # never average unlike runs
        build(table_spec("tiny1"), [*results, _result("aot_unpaired", 3, 10.0, config="b")])


def test_a_failing_cell_does_not_lose_the_others(tmp_path, monkeypatch):
    """run_grid records the failure (with its traceback in the run's train.log) and goes on."""
    _scratch(tmp_path, monkeypatch)
    grid = load("recipes/tiny/reproduce.yaml", quick=True, check=False)
    good = next(r for r in grid.runs if r.name == "tiny-kto-nll_1.0-seed_0")
    bad = SweepRun("broken", good.base, {**good.overrides, "dataset_mixture": {"datasets": [
        {"data_files": {"train": "missing.jsonl"}}]}}, "runs/reproduce-tiny-quick/broken")
    grid.runs = [bad, good]
    assert run_grid(grid) == ["broken"]
    assert "missing.jsonl" in Path(bad.output_dir, "train.log").read_text()
    assert Path(good.output_dir, "run.json").is_file() and (grid.results_dir / good.name / "tiny.json").is_file()


def _scratch(tmp_path, monkeypatch, sft_steps=20):
    """The real tiny recipes, spec and eval recipe in a scratch folder; a short SFT stage."""
    for sub in ("recipes/tiny", "recipes/eval"):
        shutil.copytree(REPO / sub, tmp_path / sub)
    sft = tmp_path / "recipes" / "tiny" / "sft.yaml"
    sft.write_text(yaml.safe_dump({**yaml.safe_load(sft.read_text()), "max_steps": sft_steps}))
    monkeypatch.chdir(tmp_path)


def test_quick_grid_end_to_end_and_resumes(tmp_path, monkeypatch):
    # 200 SFT steps: the on-policy data stage needs answers both right and wrong (150 steps: 17 of 512 right;
    # 20 steps: none, and then no pairs and no positives to train on)
    _scratch(tmp_path, monkeypatch, sft_steps=200)
    command = [sys.executable, "-m", "aot_handbook.cli", "reproduce", "--quick"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    results = Path("results/reproduce-tiny-quick")
    for name in ("tiny1", "tiny7", "tiny10", "tiny-batch", "tiny-penalty"):
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
    assert (results / "onpolicy" / "onpolicy-kto-seed_0" / "tiny.json").is_file()  # in their own folder only
    assert not list(results.glob("onpolicy-*")) and not list(results.glob("onpolicy/*.json"))
    op_claims = (results / "claims-onpolicy.md").read_text()
    for text in ("| AOT paired | none | 1 |", "| NLL control | NLL only | 1 |", "AOT paired vs SFT: ",
                 "AOT unpaired vs DPO: ", "KTO vs NLL control: ", "round 2 vs round 1: "):
        assert text in op_claims, text
    assert "onpolicy" not in table1 and "tabletiny-onpolicy" not in claims
    quick_data = Path("runs/reproduce-tiny-quick/onpolicy-pairs/provenance.json")
    assert json.loads(quick_data.read_text())["counts"]["prompts"] == 64 and not Path("runs/tiny-pairs").exists()

    fig2 = json.loads((results / "plots" / "fig2.json").read_text())
    assert fig2["tiny-batch"]["tiny:win_rate_vs_sft"]["no NLL"]["x"] == ["16", "32", "64", "128"]
    assert len(fig2["tiny-penalty"]["tiny:rewards_min_gap"]["+ NLL"]["mean"]) == 4
    (results / "plots" / "fig2.png").unlink()  # the plot command draws it again from the results
    plot = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "plot", "--fig2", str(results)],
                          capture_output=True, text=True)
    assert plot.returncode == 0 and (results / "plots" / "fig2.png").is_file(), plot.stderr[-2000:]

    # Resumable: a second call retrains nothing; a lost result is recomputed alone.
    runs = sorted(Path("runs/reproduce-tiny-quick").glob("tiny-*/run.json"))
    assert len(runs) == 27
    onpolicy_runs = [*Path("runs/reproduce-tiny-quick").glob("onpolicy-*/run.json"),
                     *Path("runs/reproduce-tiny-quick").glob("onpolicy-rounds-seed_0/round*/policy/run.json")]
    assert len(onpolicy_runs) == 6 + 2
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
    spec = Path("recipes/tiny/reproduce.yaml")
    spec.write_text(spec.read_text().replace("fixed: {max_steps: 3, logging_steps: 1}",
                                             "fixed: {max_steps: 2, logging_steps: 1}"))
    third = subprocess.run([*command, "--only", "tiny-kto-"], capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-3000:]
    changed = {p.parent.name for p in runs if p.stat().st_mtime_ns != stamps[p]}
    assert changed == {f"tiny-kto-nll_{w}-seed_0" for w in ("1.0", "0.0")}
    history = json.loads(Path("runs/reproduce-tiny-quick/tiny-kto-nll_1.0-seed_0/log_history.json").read_text())
    assert history[-1]["step"] == 2
