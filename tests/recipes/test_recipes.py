"""The recipe files under recipes/: generated from recipes/_generate.py, every one valid, the paper's settings,
the ablation sweeps, the unpaired recipes on local copies of their data, and every tiny recipe trains."""

import importlib.util
import json
import os
from pathlib import Path

import datasets  # noqa: E402
import numpy as np
import pytest
import torch
import yaml

from aot_handbook import chat_templates as ct  # noqa: E402
from aot_handbook.models import BASE_MODELS  # noqa: E402
from aot_handbook.plan import train
from aot_handbook.recipe import parse_recipe  # noqa: E402
from aot_handbook.run_folder import is_complete
from aot_handbook.tooling.sweep import expand  # noqa: E402
from aot_handbook.tooling.validate import (  # noqa: E402
    collect,
    validate_file,
)
from tests.helpers import HS, REPO, copy_tiny_recipes, helpsteer_rows, write_jsonl_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets.disable_progress_bars()


def recipe_two_steps(tmp_path, recipe, data_files, base_model, extra=()):
    from aot_handbook.plan import train

    raw = yaml.safe_load(Path(recipe).read_text())
    spec = dict(raw["dataset_mixture"]["datasets"][0])
    spec.pop("path")
    raw["dataset_mixture"] = {**raw["dataset_mixture"], "datasets": [{**spec, "data_files": data_files}]}
    copy = tmp_path / Path(recipe).name
    copy.write_text(yaml.safe_dump(raw))
    overrides = ["--model_name_or_path", str(base_model), "--dtype", "float32", "--bf16", "false", "--use_cpu",
                 "true", "--max_steps", "2", "--per_device_train_batch_size", "8", "--gradient_checkpointing",
                 "false", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1",
                 "--dataloader_num_workers", "0", "--report_to", "none", "--output_dir", str(tmp_path / "run"), *extra]
    out = train(str(copy), overrides)
    logs = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert len(logs) == 2 and all(np.isfinite(h["loss"]) for h in logs)
    return raw, logs, json.loads((out / "metrics.json").read_text())


def local_copy(recipe: str, data_files: dict) -> dict:
    """The recipe's dataset_mixture block with the hub id swapped for local files (everything else as written)."""
    mixture = yaml.safe_load((RECIPES / recipe).read_text())["dataset_mixture"]
    spec = dict(mixture["datasets"][0])
    spec.pop("path")
    spec["data_files"] = data_files
    return {**mixture, "datasets": [spec]}


@pytest.mark.slow
def test_helpsteer_multi_recipe_trains_two_steps(tmp_path, tiny_multi):
    files = {"train": write_jsonl_rows(tmp_path / "hs_train.jsonl", helpsteer_rows(48, 3)),
             "validation": write_jsonl_rows(tmp_path / "hs_val.jsonl", helpsteer_rows(8, 4))}
    # 8 x 2 of the recipe's 2 x 16 accumulation: the optimizer batch sorted whole, at a test's cost
    raw, logs, metrics = recipe_two_steps(tmp_path, "recipes/unpaired/helpsteer-aot_multi.yaml", files,
                                          tiny_multi["base_model"], extra=["--gradient_accumulation_steps", "2"])
    assert set(raw["aot_attributes"]) == set(HS) and set(metrics["attributes"]) == set(HS)
    assert all(f"rewards/{a}/empty" in logs[0] for a in HS)


@pytest.mark.slow
def test_beavertails_multi_recipe_trains_two_steps(tmp_path, tiny_multi):
    raw = yaml.safe_load(Path("recipes/unpaired/pku-beavertails-aot_multi.yaml").read_text())
    flags = [a["score"].split(".", 1)[1] for a in raw["dataset_mixture"]["datasets"][0]["attributes"].values()]
    assert len(flags) == 14

    def rows(n, start):  # unsafe rows carry one or two flags; every flag on at least one unsafe row
        out = []
        for i in range(start, start + n):
            unsafe = i % 2 == 0
            cat = {f: unsafe and (i // 2 % 14 == j or (i // 2 + 5) % 14 == j) for j, f in enumerate(flags)}
            out.append({"prompt": f"{i}+1=", "response": f"{i + 1:03d}", "is_safe": not unsafe, "category": cat})
        return out

    files = {"330k_train": write_jsonl_rows(tmp_path / "bt_train.jsonl", rows(40, 0)),
             "330k_test": write_jsonl_rows(tmp_path / "bt_test.jsonl", rows(8, 40))}
    # sorted sets of one micro-batch of 8 (the recipe's accumulation sorts 8 x 16, where every flag shows up)
    _, logs, metrics = recipe_two_steps(tmp_path, "recipes/unpaired/pku-beavertails-aot_multi.yaml", files,
                                        tiny_multi["base_model"], extra=["--gradient_accumulation_steps", "1"])
    assert len(metrics["attributes"]) == 14
    # rare flags: some attribute had no flagged answer in some batch, and it is counted
    assert sum(a["empty"] for a in metrics["attributes"].values()) > 0


RECIPES = REPO / "recipes"


MODELS = list(BASE_MODELS)


METHODS = ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto")


def _generator():
    spec = importlib.util.spec_from_file_location("recipes_generate", RECIPES / "_generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


CPU_OVERRIDES = ["--dtype", "float32", "--bf16", "false", "--use_cpu", "true", "--max_steps", "2",
                 "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",  # the recipes' own optim
                 "--gradient_accumulation_steps", "2",  # (the recipes' 16: the same two passes, at 1/8 the cost)
                 "--gradient_checkpointing", "false", "--eval_strategy", "no", "--save_strategy", "no",
                 "--logging_steps", "1", "--dataloader_num_workers", "0", "--report_to", "none"]


# method -> (recipe, data schema, extra overrides): one recipe per method, spread over the base models so
# every pinned chat template is trained through once.
TRAIN_CASES = {
    "aot_paired": ("merlinite-7b/aot_paired.yaml", "ultrafeedback", []),
    "aot_unpaired": ("unpaired/helpsteer-aot_unpaired.yaml", "helpsteer", []),
    "dpo": ("starling-lm-7b-alpha/dpo.yaml", "ultrafeedback", []),
    "ipo": ("openhermes-2.5-mistral-7b/ipo.yaml", "ultrafeedback", []),
    # Llama-3's recipe relies on the tokenizer's template; the tiny tokenizer ships none, so pass the real one.
    "kto": ("llama3-8b-instruct/kto.yaml", "ultrafeedback", ["--chat_template", ct.LLAMA3_INSTRUCT]),
}


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_generated_recipes_are_up_to_date():
    gen = _generator()
    assert gen.stale_files() == [], "run `python recipes/_generate.py` and commit the result"
    names = set(gen.all_recipes())
    assert {f"{m}/{x}.yaml" for m in MODELS for x in METHODS} <= names  # 5 models x 5 methods
    assert {f"unpaired/{d}-{x}.yaml" for d in ("helpsteer", "pku-beavertails") for x in ("aot_unpaired",
                                                                                         "kto")} <= names


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
@pytest.mark.parametrize("path", [p.relative_to(REPO) for p in collect([str(RECIPES)])], ids=str)
def test_every_recipe_validates(path):
    validate_file(path)


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
@pytest.mark.parametrize("model", MODELS)
def test_paper_settings(model):
    """What every grid recipe shares (paper Sec. 5): LoRA on attention + MLP, beta 0.01, bf16; AdamW (torch's,
    which runs under every launcher; the paper's paged AdamW is an opt-in through the bnb extra)."""
    for method in METHODS:
        r = parse_recipe(f"recipes/{model}/{method}.yaml", ["--use_cpu", "true"])
        assert r.method == method and r.model.model_name_or_path == BASE_MODELS[model].hub_id
        assert r.model.use_peft and set(r.model.lora_target_modules) == {
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert r.training.beta == 0.01 and r.training.optim == "adamw_torch" and r.training.bf16
        assert r.training.gradient_checkpointing and r.training.num_train_epochs == 1
        assert r.recipe.dataset_mixture["datasets"][0]["path"] == "HuggingFaceH4/ultrafeedback_binarized"
        expected_template = BASE_MODELS[model].template if BASE_MODELS[model].set_in_recipe else None
        assert r.recipe.chat_template == expected_template
        if method.startswith("aot"):
            assert r.training.aot_penalty == "logistic" and r.training.aot_global_sort is False


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_ablation_sweeps_cover_the_paper():
    sizes = {name: len(expand(f"recipes/ablations/{name}.sweep.yaml", check=False))
             for name in ("batch_size", "penalty", "beta", "sort", "seeds", "global_sort", "learning_rate")}
    assert sizes == {"batch_size": 6, "penalty": 4, "beta": 5 * 4, "sort": 2 * 3, "seeds": 5 * 4, "global_sort": 4,
                     "learning_rate": 5 * 4}
    rates = {r.overrides["learning_rate"] for r in expand("recipes/ablations/learning_rate.sweep.yaml", check=False)}
    assert min(rates) == 5.0e-6 and max(rates) >= 1e-4  # from the recipes' rate up, for ~64x fewer steps
    penalties = {r.overrides["aot_penalty"] for r in expand("recipes/ablations/penalty.sweep.yaml", check=False)}
    assert penalties == {"logistic", "hinge", "squared_hinge", "least_squares"}


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_helpsteer_binarized_at_the_median(local_data):
    from aot_handbook.data import DatasetMixture, load_mixture

    block = local_copy("unpaired/helpsteer-kto.yaml", local_data["helpsteer"])
    data = load_mixture(DatasetMixture.from_dict(block, source="helpsteer"), target="unpaired")
    rows = [json.loads(line) for line in Path(local_data["helpsteer"]["train"]).read_text().splitlines()]
    sums = sorted(sum(r[a] for a in ATTRIBUTES) for r in rows)
    median = (sums[len(sums) // 2 - 1] + sums[len(sums) // 2]) / 2
    expected = sorted((r["prompt"], r["response"], sum(r[a] for a in ATTRIBUTES) > median) for r in rows)
    train = data["train"]
    assert all(p[0]["role"] == "user" and c[0]["role"] == "assistant"  # conversational: true
               for p, c in zip(train["prompt"], train["completion"]))
    got = sorted((p[0]["content"], c[0]["content"], lab) for p, c, lab in
                 zip(train["prompt"], train["completion"], train["label"]))
    assert got == expected
    assert set(data["train"]["label"]) == {True, False} and len(data["test"]) == 8


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_beavertails_label_is_is_safe(local_data):
    from aot_handbook.data import DatasetMixture, load_mixture

    block = local_copy("unpaired/pku-beavertails-aot_unpaired.yaml", local_data["beavertails"])
    data = load_mixture(DatasetMixture.from_dict(block, source="beavertails"), target="paired_or_unpaired")
    rows = [json.loads(line) for line in Path(local_data["beavertails"]["330k_train"]).read_text().splitlines()]
    assert sorted((c[0]["content"], lab) for c, lab in zip(data["train"]["completion"], data["train"]["label"])) == \
        sorted((r["response"], r["is_safe"]) for r in rows)


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
@pytest.mark.parametrize("method", list(TRAIN_CASES))
def test_recipe_trains_two_steps(method, local_data, tmp_path):
    """`--dataset_mixture` cannot be overridden on the command line (HfArgumentParser's `dict` type does not
    parse JSON), so the recipe is copied with only its dataset_mixture block swapped for local files."""
    from safetensors.torch import load_file

    from aot_handbook.plan import train

    recipe, schema, extra = TRAIN_CASES[method]
    raw = yaml.safe_load((RECIPES / recipe).read_text())
    raw["dataset_mixture"] = local_copy(recipe, local_data[schema])
    copy = tmp_path / Path(recipe).parent.name / Path(recipe).name
    copy.parent.mkdir()
    copy.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    train(str(copy), ["--model_name_or_path", str(local_data["tiny"]["base_model"]), *CPU_OVERRIDES,
                      "--output_dir", str(out), *extra])
    assert (out / "run.json").is_file() and (out / "adapter_config.json").is_file()
    losses = [h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert len(losses) == 2 and all(map(lambda x: x == x, losses))  # two steps, no NaN
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert {k.split(".")[-3] for k in adapter if "lora_A" in k} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert any(torch.count_nonzero(b) > 0 for b in lora_b), "LoRA B matrices still zero: no update happened"
    recorded = json.loads((out / "recipe.json").read_text())
    assert recorded["recipe"]["method"] == method


@pytest.mark.slow
@pytest.mark.parametrize("method", ["aot_paired", "dpo", "ipo", "kto"])
def test_every_tiny_recipe_trains(tmp_path_factory, monkeypatch, method):
    """`make train RECIPE=recipes/tiny/<method>.yaml` for the other methods (the SFT stage trained once)."""
    work = tmp_path_factory.getbasetemp() / "tiny-methods"
    if not work.exists():
        copy_tiny_recipes(work, steps={True: 10, False: 2})
    monkeypatch.chdir(work)
    out = train(f"recipes/tiny/{method}.yaml", ["--precompute_ref_log_probs", "false", "--summary", "false"])
    assert is_complete(out) and (out / "model.safetensors").exists()
    losses = [h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert len(losses) == 2 and all(x == x for x in losses)  # two real steps, no NaN


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_every_7b_aot_recipe_sorts_the_papers_32_per_gpu():
    """The generated 7B AOT recipes reach the paper's 32 per GPU at a micro-batch of 2 (recipes/_generate.py)."""
    recipes = sorted(p for p in Path("recipes").glob("*/*.yaml") if p.parent.name not in ("tiny", "ablations", "eval",
                                                                                          "accelerate_configs"))
    aot = [p for p in recipes if yaml.safe_load(p.read_text()).get("method", "").startswith("aot")]
    assert len(aot) >= 14
    for path in aot:
        args = parse_recipe(str(path), ["--use_cpu", "true"]).training
        assert args.per_device_train_batch_size == 2 and args.aot_sort_scope == "optimizer_batch", path
        assert args.sort_batch(ranks=8) == 32, path  # aot_global_sort false: each GPU sorts its own 32
        assert "Sort batch (ranks x per-device x accumulation): 1 x 2 x 16 = 32 per GPU" in path.read_text()
