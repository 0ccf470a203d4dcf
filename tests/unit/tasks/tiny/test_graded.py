"""The graded tiny regime (aot_handbook.tasks.tiny.graded, issue 28): the judge counts right digits, the annotator's
pairs have a strictly better chosen answer that is the exact sum in exactly the stated share, the held-out prompts are
the tiny task's, and the regime is reached through the task interface and the ``make pairs`` scorer."""

import json
import random
import statistics
from pathlib import Path

import pytest
import yaml

from aot_handbook import tasks
from aot_handbook.tasks.tiny import arithmetic as tiny
from aot_handbook.tasks.tiny.graded import (
    DISTANCE_CAP,
    annotator_answers,
    build_task,
    data_quality,
    ensure_assets,
    grade,
    graded_scores,
    miss,
    quality,
)

PROMPTS = [f"{a}+{b}=" for a in range(10, 100, 7) for b in range(10, 100, 11)]


@pytest.mark.parametrize("completion, q, d", [
    ("085", 3, 0), ("085<eos>", 3, 0), (" 085\n", 3, 0),
    ("086", 2, 1), ("075", 2, 10), ("185", 2, 100), ("076", 1, 9), ("174", 0, 89),
    ("85", 0, DISTANCE_CAP), ("0855", 0, DISTANCE_CAP), ("08a", 0, DISTANCE_CAP), ("", 0, DISTANCE_CAP)])
def test_grade_counts_right_digits_and_the_distance(completion, q, d):
    g = grade("47+38=", completion)
    assert (g["quality"], g["distance"], g["exact"]) == (q, d, q == 3)
    assert quality("47+38=", completion) == float(q)


def test_a_miss_is_exactly_k_near_missed_digits():
    rng = random.Random(0)
    for p in PROMPTS:
        truth = tiny.answer(p)
        for k in range(4):
            text = miss(p, k, rng)
            assert len(text) == 3 and text.isdigit() and grade(p, text)["quality"] == 3 - k
            assert all(0 < abs(int(a) - int(b)) <= 2 for a, b in zip(text, truth) if a != b)


@pytest.mark.parametrize("annotator", ["noisy", "systematic"])
@pytest.mark.parametrize("gold_share", [0.0, 0.05])
def test_chosen_is_strictly_better_and_right_in_exactly_the_stated_share(gold_share, annotator):
    task = build_task(seed=0, gold_share=gold_share, annotator=annotator)
    for split in ("paired_train", "paired_test"):
        rows = task[split]
        assert all(quality(r["prompt"], r["chosen"]) > quality(r["prompt"], r["rejected"]) for r in rows)
        assert all(r["chosen_score"] == quality(r["prompt"], r["chosen"]) for r in rows)
        right = sum(grade(r["prompt"], r["chosen"])["exact"] for r in rows)
        assert right == round(gold_share * len(rows))
        assert not any(grade(r["prompt"], r["rejected"])["exact"] for r in rows)
    stats = data_quality(paired=task["paired_train"])["paired"]
    assert stats["chosen_exact"] == gold_share and stats["strictly_better"] == 1
    # several levels: chosen answers miss one or two digits (none: the gold share), rejected ones more
    gold = {3.0} if gold_share else set()
    assert {quality(r["prompt"], r["chosen"]) for r in task["paired_train"]} == {1.0, 2.0} | gold
    assert {quality(r["prompt"], r["rejected"]) for r in task["paired_train"]} == {0.0, 1.0} | {g - 1 for g in gold}


def test_the_systematic_annotator_shares_the_sft_flaw_on_carry_problems():
    """Chosen answers drop the carry in FLAW_RATE of carry problems (so it is their most common tens digit), and
    keep it otherwise at the price of another digit; every rejected answer drops it; other problems are noisy."""
    rows = build_task(seed=0, annotator="systematic")["paired_train"]
    carry = [r for r in rows if tiny.has_carry(r["prompt"])]
    dropped = [r["chosen"] == tiny.flawed(r["prompt"]) for r in carry]
    assert statistics.mean(dropped) == pytest.approx(tiny.FLAW_RATE, abs=0.03)
    for r, d in zip(carry, dropped):
        truth = tiny.answer(r["prompt"])
        assert r["rejected"][:2] == tiny.flawed(r["prompt"])[:2] and r["rejected"][2] != truth[2]
        if not d:  # the carry kept: the tens digit right, the units or hundreds missed
            assert r["chosen"][1] == truth[1] and quality(r["prompt"], r["chosen"]) == 2.0
    others = [r for r in rows if not tiny.has_carry(r["prompt"])]
    assert others and {quality(r["prompt"], r["chosen"]) for r in others} == {1.0, 2.0}
    with pytest.raises(ValueError, match="annotator must be one of"):
        build_task(seed=0, annotator="lazy")


def test_annotator_answers_on_held_out_prompts_are_like_the_chosen_ones():
    prompts = [r["prompt"] for r in build_task(seed=0)["eval_prompts"]]
    answers = annotator_answers(prompts, seed=1)
    assert annotator_answers(prompts, seed=1) == answers  # seeded
    qs = [quality(p, a) for p, a in zip(prompts, answers)]
    assert set(qs) == {1.0, 2.0} and statistics.mean(qs) == pytest.approx(1.75, abs=0.06)
    gold = annotator_answers(prompts, seed=1, gold_share=0.05)
    assert sum(grade(p, a)["exact"] for p, a in zip(prompts, gold)) == 30


def test_unpaired_labels_are_the_quality_above_the_median():
    rows = build_task(seed=0, gold_share=0.05)["unpaired_train"]
    median = statistics.median(r["score"] for r in rows)
    assert all(r["score"] == quality(r["prompt"], r["completion"]) for r in rows)
    assert all(r["label"] == (r["score"] > median) for r in rows)
    assert 0 < sum(r["label"] for r in rows) < len(rows)
    assert len({r["prompt"] for r in rows}) == len(rows)  # truly unpaired: one answer a prompt
    gold = sum(grade(r["prompt"], r["completion"])["exact"] for r in rows)
    assert gold == round(0.05 * len(rows[::2]))  # the stated share of the chosen-side rows
    assert not any(grade(r["prompt"], r["completion"])["exact"] for r in build_task(seed=0)["unpaired_train"])


def test_held_out_prompts_are_the_tiny_tasks_and_never_in_training():
    graded, plain = build_task(seed=0), tiny.build_task(seed=0)
    for split in ("eval_prompts", "val_prompts", "paired_test", "unpaired_test"):
        assert [r["prompt"] for r in graded[split]] == [r["prompt"] for r in plain[split]]
    held = {r["prompt"] for s in ("eval_prompts", "val_prompts", "paired_test", "unpaired_test") for r in graded[s]}
    trained = {r["prompt"] for s in ("paired_train", "unpaired_train") for r in graded[s]}
    trained |= {r["prompt"] for r in plain["sft_train"]}  # what the tiny SFT model was trained on
    assert held and trained and not held & trained


def test_data_quality_of_hand_made_rows():
    paired = [{"prompt": "47+38=", "chosen": "086", "rejected": "174"},
              {"prompt": "10+10=", "chosen": "020", "rejected": "031"}]
    unpaired = [{"prompt": "47+38=", "completion": "085", "label": True},
                {"prompt": "10+10=", "completion": "021", "label": True},
                {"prompt": "11+11=", "completion": "000", "label": False}]
    samples = [{"prompt": "47+38=", "completions": ["085", "174", "x"]}, {"prompt": "10+10=", "completions": ["031"]}]
    out = data_quality(paired=paired, unpaired=unpaired, samples=samples)
    assert out["paired"]["chosen_exact"] == 0.5 and out["paired"]["chosen_quality"] == 2.5
    assert out["paired"]["rejected_quality"] == 0.5 and out["paired"]["chosen_distance"] == 0.5
    assert out["paired"]["best_per_prompt"] == {"prompts": 2, "quality": 2.5, "exact": 0.5,
                                                "histogram": {0: 0, 1: 0, 2: 1, 3: 1}}
    assert out["unpaired"]["positive_exact"] == 0.5 and out["unpaired"]["positive_quality"] == 2.5
    assert out["unpaired"]["negative_quality"] == 1  # 000 for 022: the middle digit is right
    assert out["samples"]["exact"] == 0.25 and out["samples"]["best_per_prompt"]["quality"] == 2.0


def test_graded_scores_compare_quality_per_prompt():
    mine = [{"instruction": "47+38=", "output": "085"}, {"instruction": "10+10=", "output": "021"},
            {"instruction": "11+11=", "output": "xyz"}]
    theirs = [{"instruction": "47+38=", "output": "075"}, {"instruction": "10+10=", "output": "021"},
              {"instruction": "11+11=", "output": "022"}]
    scores, details = graded_scores(mine, theirs)
    assert scores["tiny_graded:win_rate_vs_sft"] == pytest.approx((100 + 50 + 0) / 3)
    assert scores["tiny_graded:accuracy"] == pytest.approx(100 / 3)
    assert scores["tiny_graded:quality"] == pytest.approx((3 + 2 + 0) / 3)
    assert scores["tiny_graded:distance"] == pytest.approx((0 + 1 + DISTANCE_CAP) / 3)
    assert scores["tiny_graded:carry"] == 100.0 and scores["tiny_graded:no_carry"] == 0.0  # 47+38 carries
    assert details["reference_accuracy"] == pytest.approx(100 / 3) and len(details["samples"]) == 3


def test_assets_are_built_beside_the_tiny_ones_and_found_through_the_interface(tmp_path):
    paths = ensure_assets(tmp_path / "tiny_graded", gold_share=0.05)
    assert Path(paths["base_model"]).is_relative_to(tmp_path / "tiny")
    assert "gold0.05" in str(paths["paired_train"])
    before = Path(paths["paired_train"]).read_bytes()
    assert Path(ensure_assets(tmp_path / "tiny_graded", gold_share=0.05)["paired_train"]).read_bytes() == before
    task = tasks.get_task("tiny_graded")
    built = task.ensure_assets(tmp_path / "both")  # what a recipe (or validate-recipes) builds: every annotator's data
    assert built["paired_train"] == ensure_assets(tmp_path / "both")["paired_train"]
    assert (tmp_path / "both" / "v1-seed0-gold0-systematic" / "data" / "paired_train.jsonl").is_file()
    assert tasks.task_of({"tiny_graded_assets": str(tmp_path / "tiny_graded")}) is task
    assert tasks.task_for_kind("tiny_graded_task") is task and "tiny_graded_assets" in tasks.asset_keys()
    assert tasks.task_of({"tiny_assets": ".cache/tiny"}).name == "tiny"  # the plain task is unchanged


def test_the_graded_scorer_scores_sampled_answers_in_make_pairs(tiny, tmp_path):
    from aot_handbook.io import read_jsonl
    from aot_handbook.pairs import build_pairs, parse_pairs_recipe
    from aot_handbook.scorers import build_scorer

    recipe = tmp_path / "graded.pairs.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(tiny["base_model"]), "prompts": str(tiny["paired_train"]), "limit": 8,
        "output_dir": str(tmp_path / "out"), "num_samples": 3, "max_new_tokens": 4, "batch_size": 4,
        "scorer": "tiny_graded", "label_threshold": "median"}))
    cfg = parse_pairs_recipe(str(recipe))
    prompts, completions = ["47+38=", "47+38=", "47+38="], ["085", "086", "9"]
    assert build_scorer(cfg).score(prompts, completions) == [1.0, 2 / 3, 0.0]  # the right digits over 3
    out = build_pairs(cfg, recipe_path=str(recipe))
    for row in read_jsonl(out / "samples.jsonl"):
        assert row["scores"] == [quality(row["prompt"], c) / 3 for c in row["completions"]]
    assert all(r["chosen_score"] > r["rejected_score"] for r in read_jsonl(out / "paired.jsonl"))
    assert json.loads((out / "provenance.json").read_text())["scorer"] == {"scorer": "tiny_graded"}


@pytest.mark.slow
def test_evaluation_grades_through_the_task_interface(tmp_path):
    """``make eval`` with ``kind: tiny_graded_task`` runs the tiny task's evaluation with the graded judge: the
    scores are graded_scores of the greedy answers against the SFT run's, the Fig. 1 statistics come from the
    graded held-out pairs (named by the task), and stored answers are graded as they are."""
    from transformers import AutoTokenizer

    from aot_handbook.evaluation import evaluate
    from aot_handbook.generation import load_model_and_tokenizer
    from aot_handbook.io import read_jsonl

    assets = tmp_path / "tiny_graded"
    paths = ensure_assets(assets)
    tok = AutoTokenizer.from_pretrained(paths["base_model"])
    sft, run = tmp_path / "runs" / "sft", tmp_path / "runs" / "graded-run"
    for path, seed, recipe in ((sft, 4, {"method": "sft", "model_name_or_path": str(paths["base_model"])}),
                               (run, 3, {"method": "aot_paired", "tiny_graded_assets": str(assets), "beta": 1.0,
                                         "model_name_or_path": str(sft)})):
        tiny.build_base_model(tok, seed=seed).save_pretrained(path)
        tok.save_pretrained(path)
        (path / "recipe.json").write_text(json.dumps({"path": f"recipes/x/{recipe['method']}.yaml", "overrides": [],
                                                      "recipe": recipe}))
        (path / "run.json").write_text(json.dumps({"method": recipe["method"], "completed": 0}))
    eval_recipe = tmp_path / "graded.eval.yaml"
    eval_recipe.write_text(yaml.safe_dump({"name": "tiny_graded", "kind": "tiny_graded_task", "tiny_graded_task": {
        "limit": 16, "tiny_assets": str(tmp_path / "tiny")}}))
    results = tmp_path / "results"
    result = json.loads(evaluate(str(run), str(eval_recipe), results_dir=results).read_text())
    prompts = [r["prompt"] for r in read_jsonl(paths["eval_prompts"])[:16]]
    lm, tok = load_model_and_tokenizer(str(run))
    mine = [{"instruction": p, "output": c} for p, c in zip(prompts, tiny.generate(lm, tok, prompts))]
    lm, tok = load_model_and_tokenizer(str(sft))
    theirs = [{"instruction": p, "output": c} for p, c in zip(prompts, tiny.generate(lm, tok, prompts))]
    expected, _ = graded_scores(mine, theirs)
    assert {k: result["scores"][k] for k in expected} == pytest.approx(expected)
    assert {"tiny_graded:reward_accuracy", "tiny_graded:rewards_fsd_violation"} <= set(result["scores"])
    assert not any(k.startswith("tiny:") for k in result["scores"])
    assert result["provenance"]["judge"]["description"].startswith("aot_handbook.tasks.tiny.graded")

    # The graded judge decides: stored answers set to the sum with i % 4 digits missed score 3 - i % 4 each.
    work = results / run.name / "tiny_graded.work" / "model_outputs.json"
    outputs = json.loads(work.read_text())
    rng = random.Random(1)
    for i, o in enumerate(outputs):
        o["output"] = miss(o["instruction"], i % 4, rng)
    work.write_text(json.dumps(outputs))
    again = json.loads(evaluate(str(run), str(eval_recipe), results_dir=results).read_text())["scores"]
    assert again["tiny_graded:accuracy"] == pytest.approx(100 * 4 / 16)
    assert again["tiny_graded:quality"] == pytest.approx(statistics.mean(3 - i % 4 for i in range(16)))
    assert again["tiny_graded:win_rate_vs_sft"] > 50  # against the run's own first answers, all worse here


def test_training_data_is_read_from_the_runs_recipe(tmp_path):
    """The report's data line and chosen-answer row come from the folder the runs trained on: its annotator and gold
    share are in its name; results without such a run give the defaults."""
    from aot_handbook.tasks.tiny.graded import GOLD_SHARE, training_data

    run = tmp_path / "run"
    run.mkdir()
    folder = ".cache/tiny_graded/v1-seed0-gold0.05-systematic/data"
    mixture = {"datasets": [{"data_files": {"train": f"{folder}/paired_train.jsonl"}}]}
    (run / "recipe.json").write_text(json.dumps({"path": "recipes/tiny/graded/dpo.yaml", "overrides": [],
                                                 "resolved": {"method": "dpo", "dataset_mixture": mixture}}))
    sft = {"run": {"path": str(tmp_path / "missing")}}
    assert training_data([sft, {"run": {"path": str(run)}}]) == (Path(folder), "systematic", 0.05)
    assert training_data([sft]) == (None, "noisy", GOLD_SHARE)
