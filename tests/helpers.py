"""The helpers several test modules share (one place; fixtures are in conftest.py, no test module imports another).

Recipes written for a test (``write_recipe``, ``write_pairs_recipe``, ``multi_recipe``, ``copy_tiny_recipes``), run
folders and result files built without training (``write_run``, ``method_results``), small models and batches
(``small_model``, ``collated_pairs``, ``tiny_model``), and ``run_make`` (the repository's Makefile in a scratch
folder).
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from datasets import load_dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from aot_handbook.models import BASE_MODELS
from aot_handbook.pairs import (
    build_pairs,
    parse_pairs_recipe,
)
from aot_handbook.run_folder import RunInfo
from aot_handbook.tasks.tiny.arithmetic import (
    read_jsonl,
)

REPO = Path(__file__).resolve().parents[1]  # the repository checkout (tests/ lives in it)


def method_results(tmp_path):
    """Result files of five methods x two seeds (+ NLL), written the way evaluations write them."""
    from aot_handbook.evaluation.results import save_result

    rng = np.random.default_rng(1)
    recipe = {"name": "tiny", "kind": "tiny_task", "_path": "recipes/eval/tiny.eval.yaml", "_sha256": "0"}
    quality = {"aot_paired": 0.9, "aot_unpaired": 0.5, "dpo": 0.5, "kto": 0.5, "ipo": 0.5}
    wins = {}
    for method, q in quality.items():
        for seed in (0, 1):
            run = RunInfo(path=f"runs/{method}-{seed}", name=f"{method}-{seed}", method=method, model="m",
                          base_model="tiny", dataset="tiny", nll_weight=1.0, batch_size=64, seed=seed,
                          config_id=method, **({"sort": "hard", "penalty": "logistic"} if "aot" in method else {}))
            wins[method, seed] = w = 100.0 * (rng.random(200) < q)
            samples = [{"id": f"p{i}", "tiny:win_rate_vs_sft": v} for i, v in enumerate(w)]
            save_result(run, recipe, {"tiny:win_rate_vs_sft": w.mean()}, {"samples": samples}, results_dir=tmp_path)
    old = RunInfo(path="runs/old", name="old", method="dpo", model="m", base_model="tiny", dataset="tiny",
                  nll_weight=0.0, batch_size=64, seed=0, config_id="old")
    save_result(old, recipe, {"tiny:win_rate_vs_sft": 40.0}, {}, results_dir=tmp_path)  # no per-sample scores
    return wins


def write_run(path: Path, model, tokenizer, recipe: dict) -> Path:
    path.mkdir(parents=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "recipe.json").write_text(json.dumps({"path": f"recipes/tiny/{recipe['method']}.yaml", "overrides": [],
                                                   "recipe": recipe}))
    (path / "run.json").write_text(json.dumps({"method": recipe["method"], "completed": 0}))
    return path


def eval_recipe(tmp_path, source: str, **update) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "eval" / source).read_text())
    for block, values in update.items():
        if isinstance(values, dict):
            recipe.setdefault(block, {}).update(values)
        else:
            recipe[block] = values
    path = tmp_path / source
    path.write_text(yaml.safe_dump(recipe))
    return path


def tree_digest(folder) -> dict:
    """Every file under ``folder`` -> sha256 (what "byte-identical" means in these tests)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def multi_recipe(tmp_path, tiny_multi, **changes):
    raw = yaml.safe_load(Path("recipes/tiny/multi/aot_multi.yaml").read_text())
    raw["dataset_mixture"]["datasets"][0]["data_files"] = {
        "train": str(tiny_multi["unpaired_train"]), "test": str(tiny_multi["unpaired_test"])}
    raw |= {"model_name_or_path": str(tiny_multi["base_model"]), "output_dir": str(tmp_path / "run"),
            "tiny_multi_assets": str(Path(tiny_multi["unpaired_train"]).parents[2]),  # built already: a no-op
            "max_steps": 3, "logging_steps": 1, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
            "precompute_ref_log_probs": False, **changes}
    path = tmp_path / "aot_multi.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def write_jsonl_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def helpsteer_rows(n, seed):
    rng = np.random.default_rng(seed)
    return [{"prompt": f"{10 + i}+{20 + i}=", "response": f"{30 + 2 * i:03d}",
             **{a: int(rng.integers(0, 5)) for a in HS}} for i in range(n)]


HS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def run_make(work: Path, *args: str) -> subprocess.CompletedProcess:
    """`make` with the repository's Makefile in a scratch folder, on this interpreter (no venv set-up)."""
    for name in ("setup.cfg", "pyproject.toml"):
        if not (work / name).exists():
            (work / name).symlink_to(REPO / name)
    python = sys.executable
    stamp = work / ".cache" / f"deps-installed-{python.replace('/', '_')}"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()  # this environment is set up already: make must not pip install into it
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for name in ("ACCELERATE_USE_CPU", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"):  # under `make test`: a fresh make
        env.pop(name, None)
    return subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), *args, f"PYTHON={python}"],
                          cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


# (prompt, chosen, rejected) lengths: padding both ways, a one-token prompt, one-token completions.
PAIR_SHAPES = [(5, 3, 4), (1, 2, 6), (7, 1, 1), (3, 5, 2), (2, 4, 4)]


def collated_pairs(shapes=PAIR_SHAPES, seed=0, **collator):
    """TRL's own collator output for random token pairs."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, 60, (n,), generator=g).tolist()

    examples = [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in shapes]
    return DataCollatorForPreference(pad_token_id=0, **collator)(examples)


def pair_grads(model, logps):
    model.zero_grad()
    chosen, rejected = logps
    (chosen.sum() - 0.7 * rejected.sum()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def small_model(model_type, attention):
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
    if model_type == "mixtral":
        kw.update(num_local_experts=4, num_experts_per_tok=2)
    if model_type == "gpt2":
        kw = dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw), attn_implementation=attention)


def two_row_logps(model, batch):
    lp = token_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                      batch["input_ids"])
    return (lp * batch["completion_mask"][:, 1:]).sum(1).chunk(2)


def token_logps(logits, labels):
    """Plain log_softmax + gather of the next-token labels (not TRL's fused head)."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return logp.gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]


def write_pairs_recipe(tmp_path, tiny, **keys) -> Path:
    base = {"model": str(tiny["base_model"]), "prompts": str(tiny["paired_train"]), "limit": 12,
            "output_dir": str(tmp_path / "out"), "num_samples": 3, "max_new_tokens": 4, "batch_size": 4,
            "scorer": "tiny_judge"}
    path = tmp_path / "data.pairs.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**base, **keys}))
    return path


def build_pairs_data(tmp_path, tiny, overrides=(), **keys) -> Path:
    path = write_pairs_recipe(tmp_path, tiny, **keys)
    return build_pairs(parse_pairs_recipe(str(path), list(overrides)), recipe_path=str(path))


def samples_of(out: Path) -> list[dict]:
    return read_jsonl(out / "samples.jsonl")


def tiny_workdir(tmp_path, tiny, monkeypatch):
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


def logged_losses(run: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run / "log_history.json").read_text()) if "loss" in h]


def write_validation_recipe(tmp_path, **changes):
    raw = yaml.safe_load((REPO / "recipes" / "merlinite-7b/aot_unpaired.yaml").read_text())
    raw.update(changes)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def write_jsonl_rows_at(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_recipe(tmp_path, tiny, **changes):
    recipe = {
        "method": "aot_paired", "model_name_or_path": str(tiny["base_model"]), "dtype": "float32",
        "dataset_mixture": {"datasets": [{"data_files": {"train": str(tiny["paired_train"])}, "test_split": None}]},
        "bf16": False, "use_cpu": True, "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no",
        "max_steps": 1, "per_device_train_batch_size": 4, "summary": False, "output_dir": str(tmp_path / "run"),
    }
    recipe.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del recipe[key]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def scratch_grid(tmp_path, monkeypatch, sft_steps=20):
    """The real tiny recipes, grids and eval recipes in a scratch working directory (``tmp_path``, made the cwd),
    the SFT stage shortened to ``sft_steps``: what ``aot-reproduce`` tests run in."""
    for sub in ("recipes/tiny", "recipes/eval"):
        shutil.copytree(REPO / sub, tmp_path / sub)
    sft = tmp_path / "recipes" / "tiny" / "sft.yaml"
    sft.write_text(yaml.safe_dump({**yaml.safe_load(sft.read_text()), "max_steps": sft_steps}))
    monkeypatch.chdir(tmp_path)


def copy_tiny_recipes(tmp_path, steps):
    """The real tiny recipes, shortened, in a scratch working directory."""
    (tmp_path / "recipes" / "tiny").mkdir(parents=True)
    from aot_handbook.recipe import recipe_kind

    for path in (REPO / "recipes" / "tiny").glob("*.yaml"):
        if recipe_kind(path) != "train":  # the pairs recipe, make reproduce-tiny's grid
            continue
        recipe = yaml.safe_load(path.read_text())
        recipe.update(max_steps=steps[recipe["method"] == "sft"], logging_steps=1)
        (tmp_path / "recipes" / "tiny" / path.name).write_text(yaml.safe_dump(recipe))


# the trainer arguments of the packing tests (tests/unit/test_packing*.py): CPU, no saving, beta 0.5
PACKING_ARGS = dict(bf16=False, use_cpu=True, report_to=[], save_strategy="no", gradient_checkpointing=False, seed=0,
                    dataloader_num_workers=0, beta=0.5)
TRAINER_ARGS = dict(bf16=False, use_cpu=True, report_to=[], save_strategy="no", gradient_checkpointing=False,
           logging_steps=1, seed=0, dataloader_num_workers=0)


def tiny_rows(tiny, split, n):
    return load_dataset("json", data_files=str(tiny[split]), split="train").select(range(n))


def tiny_model(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny["base_model"])


def train_steps(tiny, trainer_cls, args, split, n=32, ref=True):
    torch.manual_seed(0)
    model = tiny_model(tiny)
    before = {k: v.clone() for k, v in model.named_parameters()}
    kwargs = {"ref_model": tiny_model(tiny)} if ref else {}
    trainer = trainer_cls(model=model, args=args, train_dataset=tiny_rows(tiny, split, n),
                          processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]), **kwargs)
    trainer.train()
    changed = sum(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, changed, losses


HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def recipe_helpsteer_rows(prompts, start=0):
    """Rows in HelpSteer's schema (prompt, response, five 0-4 scores) from the tiny task's labelled answers."""
    rows = []
    for i, p in enumerate(prompts):
        good = (i + start) % 3 != 0
        scores = {a: (4 if good else 1) - (j == 4 and i % 2) for j, a in enumerate(HELPSTEER_ATTRIBUTES)}
        rows.append({"prompt": p["prompt"], "response": p["completion"], **scores})
    return rows


def sort_scope_recipe(tmp_path, **keys):
    """A one-row recipe file setting ``keys`` (aot_sort_scope and the batch keys): parsed, never trained."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3", "a": 1}\n')
    raw = {"model_name_or_path": "some/model", "dataset_mixture": {"datasets": [{"data_files": {"train": str(data)}}]},
           "use_cpu": True, "bf16": False, **keys}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def run_info_of(tmp_path, name, **resolved):
    """RunInfo.describe() of a run folder holding only the recipe.json of an aot_unpaired run (16 per device)."""
    from aot_handbook.run_folder import RunInfo

    folder = tmp_path / name
    folder.mkdir()
    recipe = {"method": "aot_unpaired", "model_name_or_path": "runs/tiny-sft", "per_device_train_batch_size": 16,
              **resolved}
    (folder / "recipe.json").write_text(json.dumps({"path": "recipes/tiny/aot_unpaired.yaml", "resolved": recipe}))
    return RunInfo.from_path(folder).describe()


def uneven_pairs(n, seed=0) -> list[dict]:
    """Paired rows of uneven lengths in the tiny tokenizer's alphabet: something to save by packing (the tiny
    task's own rows are all about the same length, so its batches have little padding to drop)."""
    rng = random.Random(seed)

    def text(lo, hi):
        return "".join(rng.choice("0123456789+=abcdefgh") for _ in range(rng.randint(lo, hi)))

    return [{"prompt": text(2, 28), "chosen": text(1, 24), "rejected": text(1, 24)} for _ in range(n)]


def unpaired_rows(pairs: list[dict]) -> list[dict]:
    """Each pair as two unpaired rows (prompt, completion, label), chosen then rejected."""
    return [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in pairs for side in ("chosen", "rejected")]


# Tokenizers that mimic each base model's special tokens (tests of prompt building: generation, run folders)
CHARS = [chr(i) for i in range(32, 127)] + ["\n"]


# Special tokens of each model's real tokenizer (tokenizer_config.json), the end-of-turn token of its template,
# and whether its template writes BOS (then exactly one BOS; else none, as TRL tokenizes its training prompts).
MODELS = {
    "merlinite-7b": dict(bos="<s>", eos="</s>", extra=["<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"],
                         end_of_turn="<|endoftext|>", bos_in_template=False),
    "mistral-7b-instruct-v0.2": dict(bos="<s>", eos="</s>", extra=[], end_of_turn="</s>", bos_in_template=True),
    "llama3-8b-instruct": dict(bos="<|begin_of_text|>", eos="<|eot_id|>",
                               extra=["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
                               end_of_turn="<|eot_id|>", bos_in_template=True),
    "openhermes-2.5-mistral-7b": dict(bos="<s>", eos="<|im_end|>", extra=["</s>", "<|im_start|>"],
                                      end_of_turn="<|im_end|>", bos_in_template=False),
    "starling-lm-7b-alpha": dict(bos="<s>", eos="<|end_of_turn|>", extra=["</s>"], end_of_turn="<|end_of_turn|>",
                                 bos_in_template=True),
}


INSTRUCTIONS = ["Name a prime.", "Write two words about the sea, please."]


def mimic_tokenizer(bos: str, eos: str, extra: list[str], chat_template: str | None = None, pad: str = "<pad>"):
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([pad, "<unk>", bos, eos, *extra]))
    vocab = {t: i for i, t in enumerate(specials + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(specials)
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token="<unk>", chat_template=chat_template)


def model_tokenizer(name: str):
    m = MODELS[name]
    return mimic_tokenizer(m["bos"], m["eos"], m["extra"], BASE_MODELS[name].template)
