"""The benchmark harness (benchmarks/bench.py, quick mode) and the reference log-prob cache it measures,
checked by behaviour (no timings)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import bench  # benchmarks/bench.py (on the path: tests/benchmarks/conftest.py)
import pytest
import yaml

from tests.helpers import REPO


@pytest.fixture()
def cache_env(tiny, tmp_path, monkeypatch):
    """A small paired dataset, a recipe without `requires`, and a private datasets cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    rows = [json.loads(line) for line in open(tiny["paired_train"])][:96]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = tmp_path / "pairs_other.jsonl"  # the same rows but one
    other.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    recipe = yaml.safe_load((REPO / "recipes/tiny/aot_paired.yaml").read_text())
    for key in ("requires", "tiny_assets", "aot_penalty", "aot_sort", "aot_nll_weight"):  # so --method dpo parses
        recipe.pop(key)
    recipe.update(model_name_or_path=str(tiny["base_model"]), summary=False, max_steps=1, logging_steps=1,
                  per_device_train_batch_size=16, output_dir=str(tmp_path / "run"),
                  dataset_mixture={"datasets": [{"data_files": {"train": str(data)}, "test_split": None}]})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(REPO)
    return {"recipe": str(path), "data": str(data), "other": str(other), "tmp": tmp_path}


def _run(env, *overrides, out_dir=None):
    out_dir = out_dir or str(env["tmp"] / f"run{len(os.listdir(env['tmp']))}")
    out = bench.train_probed(env["recipe"], ["--output_dir", out_dir, *overrides])
    (entry,) = out["precompute"]  # train split only
    return entry, out


@pytest.mark.slow
def test_quick_mode_prints_tables():
    proc = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **bench.OFFLINE_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for heading in ("## trainer", "## loss", "## generate", "ours samples/s", "soft_pav fwd+bwd ms", "prompts/s"):
        assert heading in out, out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| ours (AOTTrainer)"))
    row = next(line for line in lines if line.startswith("| aot_paired"))
    cells = dict(zip((c.strip() for c in header.split(" | ")), (c.strip() for c in row.split(" | "))))
    assert float(cells["|step-1 loss diff|"]) <= 1e-6  # step-1 loss of ours vs TRL's aot
    ours, trl = (int(n) for n in cells["tokens per batch"].split(" vs "))
    assert ours < trl  # one row per pair: the prompt is not run twice
    assert "| True" in out  # batched and one-at-a-time greedy generations agree
    # realistic shapes: the same losses, fewer tokens through the backbone and far fewer logits than TRL's
    header = next(line for line in lines if line.startswith("| side "))
    sides = {"ours": "| ours, padding-free rows", "trl": "| TRL DPOTrainer"}
    rows_of = {name: next(line for line in lines if line.startswith(start)) for name, start in sides.items()}
    cells = {name: dict(zip((c.strip() for c in header.split(" | ")), (c.strip() for c in row.split(" | "))))
             for name, row in rows_of.items()}
    assert float(cells["ours"]["step-1 loss - TRL's"]) == 0.0
    assert int(cells["ours"]["tokens per step"]) < int(cells["trl"]["tokens per step"])
    assert 2 * int(cells["ours"]["logits per step"]) < int(cells["trl"]["logits per step"])
    # padding-free rows: fewer positions and less padding than one row per pair, the same pairs
    header = next(line for line in lines if line.startswith("| batch "))
    rows_of = {name: next(line for line in lines if line.startswith(f"| 2     | {start}"))
               for name, start in (("free", "padding-free"), ("one", "one row per pair"))}
    cells = {name: dict(zip((c.strip() for c in header.split(" | ")), (c.strip() for c in row.split(" | "))))
             for name, row in rows_of.items()}
    assert int(cells["free"]["positions per step"]) < int(cells["one"]["positions per step"])
    assert float(cells["free"]["padding share"].rstrip("%")) < float(cells["one"]["padding share"].rstrip("%"))


@pytest.mark.slow
def test_realistic_shapes_are_what_they_say():
    tokenizer, pairs, model = bench.realistic_assets(400, seed=1)
    assert model.config.vocab_size == len(tokenizer) == 32000 and model.config._attn_implementation == "sdpa"
    for name, column in (("prompt", "prompt"), ("answer", "chosen"), ("answer", "rejected")):
        n = sorted(len(tokenizer(text)["input_ids"]) for text in pairs[column])  # one word, one token
        assert n == sorted(len(text.split()) for text in pairs[column])
        median, _ = bench.REALISTIC_LENGTHS[name]
        assert 0.85 * median < n[len(n) // 2] < 1.15 * median
        assert n[-1] > 3 * median  # a long tail


def test_table_and_summary():
    s = bench.summary([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)
    assert bench.spread(s) == 1.0
    text = bench.table(["a", "bb"], [[1, "x"], [22, "yyy"]])
    assert text.splitlines()[0] == "| a  | bb  |" and len(text.splitlines()) == 4


@pytest.mark.slow
def test_loss_bench_skips_sinkhorn_above_memory_limit():
    res = bench.bench_loss(sizes=(64, 8192), sorts=("hard", "soft"), repeats=1, min_time=0.0)
    assert "seconds" in res[64]["soft"] and res[64]["soft"]["saved_mb"] > 0
    assert "GB > 2 GB" in res[8192]["soft"]["skipped"]
    assert "seconds" in res[8192]["hard"]


@pytest.mark.slow
def test_cache_reused_for_an_identical_run(cache_env):
    same = str(cache_env["tmp"] / "same")
    first, a = _run(cache_env, out_dir=same)
    second, b = _run(cache_env, "--overwrite_output_dir", "true", out_dir=same)  # a finished run: retrain on request
    assert not first["reused"] and first["forwards"] > 0
    assert second["reused"] and second["forwards"] == 0 and second["cache_file"] == first["cache_file"]
    assert Path(first["cache_file"]).is_file()
    assert a["step1_loss"] == b["step1_loss"]


@pytest.mark.slow
def test_shared_cache_across_methods_seeds_and_output_dirs(cache_env):
    first, a = _run(cache_env)
    assert not first["reused"] and first["forwards"] > 0
    for overrides in (["--seed", "1"], ["--method", "dpo"], ["--method", "ipo", "--seed", "1"],
                      ["--method", "aot_unpaired", "--beta", "0.5"]):
        again, _ = _run(cache_env, *overrides)
        assert again["reused"] and again["forwards"] == 0, overrides
        assert again["cache_file"] == first["cache_file"]
    # Same first step with cached and recomputed reference log-probs.
    _, b = _run(cache_env)
    assert b["step1_loss"] == a["step1_loss"]


@pytest.mark.slow
def test_cache_is_invalidated_by_what_changes_the_reference_log_probs(cache_env, tiny):
    from aot_handbook.tasks.tiny.arithmetic import build_base_model, build_tokenizer

    first, _ = _run(cache_env)
    other_model = cache_env["tmp"] / "other_model"
    tok = build_tokenizer()
    tok.save_pretrained(other_model)
    build_base_model(tok, seed=1).save_pretrained(other_model)
    mixture = json.dumps({"datasets": [{"data_files": {"train": cache_env["other"]}, "test_split": None}]})
    changes = {
        # max_length above the data's longest row (11 tokens): a length that cuts most rows is refused before
        # training (truncation.check_truncation), and the cache key must follow the key whatever it cuts
        "max_length": ["--max_length", "16"],
        "truncation": ["--max_length", "16", "--truncation_mode", "keep_end"],
        "max_length, keep_end": ["--max_length", "12", "--truncation_mode", "keep_end"],  # no filter in TRL here
        "model": ["--model_name_or_path", str(other_model)],
        "tokenizer": ["--chat_template", "{{ messages[0]['content'] }}"],
        "dataset": ["--dataset_mixture", mixture],
    }
    seen = {first["cache_file"]}
    for name, overrides in changes.items():
        entry, _ = _run(cache_env, *overrides)
        assert not entry["reused"] and entry["forwards"] > 0, name
        assert entry["cache_file"] not in seen, name
        seen.add(entry["cache_file"])


@pytest.mark.slow
def test_cache_with_lora_ignores_the_adapter_init(cache_env):
    """PEFT: the reference is the base model (adapters disabled); TRL also hashes the random LoRA init."""
    lora = ["--use_peft", "true", "--lora_r", "4"]
    first, _ = _run(cache_env, *lora)
    again, _ = _run(cache_env, *lora, "--method", "dpo", "--seed", "1")
    assert not first["reused"] and again["reused"] and again["forwards"] == 0


@pytest.mark.slow
def test_two_runs_writing_the_cache_at_once(cache_env):
    """Two processes start together on an empty cache: both finish, and the file equals a serial computation."""
    from datasets import Dataset

    hf = cache_env["tmp"] / "hf_concurrent"
    env = {**os.environ, **bench.OFFLINE_ENV, "HF_DATASETS_CACHE": str(hf)}
    procs = [subprocess.Popen([sys.executable, str(REPO / "benchmarks/bench.py"), "_sweep_run", cache_env["recipe"],
                               json.dumps(["--method", method,
                                           "--output_dir", str(cache_env["tmp"] / f"c-{method}")])],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for method in ("aot_paired", "dpo")]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads([line for line in out.splitlines() if line.startswith("BENCH ")][-1][6:]))
    files = {r["precompute"][0]["cache_file"] for r in results}
    assert len(files) == 1
    concurrent = Dataset.from_file(files.pop())
    serial, _ = _run(cache_env)  # computed again in this process's own (separate) cache
    reference = Dataset.from_file(serial["cache_file"])
    assert concurrent.num_rows == reference.num_rows
    assert concurrent["ref_chosen_logps"] == reference["ref_chosen_logps"]
    assert concurrent["ref_rejected_logps"] == reference["ref_rejected_logps"]
    assert not list(Path(serial["cache_file"]).parent.glob("tmp*"))
    leftovers = [p.name for p in Path(results[0]["precompute"][0]["cache_file"]).parent.iterdir() if "tmp" in p.name]
    assert not leftovers, leftovers


def test_attention_tokens_of_the_benchmark_model():
    """packing.attention_tokens (the padding-free cost model's crossover) on the realistic benchmark model."""
    from transformers import LlamaConfig

    from aot_handbook.packing import attention_tokens

    config = LlamaConfig(**bench.REALISTIC_MODEL)
    # (q, k, v, o: 256 x (256 + 64 + 64 + 256)) + MLP 3 x 256 x 896, over 2 x 256 per key
    assert attention_tokens(config) == (256 * 32 * 2 * (8 + 2) + 3 * 256 * 896) / (2 * 8 * 32) == 1664


def test_backbone_child_times_each_layout_on_its_own_rows():
    """bench._backbone_child (BENCHMARKS 1c, the layouts without the LM head): each side runs the trainer's own
    layout (the default a row of segments, ours_rows the dense-mask rows, one_row a pair per row) on the same
    batches, and the ratios are against one row per pair."""
    res = bench._backbone_child(1, 4, 0, 0)
    assert set(res["step_s"]) == {"ours", "ours_rows", "one_row"} and res["batch"] == 4
    assert res["ratios"]["one_row"]["median"] == 1.0 and all(r["n"] == 1 for r in res["ratios"].values())
    trainers = {side: bench._build_trainer(side, "aot_paired", 1, 4, 0, "realistic") for side in res["step_s"]}
    batch = next(iter(trainers["ours"].get_train_dataloader()))
    packed = {side: t._pack(batch, log=False) for side, t in trainers.items()}
    assert packed["ours"].per_segment and packed["ours"].stats()["padding"] == 0
    assert not packed["ours_rows"].per_segment and packed["one_row"].stats()["rows"] == 4
