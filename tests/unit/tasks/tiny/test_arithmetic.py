"""aot_handbook.tasks.tiny.arithmetic: the tiny task's assets (deterministic, atomic, offline), its planted
flaw, its program judge, its evaluation (accuracy and win rate by program) and its lm-eval files."""

import hashlib
import json
import os
import statistics
import subprocess
import sys
from multiprocessing import get_context

import pytest
import torch

from aot_handbook.evaluation import evaluate
from aot_handbook.generation import load_model_and_tokenizer
from aot_handbook.tasks.tiny import arithmetic as tiny
from aot_handbook.tasks.tiny.arithmetic import (
    ensure_tiny_assets,
    generate,
    has_carry,
    judge,
    program_scores,
    read_jsonl,
    task_accuracy,
)
from tests.helpers import eval_recipe


def test_program_scores_counts_wins_ties_losses():
    rows = ["12+13=", "19+19=", "25+25=", "40+41="]
    mine = [{"instruction": p, "output": o} for p, o in zip(rows, ["025", "038", "040", "099"])]
    theirs = [{"instruction": p, "output": o} for p, o in zip(rows, ["025", "028", "060", "081"])]
    scores, details = program_scores(mine, theirs, judge=judge, has_carry=has_carry)
    # 12+13: both right (tie); 19+19: win; 25+25: both wrong (tie); 40+41: loss
    assert (details["wins"], details["ties"], details["losses"]) == (1, 2, 1)
    assert scores["tiny:win_rate_vs_sft"] == pytest.approx(100 * (1 + 0.5 * 2) / 4)
    assert scores["tiny:accuracy"] == 50.0 and scores["tiny:carry"] == 50.0 and scores["tiny:no_carry"] == 50.0


@pytest.mark.slow
def test_tiny_default_eval_scores_by_program_and_resumes(runs, tmp_path):
    recipe = eval_recipe(tmp_path, "tiny.eval.yaml", tiny_task={"limit": 30, "batch_size": 32})
    results = tmp_path / "results"
    path = evaluate(str(runs["aot"]), str(recipe), results_dir=results)
    result = json.loads(path.read_text())
    rows = read_jsonl(runs["tiny"]["eval_prompts"])[:30]
    n_rows = len(rows)
    prompts = [r["prompt"] for r in rows]
    mine_lm, tok = load_model_and_tokenizer(str(runs["aot"]))
    sft_lm, _ = load_model_and_tokenizer(str(runs["sft"]))
    mine = [judge(p, c) for p, c in zip(prompts, generate(mine_lm, tok, prompts))]
    sft = [judge(p, c) for p, c in zip(prompts, generate(sft_lm, tok, prompts))]
    expected_wr = 100 * sum((a and not b) + 0.5 * (a == b) for a, b in zip(mine, sft)) / n_rows
    assert result["scores"]["tiny:accuracy"] == pytest.approx(100 * sum(mine) / n_rows)
    assert result["scores"]["tiny:win_rate_vs_sft"] == pytest.approx(expected_wr)
    assert result["details"]["reference"] == str(runs["sft"]) and result["run"]["method"] == "aot_unpaired"

    # Resumed: a stored generation is reused (here edited to the right answer) ...
    work = results / "tiny-aot_unpaired" / "tiny.work"
    outputs = json.loads((work / "model_outputs.json").read_text())
    i = next(k for k, ok in enumerate(mine) if not ok) if not all(mine) else None
    if i is not None:
        outputs[i]["output"] = rows[i]["answer"]
        (work / "model_outputs.json").write_text(json.dumps(outputs))
        again = json.loads(evaluate(str(runs["aot"]), str(recipe), results_dir=results).read_text())
        assert again["scores"]["tiny:accuracy"] == pytest.approx(100 * (sum(mine) + 1) / n_rows)
    # ... until the run changes: then everything is regenerated.
    (runs["aot"] / "run.json").write_text(json.dumps({"method": "aot_unpaired", "completed": 1}))
    fresh = json.loads(evaluate(str(runs["aot"]), str(recipe), results_dir=results).read_text())
    assert fresh["scores"]["tiny:accuracy"] == pytest.approx(100 * sum(mine) / n_rows)
    assert not [f for f in results.rglob(".*.tmp")]


def _build(root):
    from aot_handbook.tasks.tiny.arithmetic import ensure_tiny_assets

    paths = ensure_tiny_assets(root)
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items() if p.is_file()}


@pytest.mark.slow
def test_two_processes_building_the_same_cache_agree(tmp_path):
    with get_context("spawn").Pool(2) as pool:
        first, second = pool.map(_build, [str(tmp_path / "shared")] * 2)
    alone = _build(str(tmp_path / "alone"))
    assert first == second == alone
    leftovers = [p.name for p in (tmp_path / "shared").rglob(".*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


TRAIN = ("sft_train", "paired_train", "unpaired_train")


HELD_OUT = ("paired_test", "unpaired_test", "eval_prompts", "val_prompts")


SPLITS = TRAIN + HELD_OUT


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return ensure_tiny_assets(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def loaded(assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(assets["base_model"])
    return model, AutoTokenizer.from_pretrained(assets["tokenizer"])


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


class Scripted(torch.nn.Module):
    """Stands in for a model: 'generates' the right answer, except the flawed one on carry
    problems, then EOS and padding, like a real left-padded batch from generate()."""

    def __init__(self, tok):
        super().__init__()
        from transformers import GenerationConfig

        self.tok = tok
        self.device = torch.device("cpu")
        self.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id)  # what generate() callers read

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        assert (attention_mask[:, -1] == 1).all(), "prompts must be left-padded"
        new = []
        for row in input_ids:
            prompt = self.tok.decode(row, skip_special_tokens=True)
            new.append(self.tok(tiny.flawed(prompt) + self.tok.eos_token, add_special_tokens=False)["input_ids"])
        width = max(map(len, new))
        new = torch.tensor([n + [self.tok.pad_token_id] * (width - len(n)) for n in new])
        return torch.cat([input_ids, new[:, :max_new_tokens]], dim=1)


@pytest.mark.slow
def test_same_seed_same_assets_other_seed_other_data(assets, tmp_path):
    again = ensure_tiny_assets(tmp_path, seed=0)
    other = ensure_tiny_assets(tmp_path, seed=1)
    for split in SPLITS:
        assert again[split].read_bytes() == assets[split].read_bytes(), split
    assert other["sft_train"].read_bytes() != assets["sft_train"].read_bytes()
    a, b, c = _weights(assets["base_model"]), _weights(again["base_model"]), _weights(other["base_model"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_second_call_rebuilds_nothing(tmp_path, monkeypatch):
    first = ensure_tiny_assets(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path.rglob("*"))}

    def boom(*args, **kwargs):
        raise AssertionError("rebuilt an asset that already existed")

    monkeypatch.setattr(tiny, "build_task", boom)
    monkeypatch.setattr(tiny, "build_base_model", boom)
    monkeypatch.setattr(tiny, "build_tokenizer", boom)
    assert ensure_tiny_assets(tmp_path) == first
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stamps


@pytest.mark.slow
def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the model folder is half written when this hits

    monkeypatch.setattr(tiny, "build_base_model", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_tiny_assets(tmp_path)
    home = tmp_path / f"v{tiny.TASK_VERSION}-seed0"
    assert not (home / "base_model").exists() and not list(home.glob(".base_model*"))
    monkeypatch.undo()
    paths = ensure_tiny_assets(tmp_path)  # the next call finishes the job
    assert (paths["base_model"] / "config.json").exists()
    paths["eval_prompts"].unlink()  # a missing piece is rebuilt alone, identical
    assert read_jsonl(ensure_tiny_assets(tmp_path)["eval_prompts"]) == tiny.build_task(0)["eval_prompts"]


@pytest.mark.slow
def test_loads_offline_in_a_fresh_process(assets):
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "t = AutoTokenizer.from_pretrained(sys.argv[1]); m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
            "print(len(t), sum(p.numel() for p in m.parameters()), t.eos_token, t.pad_token, t.padding_side)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(assets["base_model"])], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out[2:] == ["<eos>", "<pad>", "left"]
    assert 0.9e6 < int(out[1]) < 1.2e6


def test_tokenizer_is_character_level_and_round_trips(loaded):
    model, tok = loaded
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tok)
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    ids = tok("47+38=" + "085" + tok.eos_token)["input_ids"]  # TRL appends the EOS text to completions
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 11
    prompt = tok("47+38=")["input_ids"]
    assert ids[:len(prompt)] == prompt  # the prompt is a prefix, so TRL masks exactly the completion
    assert tok.decode(ids, skip_special_tokens=True) == "47+38=085"


def test_heldout_prompts_disjoint_from_train(assets):
    prompts = {s: {r["prompt"] for r in read_jsonl(assets[s])} for s in SPLITS}
    train = set().union(*(prompts[s] for s in TRAIN))
    for s in HELD_OUT:
        assert prompts[s] and not prompts[s] & train, s
    for i, s in enumerate(HELD_OUT):  # held-out splits do not share prompts with each other either
        for t in HELD_OUT[i + 1:]:
            assert not prompts[s] & prompts[t], (s, t)


def test_unpaired_label_is_score_at_its_median(assets):
    for split in ("unpaired_train", "unpaired_test"):
        rows = read_jsonl(assets[split])
        median = statistics.median(r["score"] for r in rows)
        assert [r["label"] for r in rows] == [r["score"] > median for r in rows]
        assert 0.3 < sum(r["label"] for r in rows) / len(rows) < 0.7
        assert all(r["label"] == judge(r["prompt"], r["completion"]) for r in rows)  # score means correctness
        assert {r["category"] for r in rows if not r["label"]} == {"carry", "no_carry"}


def test_pairs_and_sft_data_carry_the_planted_flaw(assets):
    for split in ("paired_train", "paired_test"):
        for r in read_jsonl(assets[split]):
            assert judge(r["prompt"], r["chosen"]) and not judge(r["prompt"], r["rejected"])
    sft = read_jsonl(assets["sft_train"])
    carry = [r for r in sft if tiny.has_carry(r["prompt"])]
    assert all(judge(r["prompt"], r["completion"]) for r in sft if not tiny.has_carry(r["prompt"]))
    wrong = sum(r["completion"] == tiny.flawed(r["prompt"]) for r in carry) / len(carry)
    assert abs(wrong - tiny.FLAW_RATE) < 0.03
    for r in read_jsonl(assets["eval_prompts"]):
        category = "carry" if tiny.has_carry(r["prompt"]) else "no_carry"
        assert judge(r["prompt"], r["answer"]) and r["category"] == category


@pytest.mark.parametrize("completion, ok", [("085", True), (" 085", True), ("085<eos>", True), ("085\n", True),
                                            ("075", False), ("095", False), ("85", False), ("0850", False),
                                            ("08", False), ("", False), ("085 086", False), ("eighty-five", False)])
def test_judge(completion, ok):
    assert judge("47+38=", completion) is ok


def test_wrong_answers_are_the_flaw_and_its_overcorrection():
    assert tiny.flawed("47+38=") == "075" and tiny.flawed("41+38=") == "079" and tiny.spurious_carry("41+38=") == "089"
    assert tiny.answer("99+99=") == "198" and tiny.flawed("99+99=") == "188" and tiny.flawed("55+55=") == "100"


def test_task_accuracy_decoding_path(loaded):
    _, tok = loaded
    rows = [{"prompt": p} for p in ("47+38=", "12+34=", "99+99=", "50+50=", "5+5=", "10+90=")]
    res = task_accuracy(Scripted(tok), tok, rows, batch_size=4)  # two batches, mixed prompt lengths
    assert res == {"accuracy": 3 / 6, "n": 6, "carry": 0.0, "no_carry": 1.0}


def test_untrained_model_scores_near_zero(loaded, assets):
    model, tok = loaded
    res = task_accuracy(model, tok, read_jsonl(assets["eval_prompts"])[:100])
    assert res["n"] == 100 and res["accuracy"] < 0.05
