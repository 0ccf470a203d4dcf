"""Recipes, chat templates, sweeps, accelerate configs and their validation; offline, CPU, no weights downloaded.

The last tests train one recipe per method for two real steps: the recipe file as written, with the tiny
offline Llama and a local dataset of the recipe's own schema (UltraFeedback / HelpSteer columns) in place
of the 7B model and the hub dataset, and CPU settings passed as command-line overrides.
"""

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from aot_handbook import chat_templates as ct  # noqa: E402
from aot_handbook.models import BASE_MODELS  # noqa: E402
from aot_handbook.recipe import parse_recipe  # noqa: E402
from aot_handbook.sweep import SLURM_LAUNCHER, SweepError, expand, label  # noqa: E402
from aot_handbook.sweep import main as sweep_main  # noqa: E402
from aot_handbook.validate import (  # noqa: E402
    ValidationError,
    collect,
    validate_accelerate_config,
    validate_file,
    validate_recipe,
)
from aot_handbook.validate import main as validate_main  # noqa: E402

datasets.disable_progress_bars()
ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
MODELS = list(BASE_MODELS)
METHODS = ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto")


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name files relative to the repository root


# ------------------------------------------------------------------ the grid and its generator


def _generator():
    spec = importlib.util.spec_from_file_location("recipes_generate", RECIPES / "_generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_recipes_are_up_to_date():
    gen = _generator()
    assert gen.stale_files() == [], "run `python recipes/_generate.py` and commit the result"
    names = set(gen.all_recipes())
    assert {f"{m}/{x}.yaml" for m in MODELS for x in METHODS} <= names  # 5 models x 5 methods
    assert {f"unpaired/{d}-{x}.yaml" for d in ("helpsteer", "pku-beavertails") for x in ("aot_unpaired",
                                                                                         "kto")} <= names


@pytest.mark.parametrize("path", [p.relative_to(ROOT) for p in collect([str(RECIPES)])], ids=str)
def test_every_recipe_validates(path):
    validate_file(path)


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


# ------------------------------------------------------------------ validation failures name file and key


def _write_recipe(tmp_path, **changes):
    raw = yaml.safe_load((RECIPES / "merlinite-7b/aot_unpaired.yaml").read_text())
    raw.update(changes)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("changes,key", [
    ({"learning_rat": 1e-5}, "learning_rat"),
    ({"method": "aot_fancy"}, "method"),
    ({"aot_penalty": "cubic"}, "aot_penalty"),
    ({"aot_sort": "bubble"}, "aot_sort"),
    ({"lora_target_modules": ["q_proj", "query_key_value"]}, "lora_target_modules"),
    ({"dataset_mixture": {"datasets": [{"path": "x/y", "wieght": 0.5}]}}, "wieght"),
    ({"chat_template": "{% for m in messages %}{{ m['content'] }"}, "chat_template"),
])
def test_bad_recipe_fails_naming_file_and_key(tmp_path, changes, key):
    path = _write_recipe(tmp_path, **changes)
    with pytest.raises(ValueError) as err:
        validate_recipe(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_validate_script_stops_at_first_bad_file(tmp_path, capsys):
    good = str(RECIPES / "merlinite-7b/aot_paired.yaml")
    bad = _write_recipe(tmp_path, unknown_key=1)
    assert validate_main([good, str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown_key" in err
    assert validate_main([good, "-q"]) == 0


def test_accelerate_configs(tmp_path):
    for name in ("ddp", "fsdp", "fsdp_qlora", "zero3"):
        validate_accelerate_config(RECIPES / "accelerate_configs" / f"{name}.yaml")
    raw = yaml.safe_load((RECIPES / "accelerate_configs/fsdp.yaml").read_text())
    folder = tmp_path / "accelerate_configs"
    folder.mkdir()
    for changes, key in [({"num_procs": 8}, "num_procs"), ({"fsdp_config": {"fsdp_shard": 1}},
                                                           "fsdp_config.fsdp_shard"),
                         ({"distributed_type": "MULTI_TPU_X"}, "distributed_type"),
                         ({"fsdp_config": {**raw["fsdp_config"], "fsdp_auto_wrap_policy": "EVERY_OTHER"}},
                          "fsdp_config")]:
        path = folder / "bad.yaml"
        path.write_text(yaml.safe_dump({**raw, **changes}))
        with pytest.raises(ValidationError, match=re.escape(f"{path}: key '{key}'")):
            validate_file(path)


def test_slurm_launcher_dry_run():
    subprocess.run(["bash", "-n", str(SLURM_LAUNCHER)], check=True)
    out = subprocess.run(["bash", str(SLURM_LAUNCHER), "recipes/merlinite-7b/aot_unpaired.yaml", "--beta",
                          "0.05"],
                         env={**os.environ, "DRY_RUN": "1", "SLURM_NNODES": "2"}, capture_output=True, text=True,
                         check=True).stdout
    assert "srun" in out and "--num_machines 2 --num_processes 16" in out and "${SLURM_PROCID:-0}" in out
    assert "-m aot_handbook.cli train recipes/merlinite-7b/aot_unpaired.yaml --beta 0.05" in out


# ------------------------------------------------------------------ chat templates: exact strings

CONVERSATION = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 = 4."},
                {"role": "user", "content": "And 3+3?"}]
# written out by hand from each model card / tokenizer_config.json, not produced by the templates
EXPECTED = {
    "merlinite-7b": "<|system|>\nYou are an AI language model developed by IBM Research. "
                    "You are a cautious assistant. "
                    "You carefully follow instructions. You are helpful and harmless and you follow ethical "
                    "guidelines "
                    "and promote positive behavior.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n2+2 = 4.<|endoftext|>\n"
                    "<|user|>\nAnd 3+3?\n<|assistant|>\n",
    "mistral-7b-instruct-v0.2": "<s>[INST] What is 2+2? [/INST]2+2 = 4.</s>[INST] And 3+3? [/INST]",
    "llama3-8b-instruct": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n2+2 = 4.<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "openhermes-2.5-mistral-7b": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                                 "<|im_start|>assistant\n2+2 = 4.<|im_end|>\n"
                                 "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n",
    "starling-lm-7b-alpha": "<s>GPT4 Correct User: What is 2+2?<|end_of_turn|>GPT4 Correct Assistant: 2+2 = 4."
                            "<|end_of_turn|>GPT4 Correct User: And 3+3?<|end_of_turn|>GPT4 Correct Assistant:",
}


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from aot_handbook.tiny import ensure_tiny_assets

    return AutoTokenizer.from_pretrained(ensure_tiny_assets(tmp_path_factory.mktemp("tiny"))["tokenizer"])


@pytest.mark.parametrize("model", MODELS)
def test_chat_template_exact_string(tiny_tokenizer, model):
    info = BASE_MODELS[model]
    # The tokenizer's own machinery, with the real model's special tokens (the tiny one's are <bos>/<eos>).
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, chat_template=info.template, tokenize=False,
                                              add_generation_prompt=True, **info.special_tokens)
    assert text == EXPECTED[model]
    # TRL splits prompt and completion by rendering the prompt with the generation prompt: it must be a prefix.
    prompt = tiny_tokenizer.apply_chat_template(CONVERSATION[:1], chat_template=info.template, tokenize=False,
                                                add_generation_prompt=True, **info.special_tokens)
    full = tiny_tokenizer.apply_chat_template(CONVERSATION[:2], chat_template=info.template, tokenize=False,
                                              **info.special_tokens)
    assert full.startswith(prompt) and full != prompt


def test_merlinite_keeps_a_given_system_prompt(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]],
                                              chat_template=ct.MERLINITE, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n"


# ------------------------------------------------------------------ sweeps


def _sweep(tmp_path, body: dict) -> str:
    path = tmp_path / "test.sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


def test_sweep_expansion_and_names(tmp_path):
    base = "recipes/merlinite-7b/aot_unpaired.yaml"
    path = _sweep(tmp_path, {"base": base, "output_root": "runs/x", "fixed": {"aot_global_sort": True},
                             "runs": [{"aot_sort": "hard"}, {"aot_sort": "soft"}],
                             "grid": {"aot_penalty": ["logistic", "hinge"], "per_device_train_batch_size": [8, 16]}})
    runs = expand(path)
    assert len(runs) == 2 * 2 * 2
    first = runs[0]
    assert first.name == "merlinite-7b-aot_unpaired-sort_hard-penalty_logistic-bs_8"  # fixed keys stay out of names
    assert first.output_dir == f"runs/x/{first.name}"
    assert first.args == ["--aot_global_sort", "true", "--aot_sort", "hard", "--aot_penalty", "logistic",
                          "--per_device_train_batch_size", "8", "--output_dir", first.output_dir,
                          "--run_name", first.name]
    assert len({r.name for r in runs}) == len({r.output_dir for r in runs}) == 8
    assert label({"lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-5}) == \
        "lora_target_modules_q_proj+v_proj-lr_1e-05"


@pytest.mark.parametrize("body,key", [
    ({"grid": {"aot_penalti": ["hinge"]}}, "aot_penalti"),
    ({"runs": [{"learning_rat": 1e-5}]}, "learning_rat"),
    ({"fixed": {"desirable_weight": 2.0}, "grid": {"seed": [1]}},
     "desirable_weight"),  # a KTO key on a DPO-config base
    ({"runs": ["hinge"]}, "runs[0]"),
    ({"grid": {"output_dir": ["a"]}}, "output_dir"),
    ({"grid": {"aot_penalty": ["cubic"]}}, "aot_penalty"),
    ({"grid": {"aot_sort": []}}, "grid.aot_sort"),
    ({"grid": {"seed": [1]}, "launcher": "slurm"}, "launcher"),
])
def test_bad_sweep_fails_naming_file_and_key(tmp_path, body, key):
    path = _sweep(tmp_path, {"base": "recipes/merlinite-7b/aot_paired.yaml", **body})
    with pytest.raises(SweepError) as err:
        expand(path)
    assert path in str(err.value) and key in str(err.value)


def test_sweep_dry_run_prints_commands(capsys):
    assert sweep_main(["recipes/ablations/penalty.sweep.yaml", "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[sweep]")]
    assert len(lines) == 4
    assert lines[1] == ("accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 8 "
                        "-m aot_handbook.cli train recipes/merlinite-7b/aot_unpaired.yaml --aot_penalty hinge "
                        "--output_dir "
                        "runs/ablations/penalty/merlinite-7b-aot_unpaired-penalty_hinge --run_name "
                        "merlinite-7b-aot_unpaired-penalty_hinge")


def test_sweep_skips_completed_runs(tmp_path, capsys):
    path = _sweep(tmp_path, {"base": "recipes/merlinite-7b/aot_paired.yaml", "output_root": str(tmp_path / "runs"),
                             "grid": {"beta": [0.01, 0.1]}})
    for run in expand(path, check=False):
        Path(run.output_dir).mkdir(parents=True)
        (Path(run.output_dir) / "run.json").write_text("{}")
    assert sweep_main([path]) == 0  # nothing launched: both runs are complete
    out = capsys.readouterr().out
    assert out.count("skipped") == 2 and "beta_0.1: complete" in out


def test_ablation_sweeps_cover_the_paper():
    sizes = {name: len(expand(f"recipes/ablations/{name}.sweep.yaml", check=False))
             for name in ("batch_size", "penalty", "beta", "sort", "seeds", "global_sort", "learning_rate")}
    assert sizes == {"batch_size": 4, "penalty": 4, "beta": 5 * 4, "sort": 2 * 3, "seeds": 5 * 4, "global_sort": 4,
                     "learning_rate": 5 * 4}
    rates = {r.overrides["learning_rate"] for r in expand("recipes/ablations/learning_rate.sweep.yaml", check=False)}
    assert min(rates) == 5.0e-6 and max(rates) >= 1e-4  # from the recipes' rate up, for ~64x fewer steps
    penalties = {r.overrides["aot_penalty"] for r in expand("recipes/ablations/penalty.sweep.yaml", check=False)}
    assert penalties == {"logistic", "hinge", "squared_hinge", "least_squares"}


# ------------------------------------------------------------------ unpaired datasets: median binarization


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _local(recipe: str, data_files: dict) -> dict:
    """The recipe's dataset_mixture block with the hub id swapped for local files (everything else as written)."""
    mixture = yaml.safe_load((RECIPES / recipe).read_text())["dataset_mixture"]
    spec = dict(mixture["datasets"][0])
    spec.pop("path")
    spec["data_files"] = data_files
    return {**mixture, "datasets": [spec]}


ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _helpsteer_rows(prompts, start=0):
    rows = []
    for i, p in enumerate(prompts):
        good = (i + start) % 3 != 0
        scores = {a: (4 if good else 1) - (j == 4 and i % 2) for j, a in enumerate(ATTRIBUTES)}
        rows.append({"prompt": p["prompt"], "response": p["completion"], **scores})
    return rows


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    """Files in the schemas of the recipes' hub datasets, filled from the tiny task."""
    from aot_handbook.tiny import ensure_tiny_assets, read_jsonl

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
        "ultrafeedback": {"train_prefs": _jsonl(d / "uf_train.jsonl",
                                                ultrafeedback(read_jsonl(tiny["paired_train"])[:32])),
                          "test_prefs": _jsonl(d / "uf_test.jsonl",
                                               ultrafeedback(read_jsonl(tiny["paired_test"])[:8]))},
        "helpsteer": {"train": _jsonl(d / "hs_train.jsonl", _helpsteer_rows(unpaired[:48])),
                      "validation": _jsonl(d / "hs_val.jsonl", _helpsteer_rows(unpaired[48:56], start=1))},
        "beavertails": {"330k_train": _jsonl(d / "bt_train.jsonl", [
                            {"prompt": r["prompt"], "response": r["completion"], "is_safe": bool(r["label"]),
                             "category": {"violence": not r["label"], "privacy_violation": False}}
                            for r in unpaired[:20]]),
                        "330k_test": _jsonl(d / "bt_test.jsonl", [
                            {"prompt": r["prompt"], "response": r["completion"], "is_safe": bool(r["label"]),
                             "category": {"violence": not r["label"], "privacy_violation": False}}
                            for r in unpaired[20:28]])},
    }


def test_helpsteer_binarized_at_the_median(local_data):
    from aot_handbook.data import DatasetMixture, load_mixture

    block = _local("unpaired/helpsteer-kto.yaml", local_data["helpsteer"])
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


def test_beavertails_label_is_is_safe(local_data):
    from aot_handbook.data import DatasetMixture, load_mixture

    block = _local("unpaired/pku-beavertails-aot_unpaired.yaml", local_data["beavertails"])
    data = load_mixture(DatasetMixture.from_dict(block, source="beavertails"), target="paired_or_unpaired")
    rows = [json.loads(line) for line in Path(local_data["beavertails"]["330k_train"]).read_text().splitlines()]
    assert sorted((c[0]["content"], lab) for c, lab in zip(data["train"]["completion"], data["train"]["label"])) == \
        sorted((r["response"], r["is_safe"]) for r in rows)


# ------------------------------------------------------------------ two real training steps per method

CPU_OVERRIDES = ["--dtype", "float32", "--bf16", "false", "--use_cpu", "true", "--max_steps", "2",
                 "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",  # the recipes' own optim
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


@pytest.mark.parametrize("method", list(TRAIN_CASES))
def test_recipe_trains_two_steps(method, local_data, tmp_path):
    """`--dataset_mixture` cannot be overridden on the command line (HfArgumentParser's `dict` type does not
    parse JSON), so the recipe is copied with only its dataset_mixture block swapped for local files."""
    import torch
    from safetensors.torch import load_file

    from aot_handbook.run import train

    recipe, schema, extra = TRAIN_CASES[method]
    raw = yaml.safe_load((RECIPES / recipe).read_text())
    raw["dataset_mixture"] = _local(recipe, local_data[schema])
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
