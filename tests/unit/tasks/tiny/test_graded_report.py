"""aot_handbook.tasks.tiny.graded_report: the graded grid's claims are decided by the relative dominance test of the
pair (judge_pairs), in both directions, no verdict where two rows differ by noise only, and seeds in the variance."""

import numpy as np
import pytest

from aot_handbook.tasks.tiny.graded_report import CLAIMS, judge_pairs


def _rows(seed=0, n=300):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4, n).astype(float)  # per-prompt difficulty, shared by every row (paired scores)
    noise = lambda: rng.normal(0, 0.3, n)  # noqa: E731
    return {"better": [list(base + 0.5 + noise())], "same": [list(base + noise())], "twin": [list(base + noise())]}


def test_a_shifted_row_is_held_one_way_and_reversed_the_other():
    verdicts, variance = judge_pairs(_rows(seed=1), [("better", "same"), ("same", "better"), ("same", "twin")])
    assert verdicts["better", "same"]["verdict"] == "held" and verdicts["same", "better"]["verdict"] == "reversed"
    assert verdicts["better", "same"]["p"] < 0.05 and verdicts["better", "same"]["eps"] < 0.5
    assert set(verdicts["better", "same"]["parts"]) == {"ratio", "interchangeable"} and variance == "prompts"
    assert verdicts["same", "twin"]["verdict"] == "not significant" and verdicts["same", "twin"]["p"] > 0.05


@pytest.mark.slow  # 20 tests of 2000 resamples
def test_noise_alone_rarely_gives_a_verdict():
    """Two rows that differ by noise only: a directional verdict in at most a few of 20 seeded simulations
    (the test's level is 0.05)."""
    wrong = sum(judge_pairs(_rows(seed), [("same", "twin")])[0]["same", "twin"]["verdict"] != "not significant"
                for seed in range(20))
    assert wrong <= 3


def test_seed_noise_is_in_the_variance():
    """Three runs whose per-prompt mean is a clear shift but whose run means disagree in sign (one lucky seed): a
    verdict from prompts alone, none with the seeds in the variance (issue 27)."""
    rows = _rows(seed=1)
    one = np.asarray(rows["same"][0])
    lucky = {"same": rows["same"], "lucky": [list(one + 1.2), list(one - 0.15), list(one - 0.15)]}
    averaged = {"same": rows["same"], "lucky": [list(np.mean(lucky["lucky"], axis=0))]}
    assert judge_pairs(averaged, [("lucky", "same")])[0]["lucky", "same"]["verdict"] == "held"
    seeds, variance = judge_pairs(lucky, [("lucky", "same")])
    assert variance == "prompts + seeds" and "seeds" in seeds["lucky", "same"]["parts"]
    assert seeds["lucky", "same"]["verdict"] == "not significant"


def test_the_claims_name_the_rows_of_the_report():
    rows = {"SFT start", "chosen answers", "AOT paired", "AOT unpaired", "DPO", "IPO", "KTO", "NLL control"}
    assert [title[:3] for title, _ in CLAIMS] == ["G1.", "G2.", "G3.", "G4.", "G5."]
    assert all(a in rows and b in rows and a.startswith("AOT") for _, pairs in CLAIMS[:4] for a, b in pairs)
    assert {b for _, b in CLAIMS[4][1]} == {"SFT start", "NLL control", "chosen answers"}


def test_a_pair_s_verdict_does_not_depend_on_which_other_pairs_are_printed():
    """Holm runs over every pair of rows, so a claims block added to the report (G5) changes no other p-value."""
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 200)
    rows = {n: [list(base + shift + rng.normal(0, 1, 200)) for _ in range(3)]
            for n, shift in (("a", 0.3), ("b", 0.0), ("c", 0.1), ("d", -0.2))}
    few, _ = judge_pairs(rows, [("a", "b")])
    many, _ = judge_pairs(rows, [("a", "b"), ("c", "d"), ("a", "d")])
    assert few["a", "b"] == many["a", "b"]
