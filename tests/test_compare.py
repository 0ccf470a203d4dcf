"""`make compare` end to end on tiny runs: evaluation -> per-sample scores -> ranking with p-values.

The runs are copies of the tiny model whose greedy answers are planted in the evaluation's
resumable work folder (the way tests/test_eval.py edits them), so their quality is known:
"strong" answers 90% of the prompts right, "weak1" and "weak2" 50% (different prompts).
Everything else (judging, the win rate against the model itself, the result and samples
files, the test, the tables and figures) runs for real.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from aot_handbook import compare as C
from aot_handbook.evaluation import evaluate
from aot_handbook.evaluation.common import read_samples, write_samples
from aot_handbook.tiny import read_jsonl, wrong_answer

REPO = Path(__file__).resolve().parents[1]
N = 80


def _recipe(tmp_path: Path, limit: int) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "eval" / "tiny.yaml").read_text())
    recipe["tiny_task"].update(limit=limit, batch_size=64)
    path = tmp_path / f"tiny{limit}.yaml"
    recipe["name"] = f"tiny{limit}"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _planted_run(root: Path, tiny: dict, name: str, right: np.ndarray, recipe: Path) -> Path:
    run = root / "runs" / name
    shutil.copytree(tiny["base_model"], run)
    rows = read_jsonl(tiny["eval_prompts"])[: right.size]
    work = root / "results" / name / f"{yaml.safe_load(recipe.read_text())['name']}.work"
    work.mkdir(parents=True)
    outputs = [{"instruction": r["prompt"], "output": r["answer"] if ok else wrong_answer(r["prompt"]),
                "generator": name, "dataset": "eval_prompts"} for r, ok in zip(rows, right)]
    (work / "model_outputs.json").write_text(json.dumps(outputs))
    evaluate(str(run), str(recipe), results_dir=root / "results")
    return run


@pytest.fixture(scope="module")
def planted(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    recipe = _recipe(root, N)
    rng = np.random.default_rng(0)
    right = {"strong": rng.random(N) < 0.9, "weak1": rng.random(N) < 0.5, "weak2": rng.random(N) < 0.5}
    runs = {n: _planted_run(root, tiny, n, r, recipe) for n, r in right.items()}
    return {"root": root, "recipe": recipe, "runs": runs, "right": right, "tiny": tiny}


def test_samples_are_kept_beside_the_result(planted):
    res = planted["root"] / "results" / "strong" / "tiny80.json"
    result = json.loads(res.read_text())
    rows = read_samples(res)
    assert result["samples"]["file"] == "tiny80.samples.jsonl" and result["samples"]["rows"] == N
    assert [r["tiny:accuracy"] == 100.0 for r in rows] == list(planted["right"]["strong"])
    for key in ("tiny:accuracy", "tiny:carry", "tiny:no_carry", "tiny:win_rate_vs_sft"):
        vals = [r[key] for r in rows if r[key] is not None]
        assert np.mean(vals) == pytest.approx(result["scores"][key])   # the mean over prompts is the score
    assert all(r["length"] >= 1 for r in rows)
    # a samples file edited after the fact no longer counts as this result's
    (res.parent / "tiny80.samples.jsonl").write_text((res.parent / "tiny80.samples.jsonl").read_text() + "\n{}\n")
    assert read_samples(res) is None
    write_samples(res, rows)  # restore (same rows, same hash)
    assert read_samples(res) == rows


def test_make_compare_ranks_with_p_values_and_writes_table_and_figure(planted, capsys):
    runs = [str(planted["runs"][n]) for n in ("weak1", "strong", "weak2")]
    out = planted["root"] / "out"
    rc = C.main([*runs, "--eval", str(planted["recipe"]), "--metrics", "tiny:accuracy",
                 "--results-dir", str(planted["root"] / "results"), "--out-dir", str(out), "--n-boot", "400"])
    printed = capsys.readouterr()
    assert rc == 0
    table = (out / "compare.md").read_text()
    first = next(line for line in table.splitlines() if line.startswith("| tiny:accuracy | 1 |"))
    assert "| strong |" in first and "weak1 (" in first and "weak2 (" in first      # beats both, with p-values
    pairs = (out / "compare_pairs.md").read_text()
    assert "| strong | > | weak1 |" in pairs and "| strong | > | weak2 |" in pairs
    weak = next(line for line in pairs.splitlines() if "weak1" in line and "weak2" in line)
    assert "| ~ |" in weak                                                          # 50% vs 50%: no verdict
    assert "paired" in pairs and "bootstrap" in printed.err                         # same prompts; progress bar
    assert "| strong |" in printed.out
    mean = 100 * planted["right"]["strong"].mean()
    assert f"{mean:.2f} [" in first
    assert (out / "compare.csv").is_file() and (out / "compare.tex").read_text().startswith("\\begin{table}")
    assert (out / "compare_tiny_accuracy.png").stat().st_size > 10_000


def test_joint_ranking_on_several_metrics(planted, capsys):
    """--joint: one ranking on all metrics at once (multivariate dominance), equal to dominance.multivariate_relative
    on the per-prompt vectors built by hand (each metric rescaled to [0, 1] over the runs)."""
    from aot_handbook import dominance as D

    names = ("weak1", "strong", "weak2")
    runs = [str(planted["runs"][n]) for n in names]
    out = planted["root"] / "out_joint"
    metrics = ["tiny:accuracy", "tiny:win_rate_vs_sft"]
    rc = C.main([*runs, "--eval", str(planted["recipe"]), "--metrics", *metrics, "--joint", "--n-boot", "400",
                 "--results-dir", str(planted["root"] / "results"), "--out-dir", str(out)])
    assert rc == 0 and "jointly" in capsys.readouterr().out
    text = (out / "compare_joint.md").read_text()
    assert "| 1 | strong |" in text and "| strong > weak1 |" in text and "| weak1 ~ weak2 |" in text
    results = planted["root"] / "results"
    raw = {n: np.array([[r[m] for m in metrics] for r in read_samples(results / n / "tiny80.json")]) for n in names}
    lo, hi = np.min([v.min(0) for v in raw.values()], 0), np.max([v.max(0) for v in raw.values()], 0)
    span = np.where(hi > lo, hi - lo, 1.0)  # a metric equal everywhere (a run's win rate against itself) is 0
    by_hand = {n: np.where(hi > lo, (v - lo) / span, 0.0) for n, v in raw.items()}
    expected = D.multivariate_relative(by_hand, paired=True)
    res = C.compare(runs, eval_name=str(planted["recipe"]), metrics=metrics, joint=True, n_boot=400,
                    results_dir=planted["root"] / "results", out_dir=out, progress=False)
    assert res["joint"]["ranking"] == expected.ranking
    np.testing.assert_allclose(res["joint"]["eps"], expected.eps, rtol=1e-9)
    with pytest.raises(ValueError, match="several metrics"):
        C.compare(runs, eval_name=str(planted["recipe"]), metrics=metrics[:1], joint=True,
                  results_dir=planted["root"] / "results", out_dir=out, progress=False)


def test_make_target_passes_runs_eval_and_metrics():
    cmd = subprocess.run(["make", "-n", "compare", "RUNS=runs/a runs/b", "EVAL=recipes/eval/tiny.yaml",
                          "METRICS=tiny:accuracy", "PYTHON=python3"],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert cmd.returncode == 0, cmd.stderr
    assert 'aot-compare" runs/a runs/b --eval recipes/eval/tiny.yaml --metrics tiny:accuracy' in cmd.stdout


def test_bad_input_names_the_run_and_metric(planted, tmp_path):
    results = planted["root"] / "results"
    strong, weak = str(planted["runs"]["strong"]), str(planted["runs"]["weak1"])
    kw = {"eval_name": "tiny80", "results_dir": results, "out_dir": tmp_path, "n_boot": 50, "progress": False}
    with pytest.raises(ValueError, match="at least two runs"):
        C.compare([strong], **kw)
    with pytest.raises(KeyError, match=r"run .*strong: metric 'tiny:nope' not in its per-sample scores"):
        C.compare([strong, weak], metrics=["tiny:nope"], **kw)
    with pytest.raises(FileNotFoundError, match=r"run runs/missing: no result"):
        C.compare([strong, "runs/missing"], **kw)

    # a run evaluated on fewer prompts: a paired test is refused, the unpaired one runs
    short = tmp_path / "short"
    recipe60 = _recipe(tmp_path, 60)
    shutil.copytree(planted["runs"]["strong"], short)
    work = results / "short" / "tiny60.work"
    work.mkdir(parents=True)
    rows = read_jsonl(planted["tiny"]["eval_prompts"])[:60]
    (work / "model_outputs.json").write_text(json.dumps(
        [{"instruction": r["prompt"], "output": r["answer"], "generator": "short", "dataset": "x"} for r in rows]))
    evaluate(str(short), str(recipe60), results_dir=results)
    shutil.copy(results / "short" / "tiny60.json", results / "short" / "tiny80.json")
    shutil.copy(results / "short" / "tiny60.samples.jsonl", results / "short" / "tiny80.samples.jsonl")
    link = json.loads((results / "short" / "tiny80.json").read_text())
    link["samples"]["file"] = "tiny80.samples.jsonl"
    (results / "short" / "tiny80.json").write_text(json.dumps(link))
    with pytest.raises(ValueError, match=r"metric 'tiny:accuracy': a paired test needs the same prompts.*"
                                         r"20 prompts only in strong, 0 only in short"):
        C.compare([strong, str(short)], metrics=["tiny:accuracy"], paired="yes", **kw)
    res = C.compare([strong, str(short)], metrics=["tiny:accuracy"], **kw)
    assert not res["tests"]["tiny:accuracy"].paired

    # NaN scores, and too few samples for the test
    rows = read_samples(results / "short" / "tiny80.json")
    rows[3]["tiny:accuracy"] = float("nan")
    link["samples"] = write_samples(results / "short" / "tiny80.json", rows)
    (results / "short" / "tiny80.json").write_text(json.dumps(link))
    with pytest.raises(ValueError, match=r"run .*short, metric 'tiny:accuracy': 1 NaN"):
        C.compare([strong, str(short)], metrics=["tiny:accuracy"], **kw)
    link["samples"] = write_samples(results / "short" / "tiny80.json", rows[4:9])
    (results / "short" / "tiny80.json").write_text(json.dumps(link))
    with pytest.raises(ValueError, match=r"metric 'tiny:accuracy': short: 5 scores, fewer than the 10"):
        C.compare([strong, str(short)], metrics=["tiny:accuracy"], **kw)

    # a result from before per-sample scores were kept
    del link["samples"]
    (results / "short" / "tiny80.json").write_text(json.dumps(link))
    with pytest.raises(ValueError, match=r"run .*short: .*tiny80.json has no per-sample scores"):
        C.compare([strong, str(short)], **kw)


def _method_results(tmp_path):
    """Result files of five methods x two seeds (+ NLL), written the way evaluations write them."""
    from aot_handbook.evaluation.common import RunInfo, save_result

    rng = np.random.default_rng(1)
    recipe = {"name": "tiny", "kind": "tiny_task", "_path": "recipes/eval/tiny.yaml", "_sha256": "0"}
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


def test_reproduce_claims_are_judged_by_the_relative_test(tmp_path):
    """The claims report of `make reproduce-tiny`, on result files as evaluations write them."""
    from aot_handbook.evaluation.common import load_results
    from aot_handbook.reproduce import claims_report

    _method_results(tmp_path)
    text = claims_report(load_results(tmp_path), tmp_path / "claims.md").read_text()
    block = text.split("## 2. AOT beats")[1].split("##")[0]
    assert "+ NLL (n = 200 prompts; ranking AOT paired > " in block
    for other in ("DPO", "KTO", "IPO"):
        assert f"AOT paired vs {other}: held" in block
        assert f"AOT unpaired vs {other}: held" not in block           # 50% vs 50%
    assert "no NLL: no per-sample scores for AOT paired" in block       # not evaluated: said, not guessed


def test_table_cells_show_a_95_ci_over_prompts(tmp_path):
    from aot_handbook.tables import render

    wins = _method_results(tmp_path)
    table = render("tiny1", tmp_path)["md"].read_text()
    row = next(line for line in table.splitlines() if line.startswith("| AOT paired | + NLL |"))
    cell = row.split("|")[3].strip()
    per_prompt = (wins["aot_paired", 0] + wins["aot_paired", 1]) / 2      # seeds averaged per prompt
    se = per_prompt.std(ddof=1) / np.sqrt(per_prompt.size)
    mean, lo, hi = re.fullmatch(r"([\d.]+) ± [\d.]+ \(n=2\) \[([\d.]+), ([\d.]+)\]", cell).groups()
    assert float(mean) == pytest.approx(per_prompt.mean(), abs=0.05)
    assert float(hi) - float(lo) == pytest.approx(2 * 1.96 * se, rel=0.2)  # the normal interval's width
    old = next(line for line in table.splitlines() if line.startswith("| DPO | no NLL |"))
    assert old.split("|")[3].strip() == "40.0 ± 0.0 (n=1)"                  # old results still render
