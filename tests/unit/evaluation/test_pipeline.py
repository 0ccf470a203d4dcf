"""aot_handbook.evaluation.pipeline: evaluation recipes (load_eval_recipe) and `make eval`'s checks of a run
before anything is written."""

import shutil

import pytest

from aot_handbook.errors import UserError
from aot_handbook.evaluation import evaluate, load_eval_recipe
from tests.helpers import REPO


def test_eval_recipes_are_valid(tmp_path):
    names = set()
    for path in sorted((REPO / "recipes" / "eval").glob("*.yaml")):
        names.add(load_eval_recipe(path)["name"])
    assert {"tiny", "alpaca_eval_gpt4", "alpaca_eval_llama3_70b", "open_llm_zero_shot", "tinybenchmarks"} <= names
    bad = tmp_path / "bad.eval.yaml"
    bad.write_text("kind: mystery\n")
    with pytest.raises(ValueError, match=r"bad.eval.yaml: key 'kind'"):
        load_eval_recipe(bad)


def test_incomplete_run_is_refused(runs, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(runs["aot"], half)
    (half / "run.json").unlink()
    with pytest.raises(UserError, match="not complete"):
        evaluate(str(half), str(REPO / "recipes/eval/tiny.eval.yaml"), results_dir=tmp_path / "results")


EVAL = REPO / "recipes" / "eval" / "tiny.eval.yaml"


def test_eval_of_a_run_folder_that_does_not_exist_is_an_error_and_writes_nothing(tmp_path, monkeypatch):
    from aot_handbook.evaluation import evaluate

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for missing in ("runs/tiny-dppo", "./runs/x", "nobody/no-such-model"):
        with pytest.raises(ValueError, match=f"RUN: no such folder '{missing}'"):
            evaluate(missing, str(EVAL), results_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_eval_of_a_run_being_trained_or_evaluated_is_refused_naming_the_holder(runs, tmp_path):
    """One writer per folder: a run still being written (its lock held, here by this process) is not evaluated,
    and a second evaluation of one run does not write beside the first; nothing is written by the refused one."""
    import os

    from aot_handbook.runlock import folder_lock

    run = tmp_path / "tiny-aot"
    shutil.copytree(runs["aot"], run)
    results = tmp_path / "results"
    with folder_lock(run, "training"):
        with pytest.raises(UserError, match=rf"{run} is being written by pid {os.getpid()} \(training"):
            evaluate(str(run), str(EVAL), results_dir=results)
    assert not results.exists()
    with folder_lock(results / "tiny-aot", "evaluation"):
        with pytest.raises(UserError, match=rf"{results / 'tiny-aot'} is being written by pid {os.getpid()}"):
            evaluate(str(run), str(EVAL), results_dir=results)
    assert not results.exists()


def test_a_result_file_of_another_run_of_the_same_name_is_not_replaced(runs, tmp_path):
    """results/<run name>/<eval>.json is keyed by the folder's name: a second run folder of the same name is
    refused, naming both, and the first one's result stays (issue 30: it was silently replaced)."""
    import json

    first, second = tmp_path / "a" / "tiny-aot", tmp_path / "b" / "tiny-aot"
    shutil.copytree(runs["aot"], first)
    shutil.copytree(runs["aot"], second)
    result = tmp_path / "results" / "tiny-aot" / "tiny.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"run": {"path": str(first), "name": "tiny-aot"}, "scores": {"x": 1.0}}))
    before = result.read_bytes()
    with pytest.raises(UserError, match=rf"{result} holds the result of another run, {first}, also named "
                                        rf"'tiny-aot' \(this is {second}\)"):
        evaluate(str(second), str(EVAL), results_dir=tmp_path / "results")
    assert result.read_bytes() == before and sorted(p.name for p in result.parent.iterdir()) == ["tiny.json"]


def test_allow_incomplete_refuses_weights_older_than_the_fingerprint(runs, tmp_path):
    """An overwrite killed after it wrote fingerprint.json and before it saved leaves the earlier run's weights
    under the new fingerprint: --allow-incomplete refuses them (issue 30), and takes weights saved after it."""
    import os

    from aot_handbook.evaluation.pipeline import _check_weights_are_this_runs
    from aot_handbook.run_folder import RunInfo

    run = tmp_path / "tiny-aot"
    shutil.copytree(runs["aot"], run)
    (run / "run.json").unlink()
    (run / "fingerprint.json").write_text('{"sha256": "new"}')
    weights = run / "model.safetensors"
    old = (run / "fingerprint.json").stat().st_mtime_ns - 10**9
    os.utime(weights, ns=(old, old))
    with pytest.raises(UserError, match=rf"{run}: its weights are older than its fingerprint.json"):
        evaluate(str(run), str(EVAL), results_dir=tmp_path / "results", allow_incomplete=True)
    assert not (tmp_path / "results").exists()
    new = old + 2 * 10**9
    os.utime(weights, ns=(new, new))
    _check_weights_are_this_runs(RunInfo.from_path(run))  # saved by this configuration: evaluated
