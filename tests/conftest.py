"""Fixtures shared by the test modules (helpers they share: tests/helpers.py), and the suite's settings.

Everything runs offline (the hub is never asked). Session fixtures build once per test run: the tiny assets
(``tiny``), the tiny two-attribute task (``tiny_multi``), evaluation-ready run folders (``runs``), a tiny reward
model (``reward_model``), local copies of the recipes' hub datasets (``local_data``).
"""

import os
import re
from pathlib import Path

import datasets
import pytest
import torch
import transformers

from tests.helpers import REPO, recipe_helpsteer_rows, write_jsonl_rows_at, write_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The offline tiny assets (tokenizer, ~1M-parameter Llama, task data), built once per session."""
    from aot_handbook.tasks.tiny.arithmetic import ensure_tiny_assets

    return ensure_tiny_assets(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def in_repo(monkeypatch):
    """The repository root as the working directory: recipes name their files relative to it."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def runs(tiny, tmp_path_factory):
    """runs/tiny-sft (the base model), runs/tiny-aot (full weights, another init), runs/tiny-lora (LoRA on SFT),
    built from the tiny base model, not trained: with the recipe.json / run.json a trained run has, so evaluation
    code can read them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aot_handbook.tasks.tiny.arithmetic import build_base_model

    root = tmp_path_factory.mktemp("runs")
    tok = AutoTokenizer.from_pretrained(tiny["base_model"])
    assets = str(Path(tiny["base_model"]).parents[1])
    common = {"tiny_assets": assets, "dtype": "float32", "seed": 0, "beta": 0.1}
    sft = write_run(root / "tiny-sft", AutoModelForCausalLM.from_pretrained(tiny["base_model"]), tok,
                     {"method": "sft", "model_name_or_path": str(tiny["base_model"]), **common})
    aot = write_run(root / "tiny-aot_unpaired", build_base_model(tok, seed=1), tok,
                     {"method": "aot_unpaired", "model_name_or_path": str(sft), "aot_sort": "hard", **common})
    lora_dir = root / "tiny-dpo_lora"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(sft),
                                    LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                               init_lora_weights=False))
    write_run(lora_dir, peft_model, tok,
               {"method": "dpo", "model_name_or_path": str(sft), "use_peft": True, **common})
    assert (lora_dir / "adapter_config.json").is_file() and not (lora_dir / "model.safetensors").exists()
    return {"sft": sft, "aot": aot, "lora": lora_dir, "tiny": tiny}


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a model or a dataset is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the error")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)


@pytest.fixture
def no_bnb_declared(tmp_path, monkeypatch):
    """setup.cfg as it was before the bnb extra, and no bitsandbytes / deepspeed installed here."""
    from aot_handbook.tooling import launchers

    text = re.sub(r"\nbnb =\n    bitsandbytes[^\n]*\n", "\n", (REPO / "setup.cfg").read_text())
    text = re.sub(r"\ndeepspeed =\n    deepspeed[^\n]*\n", "\n", text)
    cfg = tmp_path / "setup.cfg"
    cfg.write_text(text)
    assert not {"bitsandbytes", "deepspeed"} & set(launchers.declared_packages(cfg))
    monkeypatch.setattr(launchers, "SETUP_CFG", cfg)
    monkeypatch.setattr(launchers, "_installed", lambda dist: False)
    return cfg


@pytest.fixture(scope="session")
def tiny_multi(tmp_path_factory):
    from aot_handbook.tasks.tiny.multi import ensure_assets

    root = tmp_path_factory.mktemp("tiny_multi")
    return ensure_assets(root / "multi", tiny_root=root / "tiny")


@pytest.fixture(scope="session")
def reward_model(tiny, tmp_path_factory):
    """A tiny reward model: sequence-classification head (one logit) on the tiny Llama, with a chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from aot_handbook.tasks.tiny.arithmetic import MODEL_SHAPE

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


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from aot_handbook.tasks.tiny.arithmetic import ensure_tiny_assets

    return AutoTokenizer.from_pretrained(ensure_tiny_assets(tmp_path_factory.mktemp("tiny"))["tokenizer"])


@pytest.fixture(scope="session")
def local_data(tmp_path_factory):
    """Files in the schemas of the recipes' hub datasets, filled from the tiny task."""
    from aot_handbook.io import read_jsonl
    from aot_handbook.tasks.tiny.arithmetic import ensure_tiny_assets

    tiny = ensure_tiny_assets(tmp_path_factory.mktemp("tiny_assets"))
    d = tmp_path_factory.mktemp("data")

    def ultrafeedback(rows):
        out = []
        for i, r in enumerate(rows):
            user = {"role": "user", "content": r["prompt"]}
            chosen = [user, {"role": "assistant", "content": r["chosen"]}]
            out.append({"prompt": r["prompt"], "prompt_id": f"{i:04d}", "chosen": chosen, "messages": chosen,
                        "rejected": [user, {"role": "assistant", "content": r["rejected"]}],
                        "score_chosen": 8.0, "score_rejected": 4.0})
        return out

    unpaired = read_jsonl(tiny["unpaired_train"])
    return {
        "tiny": tiny,
        "ultrafeedback": {"train_prefs": write_jsonl_rows_at(d / "uf_train.jsonl",
                                                ultrafeedback(read_jsonl(tiny["paired_train"])[:32])),
                          "test_prefs": write_jsonl_rows_at(d / "uf_test.jsonl",
                                               ultrafeedback(read_jsonl(tiny["paired_test"])[:8]))},
        "helpsteer": {"train": write_jsonl_rows_at(d / "hs_train.jsonl", recipe_helpsteer_rows(unpaired[:48])),
                      "validation": write_jsonl_rows_at(d / "hs_val.jsonl",
                                                        recipe_helpsteer_rows(unpaired[48:56], start=1))},
        "beavertails": {"330k_train": write_jsonl_rows_at(d / "bt_train.jsonl", [
                            {"prompt": r["prompt"], "response": r["completion"], "is_safe": bool(r["label"]),
                             "category": {"violence": not r["label"], "privacy_violation": False}}
                            for r in unpaired[:20]]),
                        "330k_test": write_jsonl_rows_at(d / "bt_test.jsonl", [
                            {"prompt": r["prompt"], "response": r["completion"], "is_safe": bool(r["label"]),
                             "category": {"violence": not r["label"], "privacy_violation": False}}
                            for r in unpaired[20:28]])},
    }
