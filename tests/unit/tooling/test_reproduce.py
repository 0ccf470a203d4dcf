"""aot_handbook.tooling.reproduce: the reproduction grid's spec (both regimes), quick mode, bad specs, and a
failing cell that does not lose the others."""

import functools
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from aot_handbook.cli import reproduce as main
from aot_handbook.tooling.reproduce import Cell, load, run_cells, run_grid, select
from aot_handbook.tooling.sweep import SweepError, SweepRun
from tests.helpers import REPO, scratch_grid

SPEC = REPO / "recipes" / "tiny" / "reproduce.grid.yaml"
GRADED = "recipes/tiny/graded/reproduce.grid.yaml"
GRADED_METHODS = ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto", "nll_control")


def test_spec_covers_the_issue_grid(monkeypatch):
    monkeypatch.chdir(REPO)
    grid = load("recipes/tiny/reproduce.grid.yaml", check=False)
    names = [r.name for r in grid.runs]
    assert len(names) == len(set(names)) == 99
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
        assert f"tiny-aot_unpaired-bs_64-ga_16-max_steps_9-logging_steps_1-nll_0.0-seed_{seed}" in names
        assert f"tiny-aot_unpaired-bs_64-ga_16-max_steps_9-logging_steps_1-aot_sort_scope_micro_batch-nll_0.0-seed_" \
               f"{seed}" in names
    assert all(r.overrides["summary"] is False and r.output_dir.startswith("runs/reproduce-tiny/") for r in grid.runs)


@pytest.mark.slow
def test_spec_covers_the_onpolicy_regime(monkeypatch, capsys):
    """Issue 18: every on-policy method x seeds 0-2 and the rounds, listed by --dry-run, in their own results."""
    monkeypatch.chdir(REPO)
    grid = load("recipes/tiny/reproduce.grid.yaml", check=False)
    op = grid.onpolicy
    assert op.grid.runs == []  # its runs are the chosen cells' (issue 28's fair tuning), known after the tuning
    tune = op.grid.tune
    names = [r.name for r in tune.grid.runs]
    assert len(names) == 24 and not set(names) & {r.name for r in grid.runs}
    assert {Path(b).stem: len(c) for b, c in tune.cells.items()} == {m: 4 for m in GRADED_METHODS}
    assert [c for c, _ in tune.cells["recipes/tiny/onpolicy/kto.yaml"]] == [
        {"beta": b, "learning_rate": lr} for b in (1.0, 10.0) for lr in (3e-5, 1e-4)]
    assert tune.select == ["tiny:accuracy", "tiny:win_rate_vs_sft"] and tune.grid.eval_name == "tiny_val"
    assert tune.grid.results_dir == Path("results/reproduce-tiny/onpolicy/tune")
    chosen = tune.expand("recipes/tiny/onpolicy/dpo.yaml", {"beta": 1.0, "learning_rate": 3e-5})
    assert [r.name for r in chosen] == [f"onpolicy-dpo-beta_1.0-lr_3e-05-seed_{s}" for s in (0, 1, 2)]
    assert op.data == "recipes/tiny/sft.pairs.yaml" and op.data_args == [] and op.rounds and op.round_seeds
    assert op.grid.results_dir != grid.results_dir  # the offline tables never see an on-policy result
    for run in [*tune.grid.runs, *chosen]:  # the recipes as they are: their own data, built by the data stage first
        assert "dataset_mixture" not in run.overrides and run.output_dir.startswith("runs/reproduce-tiny/")
    assert main(["recipes/tiny/reproduce.grid.yaml", "--dry-run"]) == 0
    listing = capsys.readouterr().out.splitlines()  # "<state> <run>", the state depends on what is on disk
    runs = [line for line in listing[:-1] if not line.startswith("then ")]
    listed = {line[9:].split(" (")[0] for line in runs}
    assert {line[:8].strip() for line in runs} <= {"to do", "trained", "done"}
    assert {"onpolicy-kto-beta_10.0-lr_0.0001-seed_0", "tiny-ipo-nll_0.0-seed_1", "onpolicy-rounds-seed_0"} <= listed
    assert any(line[9:].startswith("onpolicy-rounds-seed_0 (3 rounds") for line in listing)
    assert listing[-2].startswith("then the chosen cell of each of 6 recipe(s) (by tiny:accuracy, ")
    assert listing[-1] == "123 run(s) + rounds of 1 seed(s)"
    assert main(["recipes/tiny/reproduce.grid.yaml", "--dry-run", "--regime", "onpolicy"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "24 run(s) + rounds of 1 seed(s)"


def test_quick_onpolicy_data_is_its_own(monkeypatch):
    """Quick mode samples a few prompts into its own folder; every on-policy run reads its data from there."""
    monkeypatch.chdir(REPO)
    op = load("recipes/tiny/reproduce.grid.yaml", quick=True, check=False).onpolicy
    assert len(op.grid.tune.grid.runs) == 24 and "--limit" in op.data_args and "--rounds" in op.rounds_args
    chosen = op.grid.tune.expand("recipes/tiny/onpolicy/kto.yaml", {"beta": 1.0, "learning_rate": 1e-4})
    for run in [*op.grid.tune.grid.runs, *chosen]:  # the tuning runs and the chosen cells' alike
        files = [f for d in run.overrides["dataset_mixture"]["datasets"] for f in d["data_files"].values()]
        assert files[0].startswith("runs/reproduce-tiny-quick/onpolicy-pairs/"), files
        assert all("runs/tiny-pairs" not in f for f in files)
        assert run.overrides["requires"] == ["recipes/tiny/sft.yaml"]  # not the full data stage


def test_quick_mode_overrides_come_last(monkeypatch):
    monkeypatch.chdir(REPO)
    grid = load("recipes/tiny/reproduce.grid.yaml", quick=True, check=False)
    assert len(grid.runs) == 33 and {r.overrides["seed"] for r in grid.runs} == {0}
    bs16 = next(r for r in grid.runs if "bs_16" in r.name)
    args = [*bs16.args, *grid.late]
    assert args[args.index("--max_steps") + 1] == "600"  # the run's own ...
    assert args[len(args) - 1 - args[::-1].index("--max_steps") + 1] == "3"  # ... and quick's, which wins
    assert str(grid.results_dir) == "results/reproduce-tiny-quick"


@pytest.mark.parametrize("edit,message", [
    ({"colour": 1}, "unknown: \\['colour'\\]"),
    ({"evaluation": "recipes/eval/nope.eval.yaml"}, "'evaluation' file not found"),
    ({"seeds": ["a"]}, "'seeds' must be a list of integers"),
    ({"sweeps": {"x": {"base": "recipes/tiny/aot_unpaired.yaml", "grid": {"aot_penaltyy": ["hinge"]}}}},
     "override key 'aot_penaltyy' is not a recipe key"),
    ({"sweeps": {"a": {"base": "recipes/tiny/kto.yaml"}, "b": {"base": "recipes/tiny/kto.yaml"}}},
     "sweeps.b: run tiny-kto-seed_0 is also in an earlier sweep"),
    ({"onpolicy": {"results_dir": "results/reproduce-tiny", "data": "recipes/tiny/sft.pairs.yaml",
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}}, "'results_dir' must differ"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/sft.pairs.yaml", "colour": 1}},
     "unknown: \\['colour'\\]"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/nope.pairs.yaml",
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}},
     "onpolicy: 'data': pairs recipe file not found: recipes/tiny/nope.pairs.yaml"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/sft.pairs.yaml", "rounds": "recipes/tiny/sft.pairs.yaml",
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}}, "has no 'rounds'"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/sft.pairs.yaml", "data_overrides": {"scorer": "nope"},
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}}, "key 'scorer' names an unknown"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/sft.pairs.yaml",
                   "sweeps": {"m": {"base": "recipes/tiny/nll_control.yaml"}}}},
     "onpolicy.sweeps.m: run tiny-nll_control-seed_0 is also in an earlier sweep"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/sft.pairs.yaml",
                   "tune": {"evaluation": "recipes/eval/tiny_val.eval.yaml"},
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml", "grid": {"beta": [1.0]}}}}},
     "onpolicy.tune: key 'select' is required"),
    ({"onpolicy": {"results_dir": "r", "data": "recipes/tiny/sft.pairs.yaml",
                   "tune": {"evaluation": "recipes/eval/tiny_val.eval.yaml", "select": "tiny:accuracy"},
                   "sweeps": {"m": {"base": "recipes/tiny/onpolicy/kto.yaml"}}}},
     "onpolicy.sweeps.m: with 'tune', a sweep is a 'grid'"),
])
def test_bad_spec_is_an_error_naming_the_key(tmp_path, monkeypatch, edit, message):
    monkeypatch.chdir(REPO)
    spec = {**yaml.safe_load(SPEC.read_text()), **edit}
    path = tmp_path / "spec.grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=message):
        load(str(path), check=False)


@pytest.mark.slow
def test_a_failing_cell_does_not_lose_the_others(tmp_path, monkeypatch):
    """run_grid records the failure (with its traceback in the run's train.log) and goes on."""
    scratch_grid(tmp_path, monkeypatch)
    grid = load("recipes/tiny/reproduce.grid.yaml", quick=True, check=False)
    good = next(r for r in grid.runs if r.name == "tiny-kto-nll_1.0-seed_0")
    bad = SweepRun("broken", good.base, {**good.overrides, "dataset_mixture": {"datasets": [
        {"data_files": {"train": "missing.jsonl"}}]}}, "runs/reproduce-tiny-quick/broken")
    grid.runs = [bad, good]
    assert run_grid(grid) == ["broken"]
    assert "missing.jsonl" in Path(bad.output_dir, "train.log").read_text()
    assert Path(good.output_dir, "run.json").is_file() and (grid.results_dir / good.name / "tiny.json").is_file()


# ---- --jobs: the cells of a grid side by side (run_cells)

def _meet(folder: str, me: str, other: str) -> bool:
    """Say this cell started, then wait for the other one: it fails unless both ran at the same time."""
    Path(folder, me).touch()
    deadline = time.time() + 120
    while not Path(folder, other).exists():
        if time.time() > deadline:
            raise TimeoutError(f"{me} ran alone: {other} never started")
        time.sleep(0.05)
    return True


def _broken(folder: str) -> bool:
    raise ValueError(f"{folder}: this cell is broken")


def _killed() -> bool:
    os._exit(3)  # the child process dies (as when killed for memory), no exception to report


def _cell(tmp_path, name, work) -> Cell:
    return Cell(name, work, None, [], tmp_path / name / "train.log")


@pytest.mark.slow  # no training, but each child process imports torch and transformers (~10 s)
def test_jobs_run_cells_side_by_side_and_a_failing_one_is_named(tmp_path):
    """Two cells that each wait for the other finish only when they run at once (--jobs 2); a cell that raises
    is named (in the cells' order) and the others finish; its log says why."""
    for name in ("a", "b", "broken"):
        (tmp_path / name).mkdir()
    cells = [_cell(tmp_path, "broken", functools.partial(_broken, str(tmp_path))),
             _cell(tmp_path, "a", functools.partial(_meet, str(tmp_path), "a", "b")),
             _cell(tmp_path, "b", functools.partial(_meet, str(tmp_path), "b", "a"))]
    assert run_cells(cells, jobs=2) == ["broken"]
    assert "this cell is broken" in (tmp_path / "broken" / "train.log").read_text()
    assert not (tmp_path / "a" / "train.log").exists()  # nothing to say about a cell that finished
    # A child that dies (no exception): its cell is reported, not lost.
    assert run_cells([_cell(tmp_path, "killed", functools.partial(_killed))], jobs=2) == ["killed"]
    assert "killed failed" in (tmp_path / "killed" / "train.log").read_text()


# ---- fair tuning (the spec's `tune` block; recipes/tiny/graded/reproduce.grid.yaml, issue 28)


def test_graded_spec_tunes_every_method_with_the_same_budget(monkeypatch):
    monkeypatch.chdir(REPO)
    grid = load(GRADED, check=False)
    assert grid.runs == []  # the held-out runs are the chosen cells', known after the tuning
    tune = grid.tune
    assert tune.select == ["tiny_graded:quality", "tiny_graded:accuracy"]
    assert tune.grid.evaluation == "recipes/eval/tiny_graded_val.eval.yaml"
    assert tune.grid.eval_name == "tiny_graded_val"
    assert tune.grid.results_dir == Path("results/reproduce-tiny-graded/tune")
    assert {Path(b).stem: len(cells) for b, cells in tune.cells.items()} == {m: 4 for m in GRADED_METHODS}
    assert all([r.overrides["seed"] for r in runs] == [0] for cells in tune.cells.values() for _, runs in cells)
    assert [c for c, _ in tune.cells["recipes/tiny/graded/dpo.yaml"]] == [
        {"beta": b, "learning_rate": lr} for b in (1.0, 10.0) for lr in (3e-5, 1e-4)]
    assert len(tune.grid.runs) == 24
    quick = load(GRADED, quick=True, check=False)
    assert quick.tune.grid.results_dir == Path("results/reproduce-tiny-graded-quick/tune")
    assert quick.late == ["--max_steps", "3", "--logging_steps", "1"] and quick.tune.spec["seeds"] == [0]


def _tuned(tmp_path, scores: dict[str, list[tuple[float, float] | None]]):
    """The graded grid with its results in tmp_path and a validation result (quality, accuracy) per tuning cell."""
    grid = load(GRADED, check=False)
    grid.results_dir, grid.tune.grid.results_dir = tmp_path, tmp_path / "tune"
    for base, cells in grid.tune.cells.items():
        for (_, runs), score in zip(cells, scores.get(Path(base).stem, [(1.0, 1.0)] * 4)):
            if score is None:
                continue
            out = tmp_path / "tune" / Path(runs[0].output_dir).name / "tiny_graded_val.json"
            out.parent.mkdir(parents=True)
            out.write_text(json.dumps({"scores": {"tiny_graded:quality": score[0], "tiny_graded:accuracy": score[1]}}))
    return grid


def test_select_chooses_each_recipes_best_validation_cell_and_reuses_its_run(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    grid = _tuned(tmp_path, {"dpo": [(2.8, 90.0), (2.9, 80.0), (2.9, 85.0), (2.7, 99.0)],  # quality, then accuracy
                             "ipo": [(2.5, 50.0), (2.9, 80.0), (2.9, 80.0), (2.0, 10.0)],  # a tie: the earlier cell
                             "kto": [None, (2.9, 80.0), None, None]})  # a failed cell is not chosen
    tune = grid.tune
    chosen = select(grid)
    dpo, ipo, kto = (f"recipes/tiny/graded/{m}.yaml" for m in ("dpo", "ipo", "kto"))
    assert chosen["chosen"][dpo] == {"beta": 10.0, "learning_rate": 3e-5}
    assert chosen["chosen"][ipo] == {"beta": 1.0, "learning_rate": 1e-4}
    assert chosen["chosen"][kto] == {"beta": 1.0, "learning_rate": 1e-4}
    assert chosen["chosen"]["recipes/tiny/graded/nll_control.yaml"] == {"learning_rate": 1e-5}
    assert chosen["unscored"] == []
    assert json.loads((tmp_path / "tuning.json").read_text()) == json.loads(json.dumps(chosen))
    # The held-out runs: each chosen cell at seeds 0, 1, 2; seed 0 is the tuning run itself (same folder, arguments).
    assert len(grid.runs) == 6 * 3
    dpo_runs = [r for r in grid.runs if r.base == dpo]
    assert [r.overrides["seed"] for r in dpo_runs] == [0, 1, 2]
    (_, (tuned,)), = [(c, rs) for c, rs in tune.cells[dpo] if c == {"beta": 10.0, "learning_rate": 3e-5}]
    assert (dpo_runs[0].name, dpo_runs[0].output_dir, dpo_runs[0].args) == (tuned.name, tuned.output_dir, tuned.args)
    assert all(r.overrides["beta"] == 10.0 and r.overrides["learning_rate"] == 3e-5 for r in dpo_runs)


def test_a_recipe_without_a_scored_cell_is_named_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    grid = _tuned(tmp_path, {"kto": [None] * 4})
    chosen = select(grid)
    assert chosen["unscored"] == ["recipes/tiny/graded/kto.yaml"]
    assert not any(r.base.endswith("kto.yaml") for r in grid.runs) and len(grid.runs) == 5 * 3


@pytest.mark.parametrize("edit, message", [
    ({"tune": {"evaluation": "recipes/eval/tiny_graded_val.eval.yaml"}}, "tune: key 'select' is required"),
    ({"tune": {"evaluation": "recipes/eval/nope.eval.yaml", "select": "x"}}, "tune: 'evaluation' file not found"),
    ({"tune": {"evaluation": "recipes/eval/tiny_graded_val.eval.yaml", "select": "x", "colour": 1}},
     "unknown: \\['colour'\\]"),
    ({"tune": {"evaluation": "recipes/eval/tiny_graded_val.eval.yaml", "select": "x", "seeds": "0"}},
     "tune: 'seeds' must be a list of integers"),
    ({"tune": {"evaluation": "recipes/eval/tiny_graded_val.eval.yaml", "select": "x"},
      "sweeps": {"a": {"base": "recipes/tiny/graded/dpo.yaml", "runs": [{"beta": 1.0}]}}},
     "sweeps.a: with 'tune', a sweep is a 'grid'"),
    ({"tune": {"evaluation": "recipes/eval/tiny_graded_val.eval.yaml", "select": "x"},
      "sweeps": {"a": {"base": "recipes/tiny/graded/dpo.yaml", "grid": {"beta": [1.0]}},
                 "b": {"base": "recipes/tiny/graded/dpo.yaml", "grid": {"beta": [10.0]}}}},
     "sweeps.b: base recipes/tiny/graded/dpo.yaml is tuned in two sweeps"),
])
def test_bad_tune_block_is_an_error_naming_the_key(tmp_path, monkeypatch, edit, message):
    monkeypatch.chdir(REPO)
    spec = {**yaml.safe_load((REPO / GRADED).read_text()), **edit}
    path = tmp_path / "spec.grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=message):
        load(str(path), check=False)
