"""aot_handbook.power: the planner of aot-compare --plan, against scipy (the power of a t-test) and against the
rejection rate of the test it plans, by seeded simulation (the full table: benchmarks/bench_dominance.py plan)."""

import math

import numpy as np
import pytest

from aot_handbook import dominance as D
from aot_handbook import power as P


def _runs(rng, tau, q, runs, shift=0.0):
    return shift + q[None, :] + rng.normal(0, tau, (runs, 1)) + rng.normal(0, 1, (runs, q.size))


def test_one_run_power_is_the_paired_t_tests():
    """One run per model: the planned test is the paired t over prompts; its power against scipy's noncentral t,
    and at few degrees of freedom too (three runs per model, seed-dominated: df 4)."""
    from scipy import stats

    c = P.stated(sd=45.0)
    for n, diff in ((805, 5.0), (200, 10.0), (805, 3.0)):
        df, ncp = n - 1, diff / (45.0 / math.sqrt(n))
        crit = stats.t.isf(0.025, df)
        exact = stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp)
        assert abs(P.power_at(c, n, 1, diff, 0.05) - exact) < 1e-4
    for df, ncp in ((4, 3.0), (2.5, 5.0), (30, 2.0)):
        crit = stats.t.isf(0.025, df)
        assert abs(P.t_power(crit, ncp, df) - stats.nct.sf(crit, df, ncp) - stats.nct.cdf(-crit, df, ncp)) < 1e-4
    mde = P.detectable(c, 805, 1, 0.05, 0.8)
    assert abs(P.power_at(c, 805, 1, mde, 0.05) - 0.8) < 0.01
    assert 4.0 < mde < 5.0                           # ~ 2.8 x 45 / sqrt(805) = 4.45 points of win rate


def test_prompts_and_seeds_needed_are_the_smallest_that_suffice():
    c = P.Components(interaction=400.0, within=1600.0, seed=1.0, seed_known=True)
    n = P.prompts_needed(c, 3, 6.0, 0.05, 0.8)
    assert P.power_at(c, n, 3, 6.0, 0.05) >= 0.8 > P.power_at(c, n - 1, 3, 6.0, 0.05)
    s = P.seeds_needed(c, 805, 4.0, 0.05, 0.8)
    assert P.power_at(c, 805, s, 4.0, 0.05) >= 0.8 > P.power_at(c, 805, s - 1, 4.0, 0.05)
    # a seed variance too large for the target at 3 seeds: no number of prompts suffices
    assert P.prompts_needed(P.Components(0.0, 100.0, 25.0, True), 3, 2.0, 0.05, 0.8) is None


def test_pilot_recovers_the_components():
    rng = np.random.default_rng(50)
    q = rng.normal(0, 1, 4000)
    tau, inter = 0.3, 0.5
    x = _runs(rng, tau, q + rng.normal(0, inter, q.size), 30)
    y = _runs(rng, tau, q, 30)
    c = P.pilot(x, y, paired=True)
    assert c.within == pytest.approx(1.0, rel=0.03)
    assert c.interaction == pytest.approx(inter ** 2, rel=0.15)
    assert c.seed == pytest.approx(tau ** 2, rel=0.5)       # 58 degrees of freedom: a loose check
    one = P.pilot(x[0], y[0], paired=True)
    assert not one.seed_known and one.within == 0 and one.interaction == pytest.approx(inter ** 2 + 2, rel=0.1)


def test_predicted_power_matches_the_simulated_rate_of_the_test_it_plans():
    """Three runs per model, seed sd 0.1 (answer sd 1), 600 prompts: predicted power at the planner's own
    detectable difference against the rate of mean_difference_test over 300 simulated comparisons."""
    rng = np.random.default_rng(51)
    comp = P.Components(interaction=0.0, within=1.0, seed=0.01, seed_known=True)     # this model's own
    diff = P.detectable(comp, 600, 3, 0.05, 0.8)
    predicted = P.power_at(comp, 600, 3, diff, 0.05)
    hits = []
    for _ in range(300):
        q = rng.normal(0, 1, 600)
        md = D.mean_difference_test(_runs(rng, 0.1, q, 3, diff), _runs(rng, 0.1, q, 3), paired=True)
        hits.append(md.p_value <= 0.05 and md.diff > 0)
    assert abs(np.mean(hits) - predicted) < 0.08, (np.mean(hits), predicted)


@pytest.mark.slow
def test_plan_table_reports_and_refuses():
    text = P.plan_table({"stated": P.stated(45.0, 1.0)}, prompts=805, seeds=3, target=5.0)
    row = next(line for line in text.splitlines() if line.startswith("| stated |"))
    cells = [x.strip() for x in row.strip("|").split("|")]
    assert cells[1:3] == ["805", "3"] and float(cells[6]) > 4 and cells[8].isdigit() and cells[9].isdigit()
    assert "Note" not in text
    assert "seed variance not known" in P.plan_table({"s": P.stated(45.0)}, prompts=805)
    with pytest.raises(ValueError, match="--sd"):
        P.stated(None)
    with pytest.raises(ValueError, match="--prompts"):
        P.plan_table({"s": P.stated(45.0)})
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\)"):
        P.plan_table({"s": P.stated(45.0)}, prompts=100, alpha=2)
