"""aot_handbook.evaluation.alpaca: AlpacaEval through alpaca_eval, with a local OpenAI-compatible judge server;
the key only ever in the environment."""

import json
import statistics
from pathlib import Path

import pytest
import yaml

from aot_handbook.evaluation import evaluate, load_eval_recipe
from aot_handbook.evaluation.judge_server import serve
from aot_handbook.evaluation.results import read_samples
from aot_handbook.provenance import sha256
from aot_handbook.tasks import get_task
from aot_handbook.tasks.tiny.arithmetic import (
    has_carry,
    judge,
    program_scores,
    read_jsonl,
    wrong_answer,
)
from tests.helpers import REPO, eval_recipe

FAKE_KEY = "sk-test-4f1c9e0b-never-written-7d2a"


@pytest.mark.slow
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
    server, url = serve(get_task("tiny").judge, 0, model_name="tiny-program-judge", api_key=FAKE_KEY)
    monkeypatch.setenv("TINY_JUDGE_KEY", FAKE_KEY)
    try:
        recipe = eval_recipe(tmp_path, "tiny_alpaca_eval.eval.yaml",
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

    judge_block = load_eval_recipe(REPO / "recipes/eval/alpaca_eval_gpt4.eval.yaml")["judge"]
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
