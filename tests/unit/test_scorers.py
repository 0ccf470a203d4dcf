"""aot_handbook.scorers: a task's program judge, a reward model through the hub code path, an OpenAI-compatible
judge through the loopback server."""

import json

import pytest
import torch

from aot_handbook.evaluation.judge_server import serve
from aot_handbook.pairs import (
    build_pairs,
    make_pairs,
    parse_pairs_recipe,
)
from aot_handbook.scorers import build_scorer
from aot_handbook.tasks import get_task
from aot_handbook.tasks.tiny.arithmetic import (
    answer,
    flawed,
    judge,
    read_jsonl,
    spurious_carry,
)
from tests.helpers import build_pairs_data, samples_of, write_pairs_recipe

PAIRS_KEY = "sk-test-pairs-0b9c-never-written"


def test_tiny_judge_scores_equal_the_judge(tiny, tmp_path):
    rows = read_jsonl(tiny["paired_train"])[:8]
    prompts = [r["prompt"] for r in rows for _ in range(3)]
    completions = [c for r in rows for c in (answer(r["prompt"]), flawed(r["prompt"]), spurious_carry(r["prompt"]))]
    scores = build_scorer(parse_pairs_recipe(str(write_pairs_recipe(tmp_path, tiny)))).score(prompts, completions)
    assert scores == [float(judge(p, c)) for p, c in zip(prompts, completions)]
    assert set(scores) == {0.0, 1.0}

    out = build_pairs_data(tmp_path, tiny, num_samples=4)  # through the whole stage: sampled answers, judged
    samples = samples_of(out)
    assert [r["index"] for r in samples] == list(range(12)) and all(len(r["completions"]) == 4 for r in samples)
    assert [r["prompt"] for r in samples] == [r["prompt"] for r in read_jsonl(tiny["paired_train"])[:12]]
    for r in samples:
        assert r["scores"] == [float(judge(r["prompt"], c)) for c in r["completions"]]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["scorer"] == {"scorer": "tiny_judge"} and prov["loaded"]["model"] == str(tiny["base_model"])
    assert prov["sampling"]["num_samples"] == 4 and prov["sampling"]["seed"] == 0 and prov["prompts"]["sha256"]
    assert prov["counts"]["samples"] == 48
    assert read_jsonl(out / "paired.jsonl") == make_pairs(samples)


@pytest.mark.slow
def test_reward_model_scores_through_the_hub_code_path(tiny, tmp_path, reward_model):
    """scorer reward_model with a local folder: AutoModelForSequenceClassification + the RM's chat template,
    batched with padding; each score equals the model's logit on that one text, computed here directly."""
    path, model, tok = reward_model
    out = build_pairs_data(tmp_path, tiny, scorer="reward_model", reward_model=str(path), label_threshold="median")
    samples = samples_of(out)
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


@pytest.mark.slow
def test_openai_judge_through_the_loopback_server(tiny, tmp_path, monkeypatch):
    server, url = serve(get_task("tiny").judge, 0, model_name="tiny-rater", api_key=PAIRS_KEY)
    monkeypatch.setenv("PAIRS_JUDGE_KEY", PAIRS_KEY)
    try:
        path = write_pairs_recipe(tmp_path, tiny, scorer="openai_judge", judge_base_url=url, judge_model="tiny-rater",
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
    for r in samples_of(out):
        assert r["scores"] == [10.0 if judge(r["prompt"], c) else 1.0 for c in r["completions"]]
    assert json.loads((out / "provenance.json").read_text())["scorer"]["judge_api_key_env"] == "PAIRS_JUDGE_KEY"
    for f in [*out.rglob("*"), path]:
        assert PAIRS_KEY.encode() not in f.read_bytes(), f"API key leaked into {f}"
