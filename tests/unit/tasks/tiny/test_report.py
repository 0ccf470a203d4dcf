"""aot_handbook.tasks.tiny.report: the tiny tables and the claims of `make reproduce-tiny`, judged by the
relative dominance test."""

import pytest

from aot_handbook.tables import build, matches, table_spec
from aot_handbook.tasks.tiny.report import table
from tests.helpers import method_results, run_info_of


def test_reproduce_claims_are_judged_by_the_relative_test(tmp_path):
    """The claims report of `make reproduce-tiny`, on result files as evaluations write them."""
    from aot_handbook.evaluation.results import load_results
    from aot_handbook.tasks.tiny.report import claims_report

    method_results(tmp_path)
    text = claims_report(load_results(tmp_path), tmp_path / "claims.md").read_text()
    block = text.split("## 2. AOT beats")[1].split("##")[0]
    assert "+ NLL (n = 200 prompts x 2 seeds; uncertainty: prompts + seeds; ranking AOT paired, " in block
    # 90% vs 50% wins on 200 prompts, but two seeds per row: the seed variance of each pair is known from 2
    # degrees of freedom (Student t), so after Holm over ten pairs not every gap of 40 points is significant
    assert "AOT paired vs DPO: held" in block and "reversed" not in block
    for other in ("DPO", "KTO", "IPO"):
        assert f"AOT unpaired vs {other}: held" not in block           # 50% vs 50%
    assert "no NLL: no per-sample scores for AOT paired" in block       # not evaluated: said, not guessed


def _result(method, seed, win, *, nll=1.0, config="a"):
    aot = method.startswith("aot")
    run = {"method": method, "seed": seed, "nll_weight": nll, "base_model": "tiny", "dataset": "tiny",
           "batch_size": 64, "sort": "hard" if aot else None, "penalty": "logistic" if aot else None,
           "config_id": config, "name": f"{method}-{seed}", "recipe_path": "x"}
    return {"run": run, "scores": {"tiny:win_rate_vs_sft": win, "tiny:accuracy": win + 30}}


def test_tiny_tables_mean_std_and_seed_columns():
    results = [_result("aot_unpaired", s, w) for s, w in ((0, 60.0), (1, 62.0), (2, 64.0))]
    results.append(_result("dpo", 0, 40.0, nll=0.0))
    t1 = build(table_spec("tiny1"), results)
    row = next(r for r in t1 if r[:2] == ["AOT unpaired", "+ NLL"])
    assert row[2] == "62.0 ± 2.0 (n=3)" and row[3] == "92.0 ± 2.0 (n=3)"
    assert next(r for r in t1 if r[:2] == ["DPO", "no NLL"])[2] == "40.0 ± 0.0 (n=1)"
    assert next(r for r in t1 if r[:2] == ["DPO", "+ NLL"])[2] == "-"
    t10 = build(table_spec("tiny10"), results)
    assert next(r for r in t10 if r[:2] == ["AOT unpaired", "+ NLL"])[2:5] == ["60.0", "62.0", "64.0"]
    with pytest.raises(ValueError, match="different configurations"):  # never average unlike runs
        build(table_spec("tiny1"), [*results, _result("aot_unpaired", 3, 10.0, config="b")])


def test_tables_pick_the_runs_of_each_row(tmp_path):
    common = {"base_model": "tiny", "sort": "hard", "penalty": "logistic", "nll_weight": 1.0}
    runs = {"16 x 1": run_info_of(tmp_path, "a", gradient_accumulation_steps=1),
            "16 x 64 whole": run_info_of(tmp_path, "b", gradient_accumulation_steps=64,
                                         aot_sort_scope="optimizer_batch"),
            "16 x 64 alone": run_info_of(tmp_path, "c", gradient_accumulation_steps=64, aot_sort_scope="micro_batch")}
    for run in runs.values():
        run.update(common)

    def picked(name, label):
        (row,) = [r for r in table(name).rows if r.labels == (label, "+ NLL")]
        return {k for k, run in runs.items() if matches(run, row.where)}

    assert picked("tiny-batch", "16") == {"16 x 1"}  # not the micro-batches of a step sorted 16 at a time
    assert picked("tiny-batch", "1024") == {"16 x 64 whole"}
    assert picked("tiny-sort-scope", "1024 sorted together") == {"16 x 64 whole"}
    assert picked("tiny-sort-scope", "64 x 16 sorted alone") == {"16 x 64 alone"}
    old = {**runs["16 x 1"], "batch_size": 64}
    old.pop("sort_scope")  # a result written before the field: still the 64 row of every table
    assert matches(old, next(r for r in table("tiny1").rows if r.labels == ("AOT unpaired", "+ NLL")).where)
