"""Evaluation end to end on the tiny model, offline: generation, alpaca_eval with a local judge
server, lm-eval on project-written tasks, the program-judged tiny default, results, tables, Fig. 1.

The runs are built here from the tiny base model (a full-weight run and a LoRA-adapter run, each
with the recipe.json / run.json a trained run has), not trained: the evaluation code only reads them.
"""

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from aot_handbook.evaluation import RunInfo, evaluate, load_eval_recipe
from aot_handbook.evaluation.common import read_samples, sha256
from aot_handbook.evaluation.generation import generate_outputs, load_model_and_tokenizer
from aot_handbook.evaluation.judge_server import serve
from aot_handbook.tiny import build_base_model, generate, has_carry, judge, program_scores, read_jsonl, wrong_answer

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "sk-test-4f1c9e0b-never-written-7d2a"


def _write_run(path: Path, model, tokenizer, recipe: dict) -> Path:
    path.mkdir(parents=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "recipe.json").write_text(json.dumps({"path": f"recipes/tiny/{recipe['method']}.yaml", "overrides": [],
                                                   "recipe": recipe}))
    (path / "run.json").write_text(json.dumps({"method": recipe["method"], "completed": 0}))
    return path


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """runs/tiny-sft (the base model), runs/tiny-aot (full weights, another init), runs/tiny-lora (LoRA on SFT)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("runs")
    tok = AutoTokenizer.from_pretrained(tiny["base_model"])
    assets = str(Path(tiny["base_model"]).parents[1])
    common = {"tiny_assets": assets, "dtype": "float32", "seed": 0, "beta": 0.1}
    sft = _write_run(root / "tiny-sft", AutoModelForCausalLM.from_pretrained(tiny["base_model"]), tok,
                     {"method": "sft", "model_name_or_path": str(tiny["base_model"]), **common})
    aot = _write_run(root / "tiny-aot_unpaired", build_base_model(tok, seed=1), tok,
                     {"method": "aot_unpaired", "model_name_or_path": str(sft), "aot_sort": "hard", **common})
    lora_dir = root / "tiny-dpo_lora"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(sft),
                                    LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                               init_lora_weights=False))
    _write_run(lora_dir, peft_model, tok,
               {"method": "dpo", "model_name_or_path": str(sft), "use_peft": True, **common})
    assert (lora_dir / "adapter_config.json").is_file() and not (lora_dir / "model.safetensors").exists()
    return {"sft": sft, "aot": aot, "lora": lora_dir, "tiny": tiny}


def _eval_recipe(tmp_path, source: str, **update) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "eval" / source).read_text())
    for block, values in update.items():
        if isinstance(values, dict):
            recipe.setdefault(block, {}).update(values)
        else:
            recipe[block] = values
    path = tmp_path / source
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_info_reads_run_folders(runs):
    lora = RunInfo.from_path(str(runs["lora"]))
    assert (lora.adapter, lora.model, lora.method) == (str(runs["lora"]), str(runs["sft"]), "dpo")
    assert lora.base_model == "tiny" and lora.dataset == "tiny"
    assert lora.recipe_sha256 == sha256(runs["lora"] / "recipe.json")
    full = RunInfo.from_path(str(runs["aot"]))
    assert (full.adapter, full.model, full.reference, full.sort) == (None, str(runs["aot"]), str(runs["sft"]), "hard")
    assert RunInfo.from_path("ibm/merlinite-7b").describe()["base_model"] == "merlinite-7b"


def test_eval_recipes_are_valid(tmp_path):
    names = set()
    for path in sorted((REPO / "recipes" / "eval").glob("*.yaml")):
        names.add(load_eval_recipe(path)["name"])
    assert {"tiny", "alpaca_eval_gpt4", "alpaca_eval_llama3_70b", "open_llm_zero_shot", "tinybenchmarks"} <= names
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: mystery\n")
    with pytest.raises(ValueError, match=r"bad.yaml: key 'kind'"):
        load_eval_recipe(bad)


def test_program_scores_counts_wins_ties_losses():
    rows = ["12+13=", "19+19=", "25+25=", "40+41="]
    mine = [{"instruction": p, "output": o} for p, o in zip(rows, ["025", "038", "040", "099"])]
    theirs = [{"instruction": p, "output": o} for p, o in zip(rows, ["025", "028", "060", "081"])]
    scores, details = program_scores(mine, theirs, judge=judge, has_carry=has_carry)
    # 12+13: both right (tie); 19+19: win; 25+25: both wrong (tie); 40+41: loss
    assert (details["wins"], details["ties"], details["losses"]) == (1, 2, 1)
    assert scores["tiny:win_rate_vs_sft"] == pytest.approx(100 * (1 + 0.5 * 2) / 4)
    assert scores["tiny:accuracy"] == 50.0 and scores["tiny:carry"] == 50.0 and scores["tiny:no_carry"] == 50.0


def test_generation_is_resumable_and_uses_the_adapter(runs, tmp_path):
    rows = read_jsonl(runs["tiny"]["eval_prompts"])[:20]
    out = tmp_path / "outputs.json"
    generate_outputs(str(runs["sft"]), out, adapter=str(runs["lora"]), generator="lora",
                     instructions=str(runs["tiny"]["eval_prompts"]), limit=8, max_new_tokens=5, batch_size=4)
    first = json.loads(out.read_text())
    assert [r["instruction"] for r in first] == [r["prompt"] for r in rows[:8]]
    assert set(first[0]) == {"instruction", "output", "generator", "dataset"}
    first[0]["output"] = "SENTINEL"  # an instruction already done must not be regenerated
    out.write_text(json.dumps(first))
    generate_outputs(str(runs["sft"]), out, adapter=str(runs["lora"]), generator="lora",
                     instructions=str(runs["tiny"]["eval_prompts"]), limit=20, max_new_tokens=5, batch_size=4)
    done = json.loads(out.read_text())
    assert [r["instruction"] for r in done] == [r["prompt"] for r in rows] and done[0]["output"] == "SENTINEL"
    assert not list(tmp_path.glob("*.partial.json")) and not list(tmp_path.glob(".*tmp"))
    # the adapter is applied: outputs equal greedy decoding of the merged LoRA model, and differ from the base
    lm, tok = load_model_and_tokenizer(str(runs["sft"]), str(runs["lora"]))
    base, _ = load_model_and_tokenizer(str(runs["sft"]))
    prompts = [r["prompt"] for r in rows[1:]]
    assert [r["output"] for r in done[1:]] == [o.strip() for o in generate(lm, tok, prompts)]
    assert [o.strip() for o in generate(base, tok, prompts)] != [r["output"] for r in done[1:]]


def test_alpaca_eval_chain_with_local_judge_server(runs, tmp_path, monkeypatch):
    """generate -> alpaca_eval (weighted annotator, openai_completions) -> program judge on 127.0.0.1
    -> results JSON -> table; the API key stays out of every file."""
    from aot_handbook.tables import render

    n = 24
    rows = read_jsonl(runs["tiny"]["eval_prompts"])[:n]
    # Reference outputs with right and wrong answers, so wins, ties and losses all can occur.
    reference = [{"instruction": r["prompt"], "output": r["answer"] if i % 3 else wrong_answer(r["prompt"]),
                  "generator": "reference", "dataset": "eval_prompts"} for i, r in enumerate(rows)]
    ref_path = tmp_path / "reference.json"
    ref_path.write_text(json.dumps(reference))
    server, url = serve(0, model_name="tiny-program-judge", api_key=FAKE_KEY)
    monkeypatch.setenv("TINY_JUDGE_KEY", FAKE_KEY)
    try:
        recipe = _eval_recipe(tmp_path, "tiny_alpaca_eval.yaml",
                              generation={"instructions": str(runs["tiny"]["eval_prompts"]), "limit": n},
                              judge={"base_url": url, "model": "tiny-program-judge", "api_key_env": "TINY_JUDGE_KEY",
                                     "reference_outputs": str(ref_path)})
        monkeypatch.chdir(tmp_path)  # relative paths, as `make eval` uses them
        path = tmp_path / evaluate(str(runs["lora"]), str(recipe), results_dir="results")
        results = tmp_path / "results"
    finally:
        server.shutdown()
    assert len(server.RequestHandlerClass.requests_seen) >= n  # every pair went through the server
    assert set(server.RequestHandlerClass.requests_seen) == {"tiny-program-judge"}
    result = json.loads(path.read_text())
    outputs = json.loads(Path(result["details"]["model_outputs"]).read_text())
    expected, counts = program_scores(outputs, reference, judge=judge, has_carry=has_carry)
    assert counts["ties"] < n  # a non-trivial comparison
    assert result["scores"]["alpaca_eval:program:win_rate"] == pytest.approx(expected["tiny:win_rate_vs_sft"])
    assert result["details"]["n_total"] == n
    per = read_samples(path)  # per instruction, beside the result: the mean is the win rate
    assert len(per) == n and {r["id"] for r in per} == {r["prompt"] for r in rows}
    per_prompt = statistics.mean(r["alpaca_eval:program:win_rate"] for r in per)
    assert per_prompt == pytest.approx(result["details"]["win_rate"])
    assert result["scores"]["alpaca_eval:program:lc_win_rate"] is None
    assert "length-controlled" in result["details"]["lc_win_rate_error"]
    prov = result["provenance"]
    assert prov["adapter"] == str(runs["lora"]) and prov["model"] == str(runs["sft"])
    assert prov["run_recipe_json_sha256"] == sha256(runs["lora"] / "recipe.json")
    assert prov["judge"]["base_url"] == url and prov["packages"]["alpaca-eval"] == "0.6.6" and prov["date"]
    table = render("tiny", results)["md"].read_text()
    lora_row = next(line for line in table.splitlines() if line.startswith("| DPO |"))
    assert f"| {expected['tiny:win_rate_vs_sft']:.1f} [" in lora_row  # with its 95% CI over prompts
    for f in list(results.rglob("*")) + [recipe]:
        if f.is_file():
            assert FAKE_KEY.encode() not in f.read_bytes(), f"API key leaked into {f}"


def test_gpt4_judge_needs_a_key_from_the_environment(tmp_path, monkeypatch):
    from aot_handbook.evaluation.alpaca import prepare_judge

    judge_block = load_eval_recipe(REPO / "recipes/eval/alpaca_eval_gpt4.yaml")["judge"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        prepare_judge(judge_block, tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    config, env, description = prepare_judge(judge_block, tmp_path)
    assert env["OPENAI_API_KEY"] == FAKE_KEY  # handed to the alpaca_eval subprocess only
    written = yaml.safe_load(Path(config).read_text())
    (inner,) = written.values()
    assert inner["completions_kwargs"]["model_name"] == description["model"] == "gpt-4-1106-preview"
    assert Path(inner["prompt_template"]).is_file() and Path(config).is_relative_to(tmp_path)
    assert not [f for f in tmp_path.rglob("*") if f.is_file() and FAKE_KEY.encode() in f.read_bytes()]


def _choice_logp(model, tok, prompt: str, choice: str) -> float:
    ids = tok(prompt + choice, return_tensors="pt")["input_ids"]
    n_prompt = len(tok(prompt)["input_ids"])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return float(logps[torch.arange(n_prompt - 1, ids.shape[1] - 1), ids[0, n_prompt:]].sum())


def test_lm_eval_on_project_tasks_with_lora_adapter(runs, tmp_path):
    """One lm-eval call (LoRA via peft=) on the multiple-choice and generate_until tiny tasks."""
    from aot_handbook.evaluation.harness import write_tiny_tasks
    from aot_handbook.tables import render

    n = 30
    recipe = _eval_recipe(tmp_path, "tiny_lm_eval.yaml",
                          lm_eval={"tiny_rows": n, "tiny_assets": str(Path(runs["tiny"]["base_model"]).parents[1])})
    results = tmp_path / "results"
    result = json.loads(evaluate(str(runs["lora"]), str(recipe), results_dir=results).read_text())
    assert "peft=" + str(runs["lora"]) in result["details"]["model_args"]
    # Independent check with the merged LoRA model: greedy exact match and log-likelihood argmax.
    lm, tok = load_model_and_tokenizer(str(runs["sft"]), str(runs["lora"]))
    rows = read_jsonl(runs["tiny"]["eval_prompts"])[:n]
    prompts = [r["prompt"] for r in rows]
    gen_acc = 100 * sum(judge(p, c) for p, c in zip(prompts, generate(lm, tok, prompts))) / n
    assert result["scores"]["tiny_gen"] == pytest.approx(gen_acc)
    task_file = write_tiny_tasks(tmp_path / "check", rows) / "tiny_arith.jsonl"
    data = [json.loads(line) for line in task_file.read_text().splitlines()]
    mc = [max(range(3), key=lambda i: _choice_logp(lm, tok, d["prompt"], d["choices"][i])) == d["gold"] for d in data]
    assert result["scores"]["tiny_mc"] == pytest.approx(100 * sum(mc) / n)
    per = read_samples(next((results / "tiny-dpo_lora").glob("*.json")))  # lm-eval's log_samples, per document
    for column in ("tiny_mc", "tiny_gen"):
        vals = [r[column] for r in per if column in r]
        assert len(vals) == n and statistics.mean(vals) == pytest.approx(result["scores"][column])
        # lm-eval's own standard error (switched on again): the sd of the per-document scores / sqrt(n)
        assert result["details"]["stderr"][column] == pytest.approx(statistics.stdev(vals) / n ** 0.5)
    table = render("tiny", results)["md"].read_text()
    row = next(line for line in table.splitlines() if line.startswith("| DPO |"))
    cells = [c.strip() for c in row.strip("|").split("|")][-2:]  # mean [95% CI over prompts]
    assert [c.split(" [")[0] for c in cells] == [f"{result['scores'][k]:.1f}" for k in ("tiny_mc", "tiny_gen")]
    assert all(c.endswith("]") for c in cells)


def test_tiny_default_eval_scores_by_program_and_resumes(runs, tmp_path):
    recipe = _eval_recipe(tmp_path, "tiny.yaml", tiny_task={"limit": 30, "batch_size": 32})
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


def test_incomplete_run_is_refused(runs, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(runs["aot"], half)
    (half / "run.json").unlink()
    with pytest.raises(RuntimeError, match="not complete"):
        evaluate(str(half), str(REPO / "recipes/eval/tiny.yaml"), results_dir=tmp_path / "results")


def test_figure1_plots_the_diagnostics_quantiles(runs, tmp_path):
    import matplotlib.pyplot as plt

    from aot_handbook.diagnostics import quantile_curves
    from aot_handbook.heldout import heldout_rows, run_statistics
    from aot_handbook.plots import draw_quantiles, figure1

    rows = heldout_rows(str(runs["aot"]), max_rows=32)
    assert len(rows) == 32 and {"prompt", "chosen", "rejected"} <= set(rows[0])
    stats = {"aot": run_statistics(str(runs["aot"]), rows), "lora": run_statistics(str(runs["lora"]), rows)}
    paths = figure1(stats, tmp_path / "plots")
    for panel in ("a", "b"):
        assert paths[panel].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = {k: (s["chosen_rewards"], s["rejected_rewards"], "chosen", "rejected") for k, s in stats.items()}
    fig, _ = draw_quantiles(curves, title="t")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    for j, (label, s) in enumerate(stats.items()):
        c = quantile_curves(s["chosen_rewards"], s["rejected_rewards"])
        assert lines[2 * j].get_xdata().tolist() == pytest.approx(c["t"].tolist())
        assert lines[2 * j].get_ydata().tolist() == pytest.approx(c["q_u"].tolist())
        assert lines[2 * j + 1].get_ydata().tolist() == pytest.approx(c["q_v"].tolist())
        assert f"FSD violation {s['rewards_fsd']['fsd_violation_share']:.2f}" in lines[2 * j].get_label()
    plt.close(fig)
    saved = json.loads((tmp_path / "plots" / "fig1b.json").read_text())
    c = quantile_curves(stats["lora"]["policy_margins"], stats["lora"]["reference_margins"])
    assert saved["lora"]["q_u"] == pytest.approx(c["q_u"].tolist())
    assert saved["lora"]["q_v"] == pytest.approx(c["q_v"].tolist())
    # LoRA run: the reference is the adapters disabled, i.e. the SFT model the adapter sits on.
    sft_only = stats["aot"]["reference_margins"]  # the full run's reference is the SFT model too
    assert torch.allclose(stats["lora"]["reference_margins"], sft_only)
    assert not torch.allclose(stats["lora"]["policy_margins"], stats["lora"]["reference_margins"])


def test_a_run_is_compared_with_the_finished_run_it_started_from(tmp_path):
    """The NLL control is an SFT-method run started from the SFT run: its win rate is against that run."""
    from aot_handbook.evaluation.common import RunInfo
    from aot_handbook.evaluation.pipeline import _sft_of

    def run(name, start):
        d = tmp_path / name
        d.mkdir()
        (d / "recipe.json").write_text(json.dumps({"path": f"recipes/tiny/{name}.yaml",
                                                   "recipe": {"method": "sft", "model_name_or_path": start}}))
        (d / "run.json").write_text("{}")
        return d

    sft = run("sft", str(tmp_path / "base_model"))  # the SFT stage, from the untrained base model
    nll = run("nll_control", str(sft))
    assert _sft_of(RunInfo.from_path(nll)) == str(sft)
    assert _sft_of(RunInfo.from_path(sft)) == str(sft)
