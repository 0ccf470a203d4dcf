"""aot_handbook.run_folder: a run's fingerprint decides whether it resumes, is done or is refused; RunInfo reads a
run folder (or a base model) for evaluation and tables."""

import json
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from aot_handbook import chat_templates as ct
from aot_handbook.errors import UserError
from aot_handbook.generation import (
    build_prompt_ids,
    load_tokenizer,
)
from aot_handbook.plan import train
from aot_handbook.provenance import sha256
from aot_handbook.recipe import parse_recipe
from aot_handbook.run_folder import RunInfo
from tests.helpers import (
    INSTRUCTIONS,
    MODELS,
    REPO,
    mimic_tokenizer,
    model_tokenizer,
    run_info_of,
    tree_digest,
    write_recipe,
)


def with_checkpoint(tiny, tmp_path):
    path = write_recipe(tmp_path, tiny, max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3)
    out = train(path)
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    return path, out


STALE = ["--aot_penalty", "hinge", "--beta", "0.5", "--learning_rate", "1e-4"]


def _run_folder(root: Path, name: str, meta: dict) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "recipe.json").write_text(json.dumps(meta))
    return run


@pytest.mark.slow
def test_bare_flag_override_is_reported_by_runinfo(tiny, tmp_path):
    """``--use_peft`` (no value) trains a LoRA adapter, and the run is reported with use_peft true."""
    out = train(write_recipe(tmp_path, tiny, learning_rate=1e-3), ["--use_peft", "--lora_r", "4"])
    assert (out / "adapter_config.json").is_file()
    info = RunInfo.from_path(out)
    assert info.recipe["use_peft"] is True and info.adapter == str(out)
    assert info.recipe["lora_r"] == 4
    meta = json.loads((out / "recipe.json").read_text())
    assert meta["overrides"] == ["--use_peft", "--lora_r", "4"]  # provenance kept
    assert meta["resolved"]["data_format"] == "paired"
    assert json.loads((out / "run.json").read_text())["data_format"] == "paired"


def test_seeds_share_a_config_id_other_settings_do_not(tiny, tmp_path):
    path = write_recipe(tmp_path, tiny)
    ids = {}
    for name, overrides in (("a", ["--seed", "1", "--output_dir", "x/a"]), ("b", ["--seed", "2", "--run_name", "b"]),
                            ("c", ["--seed", "1", "--beta", "0.5"])):
        r = parse_recipe(path, overrides)
        run = _run_folder(tmp_path / "runs", name, {"path": path, "overrides": overrides, "recipe": r.raw,
                                                    "resolved": r.resolved()})
        ids[name] = RunInfo.from_path(run).config_id
    assert ids["a"] == ids["b"] != ids["c"]


def test_an_old_run_folder_without_resolved(tiny, tmp_path):
    recipe = yaml.safe_load(Path(write_recipe(tmp_path, tiny)).read_text())
    plain = _run_folder(tmp_path, "old", {"path": "r.yaml", "overrides": [], "recipe": recipe})
    assert RunInfo.from_path(plain).recipe == recipe  # no overrides: its YAML is what ran
    with_flags = _run_folder(tmp_path, "old-peft", {"path": "r.yaml", "overrides": ["--use_peft"], "recipe": recipe})
    with pytest.raises(ValueError, match=r"old-peft/recipe.json: written by an older version .*--use_peft"):
        RunInfo.from_path(with_flags)


def test_run_info_reads_run_folders(runs):
    lora = RunInfo.from_path(str(runs["lora"]))
    assert (lora.adapter, lora.model, lora.method) == (str(runs["lora"]), str(runs["sft"]), "dpo")
    assert lora.base_model == "tiny" and lora.dataset == "tiny"
    assert lora.recipe_sha256 == sha256(runs["lora"] / "recipe.json")
    full = RunInfo.from_path(str(runs["aot"]))
    assert (full.adapter, full.model, full.reference, full.sort) == (None, str(runs["aot"]), str(runs["sft"]), "hard")
    assert RunInfo.from_path("ibm/merlinite-7b").describe()["base_model"] == "merlinite-7b"


def test_a_run_is_compared_with_the_finished_run_it_started_from(tmp_path):
    """The NLL control is an SFT-method run started from the SFT run: its win rate is against that run."""
    from aot_handbook.run_folder import RunInfo

    def run(name, start):
        d = tmp_path / name
        d.mkdir()
        (d / "recipe.json").write_text(json.dumps({"path": f"recipes/tiny/{name}.yaml",
                                                   "recipe": {"method": "sft", "model_name_or_path": start}}))
        (d / "run.json").write_text("{}")
        return d

    sft = run("sft", str(tmp_path / "base_model"))  # the SFT stage, from the untrained base model
    nll = run("nll_control", str(sft))
    assert RunInfo.from_path(nll).parent_run() == str(sft)
    assert RunInfo.from_path(sft).parent_run() == str(sft)


def _cell(results_dir, label="AOT paired", column="Accuracy"):
    from aot_handbook.tables import render

    grid = [line.split(" | ") for line in render("tiny", results_dir)["md"].read_text().splitlines()
            if line.startswith("| ")]
    return grid[[r[0].strip("| ") for r in grid].index(label)][[c.strip("| ") for c in grid[0]].index(column)].strip()


@pytest.mark.slow
@pytest.mark.parametrize("finished", [False, True], ids=["checkpoint", "finished_run"])
def test_other_configuration_is_refused_then_overwritten(tiny, tmp_path, finished):
    path, out = with_checkpoint(tiny, tmp_path)
    if not finished:  # an interrupted run: checkpoint-2 is there, run.json is not
        (out / "run.json").unlink()
    old_weights = load_file(out / "checkpoint-2" / "model.safetensors")
    before = tree_digest(out)
    with pytest.raises(UserError) as err:
        train(path, STALE)
    message = str(err.value)
    for key in ("aot_penalty: 'logistic' -> 'hinge'", "beta: 0.01 -> 0.5", "learning_rate: 0.001 -> 0.0001",
                "--overwrite_output_dir true"):
        assert key in message
    assert ("a finished run" if finished else "checkpoint checkpoint-2") in message
    assert tree_digest(out) == before  # refused: nothing in the folder changed

    train(path, [*STALE, "--overwrite_output_dir", "true"])  # from scratch, not from checkpoint-2
    new_weights = load_file(out / "model.safetensors")
    assert any(not torch.equal(old_weights[k], new_weights[k]) for k in new_weights)
    fresh = load_file(train(path, [*STALE, "--output_dir", str(tmp_path / "fresh")]) / "model.safetensors")
    for k in fresh:  # the same weights as the new configuration trained in an empty folder
        torch.testing.assert_close(new_weights[k], fresh[k])
    assert json.loads((out / "fingerprint.json").read_text())["config"]["aot_penalty"] == "hinge"


@pytest.mark.slow
def test_finished_run_of_the_same_configuration_is_not_retrained(tiny, tmp_path, capsys, monkeypatch):
    path, out = with_checkpoint(tiny, tmp_path)
    before = tree_digest(out)
    run = json.loads((out / "run.json").read_text())
    assert run["fingerprint"] == json.loads((out / "fingerprint.json").read_text())["sha256"]
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("a finished run was loaded again"))
    assert train(path, ["--logging_steps", "7"]) == out  # an output-only key is not part of the identity
    assert "finished run of this configuration: nothing to do" in capsys.readouterr().out
    assert tree_digest(out) == before


@pytest.mark.slow
def test_other_data_or_base_model_changes_the_fingerprint(tiny, tmp_path):
    with_checkpoint(tiny, tmp_path)
    rows = tiny["paired_train"].read_text().splitlines()
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(rows[:-1]) + "\n")  # one row fewer
    mixture = {"datasets": [{"data_files": {"train": str(other)}, "test_split": None}]}
    with pytest.raises(UserError, match=r"changed: .*the train data"):
        train(write_recipe(tmp_path, tiny, max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3,
                      dataset_mixture=mixture))
    model = tmp_path / "model-copy"
    model.mkdir()
    for f in Path(tiny["base_model"]).iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match=r"the base model \(folder:"):
        train(write_recipe(tmp_path, tiny, max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3,
                      model_name_or_path=str(model)))


def test_a_tiny_recipe_on_other_data_is_not_the_tiny_task(tiny, tmp_path):
    from aot_handbook.evaluation.results import save_result
    from aot_handbook.run_folder import RunInfo

    assets = str(Path(tiny["base_model"]).parents[1])
    mine = tmp_path / "mine.jsonl"
    mine.write_text(tiny["paired_train"].read_text())
    results = tmp_path / "results"
    for name, data in (("tiny-data", str(tiny["paired_train"])), ("my-data", str(mine))):
        run = tmp_path / name
        run.mkdir()
        recipe = {"method": "aot_paired", "tiny_assets": assets, "model_name_or_path": str(tiny["base_model"]),
                  "dataset_mixture": {"datasets": [{"data_files": {"train": data}}]}}
        (run / "recipe.json").write_text(json.dumps({"path": f"recipes/{name}.yaml", "overrides": [],
                                                     "recipe": recipe}))
        info = RunInfo.from_path(run)
        score = 50.0 if name == "tiny-data" else 99.0
        save_result(info, {"name": "tiny", "kind": "tiny_task", "_path": "x", "_sha256": "x"},
                    {"tiny:accuracy": score}, {}, results_dir=results)
    assert RunInfo.from_path(tmp_path / "my-data").dataset == str(mine)
    assert _cell(results) == "50.0"  # not the mean with the custom-data run, not an error


def test_base_model_row_uses_the_template_of_its_aligned_runs(tmp_path):
    """A base model folder or hub id is evaluated with the chat template its recipes train with, not with raw
    text or whatever its hub tokenizer holds: the same prompt ids as the aligned run's."""
    recipe_file = REPO / "recipes/merlinite-7b/aot_unpaired.yaml"
    recipe = yaml.safe_load(recipe_file.read_text())
    assert RunInfo.from_path("ibm/merlinite-7b").chat_template == recipe["chat_template"] == ct.MERLINITE
    for hub_id in ("meta-llama/Meta-Llama-3-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.2"):
        assert RunInfo.from_path(hub_id).chat_template is None  # their recipes use the tokenizer's own
    m = MODELS["merlinite-7b"]
    base = tmp_path / "merlinite-7b"  # a local copy of the base model whose tokenizer has no template
    mimic_tokenizer(m["bos"], m["eos"], m["extra"]).save_pretrained(base)
    aligned = tmp_path / "runs" / "merlinite-7b-aot_unpaired"  # a run folder: recipe.json + the saved tokenizer
    model_tokenizer("merlinite-7b").save_pretrained(aligned)
    (aligned / "recipe.json").write_text(json.dumps({"path": "recipes/merlinite-7b/aot_unpaired.yaml",
                                                     "recipe": {**recipe, "model_name_or_path": str(base)}}))
    base_run, aligned_run = RunInfo.from_path(base), RunInfo.from_path(aligned)
    assert base_run.method == "base" and base_run.base_model == aligned_run.base_model == "merlinite-7b"
    assert base_run.chat_template == aligned_run.chat_template
    ids = [build_prompt_ids(load_tokenizer(r.model, r.adapter, r.chat_template), INSTRUCTIONS)
           for r in (base_run, aligned_run)]
    assert ids[0] == ids[1]
    tok = load_tokenizer(str(base))
    assert tok.decode(ids[0][0]).startswith("<|system|>\n" + ct.MERLINITE_SYSTEM_PROMPT)
    assert build_prompt_ids(tok, INSTRUCTIONS) != ids[0]  # without the template: raw text


@pytest.mark.parametrize("resolved,batch,scope", [
    ({}, 16, "optimizer_batch"),  # a recipe.json from before the key: the default it ran with
    ({"gradient_accumulation_steps": 64, "aot_sort_scope": "optimizer_batch"}, 1024, "optimizer_batch"),
    ({"gradient_accumulation_steps": 64, "aot_sort_scope": "micro_batch"}, 1024, "micro_batch"),
    ({"method": "dpo", "gradient_accumulation_steps": 4}, 64, None),
])
def test_run_info_batch_is_the_optimizer_steps(tmp_path, resolved, batch, scope):
    run = run_info_of(tmp_path, "run", **resolved)
    assert run["batch_size"] == batch and run["sort_scope"] == scope


def test_the_reference_is_the_run_trained_against_by_content(runs, tmp_path, monkeypatch):
    """Issue 30: with its SFT run gone, a run was compared with itself (win rate 50.00); with the SFT run retrained,
    with the new one. run.json records what the run started from (start_model_identity); the reference lookup
    (parent_run) refuses a reference that is gone or holds other weights, and accepts a byte-identical copy put
    back (new inodes and times)."""
    import os
    import shutil

    from aot_handbook.run_folder import start_model_identity

    monkeypatch.setenv("AOT_HANDBOOK_HASH_CACHE", str(tmp_path / "hashes.json"))
    sft = Path(shutil.copytree(runs["sft"], tmp_path / "sft"))
    aot = Path(shutil.copytree(runs["aot"], tmp_path / "aot"))
    meta = json.loads((aot / "recipe.json").read_text())
    meta["recipe"]["model_name_or_path"] = str(sft)
    (aot / "recipe.json").write_text(json.dumps(meta))
    start = start_model_identity(str(sft))
    (aot / "run.json").write_text(json.dumps({"method": "aot_unpaired", "start_model": start}))
    assert RunInfo.from_path(aot).parent_run() == str(sft)
    shutil.move(sft, tmp_path / "backup")
    with pytest.raises(UserError, match=rf"{aot}: the run it trained from, {sft}, is gone"):
        RunInfo.from_path(aot).parent_run()  # it was compared with itself
    shutil.copytree(tmp_path / "backup", sft)
    assert RunInfo.from_path(aot).parent_run() == str(sft)  # restored, byte for byte: the same model
    weights = sft / "model.safetensors"
    st = weights.stat()
    with open(weights, "r+b") as f:  # one byte of the last weight changed, size and mtime put back
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(UserError, match=rf"{aot}: the run it trained from, {sft}, holds other weights"):
        RunInfo.from_path(aot).parent_run()
    (sft / "run.json").unlink()
    with pytest.raises(UserError, match="is not a finished run now"):
        RunInfo.from_path(aot).parent_run()
