"""`make compare` on tiny runs: evaluation -> per-sample scores -> ranking with p-values.

The runs are copies of the tiny model whose greedy answers are planted in the evaluation's resumable work
folder, so their quality is known: "strong" answers 90% of the prompts right, "weak1" and "weak2" 50%
(different prompts). Everything else (judging, the result and samples files, the test, the tables and
figures) runs for real."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from aot_handbook import compare as C
from aot_handbook.cli import compare as compare_command
from aot_handbook.evaluation import evaluate
from aot_handbook.evaluation.results import read_samples, save_result, write_samples
from aot_handbook.run_folder import RunInfo
from aot_handbook.tasks.tiny.arithmetic import read_jsonl, wrong_answer
from tests.helpers import REPO

N = 80


def _recipe(tmp_path: Path, limit: int) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "eval" / "tiny.eval.yaml").read_text())
    recipe["tiny_task"].update(limit=limit, batch_size=64)
    path = tmp_path / f"tiny{limit}.eval.yaml"
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_make_compare_ranks_with_p_values_and_writes_table_and_figure(planted, capsys):
    runs = [str(planted["runs"][n]) for n in ("weak1", "strong", "weak2")]
    out = planted["root"] / "out"
    rc = compare_command([*runs, "--eval", str(planted["recipe"]), "--metrics", "tiny:accuracy",
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


@pytest.mark.slow
def test_joint_ranking_on_several_metrics(planted, capsys):
    """--joint: one ranking on all metrics at once (multivariate dominance), equal to dominance.multivariate_relative
    on the per-prompt vectors built by hand (each metric rescaled to [0, 1] over the runs)."""
    from aot_handbook import dominance as D

    names = ("weak1", "strong", "weak2")
    runs = [str(planted["runs"][n]) for n in names]
    out = planted["root"] / "out_joint"
    metrics = ["tiny:accuracy", "tiny:win_rate_vs_sft"]
    rc = compare_command([*runs, "--eval", str(planted["recipe"]), "--metrics", *metrics, "--joint", "--n-boot", "400",
                 "--results-dir", str(planted["root"] / "results"), "--out-dir", str(out)])
    assert rc == 0 and "jointly" in capsys.readouterr().out
    text = (out / "compare_joint.md").read_text()
    assert "| 1 | strong |" in text and "| strong > weak1 |" in text and "| weak1 ~ weak2 |" in text
    assert C.JOINT_MEANING in text                       # the table says what its number is and is comparable with
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


@pytest.mark.slow
def test_bad_input_names_the_run_and_metric(planted, tmp_path):
    results = planted["root"] / "results"
    strong, weak = str(planted["runs"]["strong"]), str(planted["runs"]["weak1"])
    kw = {"eval_name": "tiny80", "results_dir": results, "out_dir": tmp_path, "n_boot": 50, "progress": False}
    with pytest.raises(C.CompareInputError, match="at least two runs"):
        C.compare([strong], **kw)
    with pytest.raises(C.CompareInputError, match=r"run .*strong: metric 'tiny:nope' not in its per-sample scores"):
        C.compare([strong, weak], metrics=["tiny:nope"], **kw)
    with pytest.raises(C.CompareInputError, match=r"run runs/missing: no result"):
        C.compare([strong, "runs/missing"], **kw)

    # a run evaluated on fewer prompts: a paired test is refused (also by default: no silent unpaired test), the
    # unpaired one runs when asked; --intersect pairs them on the shared prompts
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
    for paired in ("yes", "auto"):  # evaluated by another recipe under the same name: refused, named
        with pytest.raises(ValueError, match=r"evaluation 'tiny80': runs .*strong and .*short were evaluated by "
                                             r"different recipes under that name"):
            C.compare([strong, str(short)], metrics=["tiny:accuracy"], paired=paired, **kw)
    res = C.compare([strong, str(short)], metrics=["tiny:accuracy"], paired="no", **kw)
    assert not res["tests"]["tiny:accuracy"].paired
    res = C.compare([strong, str(short)], metrics=["tiny:accuracy"], intersect=True, **kw)
    assert res["tests"]["tiny:accuracy"].paired and res["notes"] == [
        f"runs {strong} and {short} were evaluated by different recipes named 'tiny80'",
        "tiny:accuracy: paired on the 60 prompts every run answered (dropped: strong 20, short 0)"]

    # NaN scores, and too few samples for the test
    rows = read_samples(results / "short" / "tiny80.json")
    rows[3]["tiny:accuracy"] = float("nan")
    link["samples"] = write_samples(results / "short" / "tiny80.json", rows)
    (results / "short" / "tiny80.json").write_text(json.dumps(link))
    with pytest.raises(ValueError, match=r"run .*short, metric 'tiny:accuracy': 1 NaN"):
        C.compare([strong, str(short)], metrics=["tiny:accuracy"], paired="no", **kw)
    link["samples"] = write_samples(results / "short" / "tiny80.json", rows[4:9])
    (results / "short" / "tiny80.json").write_text(json.dumps(link))
    with pytest.raises(ValueError, match=r"metric 'tiny:accuracy': short: 5 scores, fewer than the 10"):
        C.compare([strong, str(short)], metrics=["tiny:accuracy"], paired="no", **kw)

    # a result from before per-sample scores were kept
    del link["samples"]
    (results / "short" / "tiny80.json").write_text(json.dumps(link))
    with pytest.raises(ValueError, match=r"run .*short: .*tiny80.json has no per-sample scores"):
        C.compare([strong, str(short)], **kw)


# ---- issue 27: models of several runs, --intersect, --plan; bad inputs refused by name ----

RECIPE = {"name": "ev", "kind": "tiny_task", "_path": "recipes/eval/tiny.eval.yaml", "_sha256": "0"}


def _result(root, name: str, rows: list[dict]) -> str:
    run = RunInfo(path=f"runs/{name}", name=name, method="dpo", model="m", base_model="tiny", dataset="tiny",
                  nll_weight=0.0, batch_size=64, seed=0, config_id=name)
    save_result(run, RECIPE, {"m": 0.0}, {"samples": rows}, results_dir=root)
    return f"runs/{name}"


def _scores(root, name: str, values, ids=None) -> str:
    ids = ids if ids is not None else [f"p{i}" for i in range(len(values))]
    return _result(root, name, [{"id": i, "m": float(v)} for i, v in zip(ids, values)])


def _kw(root, tmp_path):
    return {"eval_name": "ev", "results_dir": root, "out_dir": tmp_path / "out", "n_boot": 200, "progress": False}


def test_repeated_prompt_ids_are_refused_naming_run_and_id(tmp_path):
    """The former behaviour: two runs of the same 50% mean came out 100.00 vs 0.00, 'dupA > dupC, p = 0.003'."""
    root = tmp_path / "results"
    rows = [{"id": f"p{i % 20}", "m": 100.0 * (i % 2)} for i in range(40)]
    a, b = _result(root, "dupA", rows), _scores(root, "dupC", [50.0] * 20)
    with pytest.raises(C.CompareInputError, match=r"run runs/dupA: prompt id 'p0' appears 2 times .*20 repeated ids"):
        C.compare([a, b], **_kw(root, tmp_path))


@pytest.mark.parametrize("bad", ["1.0", True, [1.0]])
def test_scores_must_be_numbers(tmp_path, bad):
    root = tmp_path / "results"
    rows = [{"id": f"p{i}", "m": float(i % 3)} for i in range(20)]
    rows[7]["m"] = bad
    a, b = _result(root, "a", rows), _scores(root, "b", np.arange(20) % 3)
    with pytest.raises(C.CompareInputError, match=r"run runs/a, metric 'm', prompt 'p7': score .* is not a number"):
        C.compare([a, b], **_kw(root, tmp_path))


def _refused(capsys, argv: list[str], pattern: str) -> None:
    """aot-compare refuses: exit code 1 and one line on stderr naming the culprit, no traceback."""
    assert compare_command(argv) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: [^\n]*" + pattern + r"[^\n]*\n", err), err


def test_alpha_and_threshold_are_checked(tmp_path, capsys):
    root = tmp_path / "results"
    a, b = _scores(root, "a", np.arange(30) % 5), _scores(root, "b", np.arange(30) % 4)
    _refused(capsys, [a, b, "--eval", "ev", "--results-dir", str(root), "--alpha", "1.5"],
             r"alpha must be a number in \(0, 1\), got 1.5")
    _refused(capsys, [a, b, "--eval", "ev", "--results-dir", str(root), "--threshold", "0.8"],
             r"threshold must be in \(0, 0.5\]")
    _refused(capsys, ["--plan", a, b, "--eval", "ev", "--results-dir", str(root), "--alpha", "0"],
             r"alpha must be a number in \(0, 1\), got 0")
    _refused(capsys, [a, a, "--eval", "ev", "--results-dir", str(root)], r"RUNS: two models are named .a.")


def test_different_prompt_sets_error_or_intersect_with_a_printed_count(tmp_path, capsys):
    root = tmp_path / "results"
    rng = np.random.default_rng(0)
    a = _scores(root, "a", rng.normal(1, 1, 50))
    b = _scores(root, "b", rng.normal(0, 1, 45), ids=[f"p{i}" for i in range(5, 50)])
    with pytest.raises(C.CompareInputError, match=r"a paired test needs the same prompts, but a and b .*"
                                                  r"5 prompts only in a, 0 only in b.*--intersect pairs them on "
                                                  r"the 45 prompts"):
        C.compare([a, b], **_kw(root, tmp_path))
    _refused(capsys, [a, b, "--eval", "ev", "--results-dir", str(root)], r"a paired test needs the same prompts")
    assert compare_command([a, b, "--eval", "ev", "--results-dir", str(root), "--out-dir", str(tmp_path / "o"),
                            "--intersect"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("m: paired on the 45 prompts every run answered (dropped: a 5, b 0)")
    assert "prompts, paired, order 1" in (tmp_path / "o" / "compare_pairs.md").read_text()
    res = C.compare([a, b], paired="no", **_kw(root, tmp_path))
    assert not res["tests"]["m"].paired and not res["notes"]


@pytest.mark.slow
def test_a_model_of_several_runs_brings_its_seed_variance(tmp_path):
    """NAME=RUN,RUN,...: the model's runs are its seeds; the verdict then includes the seed variance, and the
    tables say so. Here the runs of one model differ by a seed effect as large as the gap between the models."""
    root = tmp_path / "results"
    rng = np.random.default_rng(1)
    q = rng.normal(0, 1, 300)
    runs = {m: [_scores(root, f"{m}{s}", q + shift + rng.normal(0, 0.3) + rng.normal(0, 1, 300)) for s in range(3)]
            for m, shift in (("x", 0.15), ("y", 0.0))}
    res = C.compare([f"{m}={','.join(r)}" for m, r in runs.items()], **_kw(root, tmp_path))
    test = res["tests"]["m"]
    assert test.runs == [3, 3] and test.variance == "prompts + seeds"
    assert not np.isnan(test.p_parts["seeds"][0, 1])
    pooled = C.compare([runs["x"][0], runs["y"][0]], **_kw(root, tmp_path))["tests"]["m"]
    assert pooled.variance == "prompts"
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "| Metric | Rank | Run | runs |" in table
    pairs = C.compare([f"{m}={','.join(r)}" for m, r in runs.items()], **_kw(root, tmp_path))["paths"]
    assert "prompts + seeds, paired" in pairs["compare_pairs.md"].read_text()
    # the runs of one model must have answered the same prompts
    odd = _scores(root, "x9", rng.normal(0, 1, 290))
    with pytest.raises(C.CompareInputError, match=r"model x, metric 'm': its runs runs/x0 and runs/x9 answered "
                                                  r"different prompts \(10 only in runs/x0, 0 only in runs/x9\)"):
        C.compare([f"x={runs['x'][0]},{odd}", f"y={','.join(runs['y'])}"], **_kw(root, tmp_path))
    with pytest.raises(C.CompareInputError, match="two models are named 'x'"):
        C.compare([f"x={runs['x'][0]}", f"x={runs['x'][1]}"], **_kw(root, tmp_path))


def test_plan_from_pilot_runs_and_from_stated_sizes(tmp_path, capsys):
    root = tmp_path / "results"
    rng = np.random.default_rng(2)
    q = rng.normal(0, 1, 400)
    a = [_scores(root, f"a{s}", q + rng.normal(0, 0.1) + rng.normal(0, 1, 400)) for s in range(3)]
    b = [_scores(root, f"b{s}", q + rng.normal(0, 0.1) + rng.normal(0, 1, 400)) for s in range(3)]
    assert compare_command(["--plan", f"a={','.join(a)}", f"b={','.join(b)}", "--eval", "ev", "--results-dir",
                            str(root), "--target", "1.0", "--prompts", "805"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| a vs b |"))
    cells = [x.strip() for x in row.strip("|").split("|")]
    assert cells[1:3] == ["805", "3"] and cells[8].isdigit()
    assert compare_command(["--plan", "--sd", "45", "--seed-sd", "1", "--prompts", "805", "--seeds", "3",
                            "--target", "5"]) == 0
    assert "| stated | 805 | 3 |" in capsys.readouterr().out
    _refused(capsys, ["--plan", "--prompts", "805"], r"--plan without runs needs --sd")


def test_one_training_twice_or_two_evaluation_recipes_are_refused(tmp_path, capsys):
    """Issue 30: a copied run folder ranked against its original as two models (or counted as a second seed),
    and results of one evaluation name made by different recipes (other prompts) mixed without a word."""
    root = tmp_path / "results"
    rows = [{"id": f"p{i}", "m": float(i % 3)} for i in range(30)]

    def result(name, fingerprint, sha="0"):
        run = RunInfo(path=f"runs/{name}", name=name, method="dpo", model="m", base_model="tiny", dataset="tiny",
                      seed=0, config_id=name, fingerprint=fingerprint)
        save_result(run, {**RECIPE, "_sha256": sha}, {"m": 0.0}, {"samples": rows}, results_dir=root)
        return f"runs/{name}"

    a, copy, b = result("a", "f" * 64), result("a-copy", "f" * 64), result("b", "e" * 64)
    with pytest.raises(C.CompareInputError, match=r"runs runs/a and runs/a-copy are one training \(the same "
                                                  r"fingerprint ffffffffffff"):
        C.compare([a, copy], **_kw(root, tmp_path))
    with pytest.raises(C.CompareInputError, match="one training"):  # as a second seed of one model
        C.compare([f"x={a},{copy}", b], **_kw(root, tmp_path))
    assert C.compare([a, b], **_kw(root, tmp_path))["tests"]["m"]  # distinct trainings compare
    other = result("c", "d" * 64, sha="1")
    _refused(capsys, [a, other, "--eval", "ev", "--results-dir", str(root)],
             r"evaluation 'ev': runs runs/a and runs/c were evaluated by different recipes under that name")
