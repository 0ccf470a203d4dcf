"""The tiny offline assets: deterministic, idempotent, atomic, loadable offline, and a task
whose judge and held-out splits mean what they say."""

import os
import statistics
import subprocess
import sys

import pytest
import torch

from aot_handbook import tiny
from aot_handbook.tiny import ensure_tiny_assets, judge, read_jsonl, task_accuracy

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


def test_task_accuracy_decoding_path(loaded):
    _, tok = loaded
    rows = [{"prompt": p} for p in ("47+38=", "12+34=", "99+99=", "50+50=", "5+5=", "10+90=")]
    res = task_accuracy(Scripted(tok), tok, rows, batch_size=4)  # two batches, mixed prompt lengths
    assert res == {"accuracy": 3 / 6, "n": 6, "carry": 0.0, "no_carry": 1.0}


def test_untrained_model_scores_near_zero(loaded, assets):
    model, tok = loaded
    res = task_accuracy(model, tok, read_jsonl(assets["eval_prompts"])[:100])
    assert res["n"] == 100 and res["accuracy"] < 0.05


def test_on_policy_pairs_take_the_models_own_wrong_answers(loaded):
    _, tok = loaded
    rows = [{"prompt": p, "chosen": tiny.answer(p), "rejected": "offline"} for p in ("47+38=", "12+34=")]
    pairs = tiny.on_policy_pairs(Scripted(tok), tok, rows, k=2)
    assert [r["rejected"] for r in pairs] == ["075", "offline"]  # right on 12+34: keeps the offline answer
    assert [r["chosen"] for r in pairs] == [r["chosen"] for r in rows]
