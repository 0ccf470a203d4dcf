"""aot_handbook.pairs: the data stage samples, scores and writes one dataset, resumably; bad input fails before
any sampling."""

import json
import math
import os

import pytest

from aot_handbook import pairs as pairs_module
from aot_handbook import scorers
from aot_handbook.pairs import (
    make_pairs,
    make_unpaired,
)
from aot_handbook.run_folder import is_complete
from tests.helpers import REPO, build_pairs_data, logged_losses, samples_of, tiny_workdir, write_pairs_recipe


@pytest.mark.slow
def test_killed_run_resumes_without_duplicating_or_losing_rows(tiny, tmp_path, monkeypatch):
    whole = build_pairs_data(tmp_path / "a", tiny, limit=20)  # 5 batches of 4 prompts, uninterrupted
    calls = {"n": 0}
    real_score = scorers.TaskJudge.score

    def dies_in_third_batch(self, prompts, completions):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed between the second batch's write and the third's
        return real_score(self, prompts, completions)

    monkeypatch.setattr(scorers.TaskJudge, "score", dies_in_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_pairs_data(tmp_path / "b", tiny, limit=20)
    killed = tmp_path / "b" / "out"
    assert [r["index"] for r in samples_of(killed)] == list(range(8)) and not (killed / "provenance.json").exists()
    with open(killed / "samples.jsonl", "a") as f:  # a SIGKILL in mid-write leaves a torn line
        f.write(json.dumps({"index": 8, "prompt": "x", "completions": ["1"], "scores": [0.0]})[:25])
    calls["n"] = -100
    resumed = build_pairs_data(tmp_path / "b", tiny, limit=20)
    assert calls["n"] == -100 + 3  # only the three missing batches were sampled and scored
    assert (resumed / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()
    for name in ("paired.jsonl", "unpaired.jsonl"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(changed: \['temperature'\]\)"):
        build_pairs_data(tmp_path / "b", tiny, limit=20, temperature=0.7)  # never mixes two samplings in one folder


@pytest.mark.slow
def test_sigkilled_process_resumes(tiny, tmp_path):
    """aot-pairs killed for real (SIGKILL, in the middle of its batches), then run again."""
    import signal
    import subprocess
    import sys
    import time

    keys = {"limit": 300, "batch_size": 1, "num_samples": 2}
    path = write_pairs_recipe(tmp_path / "killed", tiny, **keys)
    samples = tmp_path / "killed" / "out" / "samples.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "aot_handbook.cli", "pairs", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (samples.is_file() and samples.read_text().count("\n") >= 3) and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = samples.read_text().count("\n")
    assert 3 <= written < 300 and not (samples.parent / "provenance.json").exists()
    resumed = build_pairs_data(tmp_path / "killed", tiny, **keys)
    whole = build_pairs_data(tmp_path / "whole", tiny, **keys)
    assert (resumed / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()
    assert [r["index"] for r in samples_of(resumed)] == list(range(300))
    assert (resumed / "paired.jsonl").read_bytes() == (whole / "paired.jsonl").read_bytes()


def test_pairs_and_labels_from_scores():
    rows = [{"prompt": "p", "completions": ["a", "b", "a", "c", "d"], "scores": [3.0, 1.0, 3.0, None, 2.0]},
            {"prompt": "q", "completions": ["x", "y"], "scores": [1.0, 1.0]}]
    assert make_pairs(rows) == [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": 3.0,
                                 "rejected_score": 1.0}]
    assert [(p["chosen"], p["rejected"]) for p in make_pairs(rows, "margin", 0.5)] == [("a", "b"), ("a", "d"),
                                                                                         ("d", "b")]
    assert [(p["chosen"], p["rejected"]) for p in make_pairs(rows, "margin", 1.5)] == [("a", "b")]
    assert make_pairs(rows, "best_worst", 2.0) == []
    median = make_unpaired(rows)  # p: median of 3, 1, 3, 2 is 2.5; q: no spread, no information
    assert [(u["completion"], u["label"]) for u in median] == [("a", True), ("b", False), ("a", True), ("d", False)]
    fixed = make_unpaired(rows, 1.0)
    assert [(u["prompt"], u["label"]) for u in fixed] == [("p", True), ("p", False), ("p", True), ("p", True),
                                                          ("q", False), ("q", False)]
    assert all(math.isfinite(u["score"]) for u in fixed)


@pytest.mark.slow
@pytest.mark.parametrize("keys, overrides, match", [
    ({"scorer": "gpt-judge"}, [], r"key 'scorer' names an unknown scorer 'gpt-judge'"),
    ({}, ["--scorer", "tiny-judge"], r"key 'scorer' names an unknown scorer"),
    ({"num_samples": 1}, [], r"key 'num_samples' must be >= 2 for paired output"),
    ({"temperatur": 0.7}, [], r"unknown key\(s\) \['temperatur'\]"),
    ({}, ["--top_k", "5"], r"unknown command-line override\(s\) \['top_k'\]"),
    ({"num_samples": "4"}, [], r"key 'num_samples' expects"),
    ({"scorer": "reward_model", "reward_model": "./no/such/rm"}, [],
     r"key 'reward_model': no such folder: ./no/such/rm"),
    ({"scorer": "reward_model"}, [], r"needs key 'reward_model'"),
    ({"prompt_column": "question"}, [], (r"paired_train.jsonl: column 'question' \(key 'prompt_column'\) not found; "
                                         r"columns present: \['category', 'chosen', 'prompt', 'rejected'\]")),
    ({"prompts": "nowhere.jsonl"}, [], r"key 'prompts': no such file: nowhere.jsonl"),
    ({"model": "./no/such/model"}, [], r"key 'model': no such folder"),
    ({"scorer": "openai_judge", "judge_base_url": "http://127.0.0.1:9/v1", "judge_model": "m",
      "judge_api_key_env": "PAIRS_UNSET_KEY_VARIABLE"}, [], r"PAIRS_UNSET_KEY_VARIABLE is not set"),
])
def test_bad_input_fails_before_any_sampling(tiny, tmp_path, monkeypatch, keys, overrides, match):
    def no_sampling(*args, **kwargs):
        raise AssertionError("a sampler was built")

    monkeypatch.setattr(pairs_module.HFSampler, "__init__", no_sampling)
    monkeypatch.delenv("PAIRS_UNSET_KEY_VARIABLE", raising=False)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        build_pairs_data(tmp_path, tiny, overrides, **keys)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_written_data_trains_with_the_tiny_recipes(tiny, tmp_path, monkeypatch, reward_model):
    """paired.jsonl with recipes/tiny/aot_paired.yaml and unpaired.jsonl (truly unpaired) with
    recipes/tiny/aot_unpaired.yaml, as they are, pointed at the files with --dataset_mixture."""
    from aot_handbook.plan import train

    tiny_workdir(tmp_path, tiny, monkeypatch)
    out = build_pairs_data(tmp_path, tiny, model="runs/tiny-sft", limit=16, scorer="reward_model",
               reward_model=str(reward_model[0]), label_threshold="median", output_dir="runs/pairs")
    for recipe, data in (("aot_paired", "paired"), ("aot_unpaired", "unpaired")):
        mixture = {"datasets": [{"data_files": {"train": str(out / f"{data}.jsonl")}, "test_split": None}]}
        run = train(f"recipes/tiny/{recipe}.yaml", ["--dataset_mixture", json.dumps(mixture), "--max_steps", "2",
                                                   "--logging_steps", "1", "--summary", "false",
                                                   "--per_device_train_batch_size", "8"])
        assert is_complete(run) and len(logged_losses(run)) == 2 and all(map(math.isfinite, logged_losses(run)))
    trained = json.loads((tmp_path / "runs/tiny-aot_unpaired/recipe.json").read_text())
    assert "unpaired.jsonl" in json.dumps(trained["overrides"])


def test_a_data_stage_into_a_folder_being_written_is_refused_naming_the_holder(tiny, tmp_path):
    from aot_handbook.errors import UserError
    from aot_handbook.runlock import folder_lock

    with folder_lock(tmp_path / "out", "data"):
        with pytest.raises(UserError, match=rf"{tmp_path / 'out'} is being written by pid {os.getpid()} \(data"):
            build_pairs_data(tmp_path, tiny)
        assert [p.name for p in (tmp_path / "out").iterdir()] == [".aot-handbook.lock"]  # nothing written
