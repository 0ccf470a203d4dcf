"""The on-policy data stage (aot_handbook.pairs), offline and for real: the tiny model samples, the program
judge, a reward model built here and the loopback OpenAI-compatible judge score, a killed run resumes, and
the written files train with the project's own tiny recipes."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from aot_handbook import pairs as pairs_module
from aot_handbook import scorers
from aot_handbook.evaluation.judge_server import serve
from aot_handbook.pairs import (
    build_pairs,
    make_pairs,
    make_unpaired,
    parse_pairs_recipe,
    run_rounds,
)
from aot_handbook.run import is_complete
from aot_handbook.scorers import build_scorer
from aot_handbook.tiny import (
    MODEL_SHAPE,
    answer,
    flawed,
    judge,
    read_jsonl,
    spurious_carry,
)

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "sk-test-pairs-0b9c-never-written"


def _recipe(tmp_path, tiny, **keys) -> Path:
    base = {"model": str(tiny["base_model"]), "prompts": str(tiny["paired_train"]), "limit": 12,
            "output_dir": str(tmp_path / "out"), "num_samples": 3, "max_new_tokens": 4, "batch_size": 4,
            "scorer": "tiny_judge"}
    path = tmp_path / "pairs.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**base, **keys}))
    return path


def _run(tmp_path, tiny, overrides=(), **keys) -> Path:
    path = _recipe(tmp_path, tiny, **keys)
    return build_pairs(parse_pairs_recipe(str(path), list(overrides)), recipe_path=str(path))


def _samples(out: Path) -> list[dict]:
    return read_jsonl(out / "samples.jsonl")


@pytest.fixture(scope="module")
def reward_model(tiny, tmp_path_factory):
    """A tiny reward model: sequence-classification head (one logit) on the tiny Llama, with a chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, num_labels=1, **MODEL_SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = LlamaForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("rm") / "tiny-rm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


def test_tiny_judge_scores_equal_the_judge(tiny, tmp_path):
    rows = read_jsonl(tiny["paired_train"])[:8]
    prompts = [r["prompt"] for r in rows for _ in range(3)]
    completions = [c for r in rows for c in (answer(r["prompt"]), flawed(r["prompt"]), spurious_carry(r["prompt"]))]
    scores = build_scorer(parse_pairs_recipe(str(_recipe(tmp_path, tiny)))).score(prompts, completions)
    assert scores == [float(judge(p, c)) for p, c in zip(prompts, completions)]
    assert set(scores) == {0.0, 1.0}

    out = _run(tmp_path, tiny, num_samples=4)  # through the whole stage: sampled answers, judged
    samples = _samples(out)
    assert [r["index"] for r in samples] == list(range(12)) and all(len(r["completions"]) == 4 for r in samples)
    assert [r["prompt"] for r in samples] == [r["prompt"] for r in read_jsonl(tiny["paired_train"])[:12]]
    for r in samples:
        assert r["scores"] == [float(judge(r["prompt"], c)) for c in r["completions"]]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["scorer"] == {"scorer": "tiny_judge"} and prov["loaded"]["model"] == str(tiny["base_model"])
    assert prov["sampling"]["num_samples"] == 4 and prov["sampling"]["seed"] == 0 and prov["prompts"]["sha256"]
    assert prov["counts"]["samples"] == 48
    assert read_jsonl(out / "paired.jsonl") == make_pairs(samples)


def test_reward_model_scores_through_the_hub_code_path(tiny, tmp_path, reward_model):
    """scorer reward_model with a local folder: AutoModelForSequenceClassification + the RM's chat template,
    batched with padding; each score equals the model's logit on that one text, computed here directly."""
    path, model, tok = reward_model
    out = _run(tmp_path, tiny, scorer="reward_model", reward_model=str(path), label_threshold="median")
    samples = _samples(out)
    for r in samples:
        for c, s in zip(r["completions"], r["scores"]):
            text = tok.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": c}], tokenize=False)
            assert text.startswith(f"user: {r['prompt']}\nassistant: ")
            with torch.no_grad():
                direct = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
            assert s == pytest.approx(direct, abs=1e-5)
    assert len({s for r in samples for s in r["scores"]}) > 10  # real, distinct scores
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["scorer"] == {"scorer": "reward_model", "reward_model": str(path), "chat_template": True}
    paired, unpaired = read_jsonl(out / "paired.jsonl"), read_jsonl(out / "unpaired.jsonl")
    assert len(paired) == 12 and all(p["chosen_score"] > p["rejected_score"] for p in paired)
    for r, p in zip(samples, paired):  # best vs worst of each prompt
        assert (p["chosen_score"], p["rejected_score"]) == (max(r["scores"]), min(r["scores"]))
    assert len(unpaired) == 36 and sum(u["label"] for u in unpaired) == 12  # k = 3: one above each median


def test_openai_judge_through_the_loopback_server(tiny, tmp_path, monkeypatch):
    server, url = serve(0, model_name="tiny-rater", api_key=FAKE_KEY)
    monkeypatch.setenv("PAIRS_JUDGE_KEY", FAKE_KEY)
    try:
        path = _recipe(tmp_path, tiny, scorer="openai_judge", judge_base_url=url, judge_model="tiny-rater",
                       judge_api_key_env="PAIRS_JUDGE_KEY", limit=4, num_samples=2)
        cfg = parse_pairs_recipe(str(path))
        rows = read_jsonl(tiny["paired_train"])[:6]
        prompts = [r["prompt"] for r in rows for _ in range(2)]
        completions = [c for r in rows for c in (answer(r["prompt"]), spurious_carry(r["prompt"]))]
        scores = build_scorer(cfg).score(prompts, completions)
        assert scores == [10.0 if judge(p, c) else 1.0 for p, c in zip(prompts, completions)]
        assert 10.0 in scores and 1.0 in scores
        out = build_pairs(cfg, recipe_path=str(path))
        monkeypatch.setenv("PAIRS_JUDGE_KEY", "wrong-key")  # the key really is checked by the server
        with pytest.raises(Exception, match="401|invalid api key"):
            build_scorer(cfg).score(prompts[:1], completions[:1])
    finally:
        server.shutdown()
    assert set(server.RequestHandlerClass.requests_seen) == {"tiny-rater"}
    assert len(server.RequestHandlerClass.requests_seen) >= 12 + 8
    for r in _samples(out):
        assert r["scores"] == [10.0 if judge(r["prompt"], c) else 1.0 for c in r["completions"]]
    assert json.loads((out / "provenance.json").read_text())["scorer"]["judge_api_key_env"] == "PAIRS_JUDGE_KEY"
    for f in [*out.rglob("*"), path]:
        assert FAKE_KEY.encode() not in f.read_bytes(), f"API key leaked into {f}"


def test_killed_run_resumes_without_duplicating_or_losing_rows(tiny, tmp_path, monkeypatch):
    whole = _run(tmp_path / "a", tiny, limit=20)  # 5 batches of 4 prompts, uninterrupted
    calls = {"n": 0}
    real_score = scorers.TinyJudge.score

    def dies_in_third_batch(self, prompts, completions):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed between the second batch's write and the third's
        return real_score(self, prompts, completions)

    monkeypatch.setattr(scorers.TinyJudge, "score", dies_in_third_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", tiny, limit=20)
    killed = tmp_path / "b" / "out"
    assert [r["index"] for r in _samples(killed)] == list(range(8)) and not (killed / "provenance.json").exists()
    with open(killed / "samples.jsonl", "a") as f:  # a SIGKILL in mid-write leaves a torn line
        f.write(json.dumps({"index": 8, "prompt": "x", "completions": ["1"], "scores": [0.0]})[:25])
    calls["n"] = -100
    resumed = _run(tmp_path / "b", tiny, limit=20)
    assert calls["n"] == -100 + 3  # only the three missing batches were sampled and scored
    assert (resumed / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()
    for name in ("paired.jsonl", "unpaired.jsonl"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(changed: \['temperature'\]\)"):
        _run(tmp_path / "b", tiny, limit=20, temperature=0.7)  # never mixes two samplings in one folder


def test_sigkilled_process_resumes(tiny, tmp_path):
    """aot-pairs killed for real (SIGKILL, in the middle of its batches), then run again."""
    import signal
    import subprocess
    import sys
    import time

    keys = {"limit": 300, "batch_size": 1, "num_samples": 2}
    path = _recipe(tmp_path / "killed", tiny, **keys)
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
    resumed = _run(tmp_path / "killed", tiny, **keys)
    whole = _run(tmp_path / "whole", tiny, **keys)
    assert (resumed / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()
    assert [r["index"] for r in _samples(resumed)] == list(range(300))
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
        _run(tmp_path, tiny, overrides, **keys)
    assert not (tmp_path / "out").exists()


def _tiny_workdir(tmp_path, tiny, monkeypatch):
    """A scratch checkout: the real tiny recipes, unchanged; the tiny assets; runs/tiny-sft as a finished
    SFT run (the base model, so no SFT training is needed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(REPO / "recipes" / "tiny", tmp_path / "recipes" / "tiny")
    (tmp_path / ".cache").mkdir()
    os.symlink(Path(tiny["base_model"]).parents[1], tmp_path / ".cache" / "tiny")
    sft = tmp_path / "runs" / "tiny-sft"
    AutoModelForCausalLM.from_pretrained(tiny["base_model"]).save_pretrained(sft)
    AutoTokenizer.from_pretrained(tiny["tokenizer"]).save_pretrained(sft)
    (sft / "recipe.json").write_text(json.dumps({"path": "recipes/tiny/sft.yaml", "overrides": [],
                                                 "recipe": {"method": "sft", "tiny_assets": ".cache/tiny"}}))
    (sft / "run.json").write_text(json.dumps({"method": "sft", "completed": 0}))
    monkeypatch.chdir(tmp_path)


def _losses(run: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run / "log_history.json").read_text()) if "loss" in h]


def test_written_data_trains_with_the_tiny_recipes(tiny, tmp_path, monkeypatch, reward_model):
    """paired.jsonl with recipes/tiny/aot_paired.yaml and unpaired.jsonl (truly unpaired) with
    recipes/tiny/aot_unpaired.yaml, as they are, pointed at the files with --dataset_mixture."""
    from aot_handbook.run import train

    _tiny_workdir(tmp_path, tiny, monkeypatch)
    out = _run(tmp_path, tiny, model="runs/tiny-sft", limit=16, scorer="reward_model",
               reward_model=str(reward_model[0]), label_threshold="median", output_dir="runs/pairs")
    for recipe, data in (("aot_paired", "paired"), ("aot_unpaired", "unpaired")):
        mixture = {"datasets": [{"data_files": {"train": str(out / f"{data}.jsonl")}, "test_split": None}]}
        run = train(f"recipes/tiny/{recipe}.yaml", ["--dataset_mixture", json.dumps(mixture), "--max_steps", "2",
                                                   "--logging_steps", "1", "--summary", "false",
                                                   "--per_device_train_batch_size", "8"])
        assert is_complete(run) and len(_losses(run)) == 2 and all(map(math.isfinite, _losses(run)))
    trained = json.loads((tmp_path / "runs/tiny-aot_unpaired/recipe.json").read_text())
    assert "unpaired.jsonl" in json.dumps(trained["overrides"])


def test_rounds_sample_from_the_previous_policy(tiny, tmp_path, monkeypatch, reward_model):
    """rounds: 2 with LoRA training: round 2 samples from round 1's policy (its adapter merged)."""
    _tiny_workdir(tmp_path, tiny, monkeypatch)
    path = _recipe(tmp_path, tiny, model="runs/tiny-sft", limit=8, scorer="reward_model",
                   reward_model=str(reward_model[0]), output_dir="runs/rounds", rounds=2,
                   train_recipe="recipes/tiny/aot_paired.yaml",
                   train_overrides=["--max_steps", 1, "--summary", "false", "--per_device_train_batch_size", 8,
                                    "--use_peft", "true", "--aot_nll_weight", 0.0])
    results = run_rounds(parse_pairs_recipe(str(path)), recipe_path=str(path))
    assert [r["sampled_from"] for r in results] == ["runs/tiny-sft", "runs/rounds/round1/policy/merged"]
    second = json.loads(Path("runs/rounds/round2/data/provenance.json").read_text())
    assert second["loaded"] == {"model": "runs/rounds/round1/policy/merged", "adapter": None, "backend": "hf"}
    assert second["sampling"]["seed"] == 1  # each round its own samples
    assert (Path("runs/rounds/round1/policy") / "adapter_config.json").is_file()
    for r in (1, 2):
        policy = Path(f"runs/rounds/round{r}/policy")
        assert is_complete(policy)
        recipe = json.loads((policy / "recipe.json").read_text())
        start = recipe["overrides"][recipe["overrides"].index("--model_name_or_path") + 1]
        assert start == results[r - 1]["sampled_from"]  # the policy sampled is the one trained from (and reference)
    assert json.loads(Path("runs/rounds/rounds.json").read_text()) == results


def test_make_validate_recipes_checks_pairs_recipes(tmp_path):
    from aot_handbook.validate import ValidationError, validate_file

    assert validate_file(REPO / "recipes" / "tiny" / "pairs.yaml") == "pairs"
    bad = tmp_path / "pairs.yaml"
    bad.write_text((REPO / "recipes" / "tiny" / "pairs.yaml").read_text().replace("num_samples: 8", "num_samples: 1"))
    with pytest.raises(ValidationError, match=r"pairs.yaml: key 'num_samples' must be >= 2"):
        validate_file(bad)


def test_a_training_recipe_that_requires_a_pairs_recipe_builds_its_data_first(tiny, tmp_path, monkeypatch,
                                                                               reward_model):
    """recipes/tiny/onpolicy/*.yaml train on runs/tiny-pairs, which recipes/tiny/pairs.yaml writes: listed in
    `requires`, the data is built first when missing (and only then), and validation accepts the recipe before
    the data exists (its folder is pending), while a data file nobody writes is still an error."""
    from aot_handbook.run import train
    from aot_handbook.validate import ValidationError, validate_recipe

    _tiny_workdir(tmp_path, tiny, monkeypatch)
    pairs = Path("recipes/tiny/pairs.yaml")
    # a reward model scores the untrained model's answers apart (the program judge would find them all wrong)
    pairs.write_text(pairs.read_text().replace("scorer: tiny_judge", "scorer: reward_model")
                     + f"limit: 16\nreward_model: {reward_model[0]}\n")
    validate_recipe("recipes/tiny/onpolicy/aot_paired.yaml")  # runs/tiny-pairs does not exist yet
    assert not Path("runs/tiny-pairs").exists()
    short = ["--max_steps", "2", "--summary", "false", "--per_device_train_batch_size", "8", "--logging_steps", "1"]
    run = train("recipes/tiny/onpolicy/aot_paired.yaml", short)
    provenance = Path("runs/tiny-pairs/provenance.json")
    assert provenance.is_file() and is_complete(run) and len(_losses(run)) == 2
    built = provenance.stat().st_mtime_ns
    train("recipes/tiny/onpolicy/dpo.yaml", short)
    assert provenance.stat().st_mtime_ns == built  # the data is there: not built again

    orphan = Path("recipes/tiny/onpolicy/orphan.yaml")
    orphan.write_text(Path("recipes/tiny/onpolicy/aot_paired.yaml").read_text()
                      .replace("runs/tiny-pairs/paired.jsonl", "runs/nobody/paired.jsonl"))
    with pytest.raises(ValidationError, match=r"data_files\.train' has no such file: 'runs/nobody/paired.jsonl'"):
        validate_recipe(str(orphan))
