"""aot_handbook.dominance against references nobody here wrote (numpy's inverted-CDF
quantiles, scipy's quad, POT's exact transport, deepsig.aso) and by seeded simulation."""

import math

import numpy as np
import pytest
import torch

from aot_handbook import dominance as D


def _cases(seed=0, count=6):
    """Random samples of unequal sizes with many ties (small integers, some halves)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n, m = rng.choice(np.arange(3, 14), size=2, replace=False)
        yield rng.integers(0, 5, n).astype(float), (rng.integers(0, 5, m) + 0.5 * rng.integers(0, 2, m)).astype(float)


def test_first_order_exact_against_numpy_quantiles():
    # Independent: numpy's inverted_cdf quantile (the left-continuous inverse of the CDF)
    # evaluated at the midpoints of the cells of width 1/lcm(n, m), where both are constant.
    for x, y in _cases():
        L = math.lcm(x.size, y.size)
        t = (np.arange(L) + 0.5) / L
        gap = np.quantile(y, t, method="inverted_cdf") - np.quantile(x, t, method="inverted_cdf")
        if not gap.any():
            continue
        ref = (np.maximum(gap, 0) ** 2).sum() / (gap ** 2).sum()
        assert abs(D.violation_ratio(x, y, order=1) - ref) < 1e-9


def test_second_order_exact_against_quad():
    from scipy.integrate import quad
    for x, y in _cases(seed=1, count=4):
        L = math.lcm(x.size, y.size)
        t = (np.arange(L) + 0.5) / L
        gap = np.quantile(y, t, method="inverted_cdf") - np.quantile(x, t, method="inverted_cdf")
        knots = np.linspace(0, 1, L + 1)
        Dk = np.concatenate([[0.0], np.cumsum(gap) / L])          # G_y - G_x at the knots

        def d(p, knots=knots, Dk=Dk):
            return np.interp(p, knots, Dk)

        num = sum(quad(lambda p: max(d(p), 0.0) ** 2, a, b, epsabs=1e-14, epsrel=1e-13)[0]
                  for a, b in zip(knots[:-1], knots[1:]))
        den = sum(quad(lambda p: d(p) ** 2, a, b, epsabs=1e-14, epsrel=1e-13)[0]
                  for a, b in zip(knots[:-1], knots[1:]))
        assert abs(D.violation_ratio(x, y, order=2) - num / den) < 1e-9


def test_first_order_equals_pot_squared_hinge_transport():
    ot = pytest.importorskip("ot")
    for x, y in _cases(seed=2):
        a, b = np.full(x.size, 1 / x.size), np.full(y.size, 1 / y.size)
        viol = ot.emd2(a, b, np.maximum(y[None, :] - x[:, None], 0) ** 2)   # x below y
        other = ot.emd2(a, b, np.maximum(x[:, None] - y[None, :], 0) ** 2)
        if viol + other == 0:
            continue
        assert abs(D.violation_ratio(x, y) - viol / (viol + other)) < 1e-9


@pytest.mark.parametrize("order", [1, 2])
def test_swap_gives_one_minus(order):
    rng = np.random.default_rng(3)
    for _ in range(5):
        x, y = rng.normal(0, 1, 37), rng.normal(0.2, 1.5, 23).round(1)
        assert abs(D.violation_ratio(x, y, order=order) + D.violation_ratio(y, x, order=order) - 1) < 1e-12
    assert D.violation_ratio([1, 2, 3], [0, 1, 2], order=order) == 0.0   # x dominates y
    assert D.violation_ratio([0, 1, 2], [1, 2, 3], order=order) == 1.0


def test_multivariate_d1_squared_hinge_is_the_1d_ratio_and_swaps():
    pytest.importorskip("ot")
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, (40, 1)), rng.normal(0.2, 1.3, (31, 1))
    r = D.multivariate_violation_ratio(x, y, cost="squared_hinge", reg=0)
    assert abs(r.ratio - D.violation_ratio(x[:, 0], y[:, 0])) < 1e-9
    x2, y2 = rng.normal(0.3, 1, (50, 2)), rng.normal(0, 1, (50, 2))
    for reg in (0, 0.05):
        a = D.multivariate_violation_ratio(x2, y2, cost="logistic", reg=reg).ratio
        b = D.multivariate_violation_ratio(y2, x2, cost="logistic", reg=reg).ratio
        assert abs(a + b - 1) < 1e-9


@pytest.mark.parametrize("cost", ["hinge", "logistic"])
def test_reverse_direction_from_one_solve_equals_its_own_solve(cost):
    rng = np.random.default_rng(13)
    x, y = torch.as_tensor(rng.normal(0.3, 1, (30, 2))), torch.as_tensor(rng.normal(0, 1, (25, 2)))
    A, fA, gA, B, fB, gB = D._both_directions(x, y, cost, 5.0, 0.1, 5000, 1e-10)
    B2, fB2, gB2 = D.sinkhorn_log(D.violation_cost(y, x, cost, 5.0), 0.1, tol=1e-10)
    assert abs(float(B) - float(B2)) < 1e-8
    assert torch.allclose(fB - fB.mean(), fB2 - fB2.mean(), atol=1e-6)   # potentials up to a constant


def test_logistic_tends_to_hinge():
    pytest.importorskip("ot")
    rng = np.random.default_rng(5)
    x, y = rng.normal(0.3, 1, (40, 2)), rng.normal(0, 1, (40, 2))
    hinge = D.multivariate_violation_ratio(x, y, cost="hinge", reg=0).ratio
    errs = [abs(D.multivariate_violation_ratio(x, y, cost="logistic", beta=b, reg=e).ratio - hinge)
            for b, e in [(2, 0.1), (8, 0.03), (32, 0.01), (96, 0.004)]]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.02, errs


def test_clt_variance_agrees_with_full_bootstrap():
    rng = np.random.default_rng(6)
    x, y = rng.normal(0.3, 1, (50, 2)), rng.normal(0, 1, (40, 2))
    r = D.multivariate_violation_ratio(x, y, cost="logistic", beta=5, reg=0.2)
    boot = D.multivariate_bootstrap_se(x, y, cost="logistic", beta=5, reg=0.2, n_boot=200, seed=0)
    assert abs(r.se / boot - 1) < 0.2, (r.se, boot)
    assert r.ci[0] < r.ratio < r.ci[1]


def test_multivariate_relative_matches_pairwise():
    rng = np.random.default_rng(7)
    s = {"a": rng.normal(0.5, 1, (40, 3)), "b": rng.normal(0, 1, (40, 3)), "c": rng.normal(-0.5, 1, (40, 3))}
    res = D.multivariate_relative(s, reg=0.1, beta=5, paired=True)
    one = D.multivariate_violation_ratio(s["a"], s["c"], reg=0.1, beta=5, paired=True)
    assert abs(res.pair[0, 2] - one.ratio) < 1e-6
    assert abs(res.pair_se[0, 2] / one.se - 1) < 1e-4 and res.pair_se[0, 2] > 0  # the pair's se, from the same solve
    assert np.allclose(res.pair_se, res.pair_se.T)
    assert res.ranking == ["a", "b", "c"]
    assert (res.se > 0).all() and np.allclose(res.eps, (res.pair.sum(1) - 0.5) / 2)


def test_eps_min_agrees_with_deepsig_aso():
    deepsig = pytest.importorskip("deepsig")
    rng = np.random.default_rng(8)
    from deepsig.aso import compute_violation_ratio
    x, y = rng.normal(0.1, 1, 120), rng.normal(0, 1.4, 120)
    ours = D.almost_dominance_test(x, y, interval="normal", n_boot=1000, alpha=0.05, seed=0)
    theirs = deepsig.aso(x, y, confidence_level=0.95, num_bootstrap_iterations=100, dt=0.002,
                         seed=0, show_progress=False)
    # Monte-Carlo error of eps_min = eps + 1.645 se: the se of a bootstrap sd is se / sqrt(2B);
    # deepsig integrates on a grid of step dt (its eps differs from the exact one by O(dt)).
    mc = 1.645 * ours.se * math.sqrt(1 / 2000 + 1 / 200)
    grid = abs(ours.eps - compute_violation_ratio(x, y, dt=0.002))
    assert abs(ours.eps_min - theirs) < 3 * mc + grid, (ours, theirs, mc, grid)


def _eps_normal(c):
    """True eps(X, Y) for X ~ N(c, 1), Y ~ N(0, 2^2): the quantile gap is z - c, so
    eps = E(Z - c)_+^2 / E(Z - c)^2 in closed form."""
    from statistics import NormalDist
    N = NormalDist()
    return ((1 + c * c) * (1 - N.cdf(c)) - c * N.pdf(c)) / (1 + c * c)


def test_absolute_test_calibration_and_power():
    rng = np.random.default_rng(9)
    thr = _eps_normal(0.5)                               # 0.168

    def rate(c, n, reps):
        return np.mean([D.almost_dominance_test(rng.normal(c, 1, n), rng.normal(0, 2, n), threshold=thr,
                                                n_boot=200, seed=r).reject for r in range(reps)])

    boundary, inside = rate(0.5, 200, 400), rate(0.25, 200, 400)   # true eps 0.168 and 0.310
    assert 0.02 <= boundary <= 0.08, boundary
    assert inside <= 0.08, inside
    # power: location shift 0.25 sd, n = 500, H0 eps >= 0.3
    power = np.mean([D.almost_dominance_test(rng.normal(0.25, 1, 500), rng.normal(0, 1, 500), threshold=0.3,
                                             n_boot=200, seed=r).reject for r in range(100)])
    assert power >= 0.8, power


def test_relative_test_calibration_two_equal_of_four():
    rng = np.random.default_rng(10)
    equal, wrong = [], []
    for r in range(400):
        z = rng.normal(0, 1, 60)                         # shared prompt difficulty (paired)
        s = {m: z + rng.normal(mu, 1, 60) for m, mu in zip("abcd", (0.0, 0.0, 1.0, -1.0))}
        res = D.relative_test(s, n_boot=200, paired=True, seed=r)
        equal.append(res.beats("a", "b") or res.beats("b", "a"))
        wrong.append(res.beats("d", "a"))
    assert 0.02 <= np.mean(equal) <= 0.08, np.mean(equal)
    assert np.mean(wrong) <= 0.08
    assert res.ranking[0] == "c" and res.ranking[-1] == "d"


def test_relative_test_power_and_unpaired():
    rng = np.random.default_rng(11)
    hits = [D.relative_test({m: rng.normal(mu, 1, 500) for m, mu in zip("abcd", (0, 0, 0.25, -0.25))},
                            n_boot=200, seed=r).beats("c", "d") for r in range(25)]
    assert np.mean(hits) >= 0.8                          # shift 0.5 sd between c and d, n = 500


def test_holm_and_bonferroni():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert np.allclose(D.adjust_p(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02])
    assert np.allclose(D.adjust_p(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    with pytest.raises(ValueError, match="correction"):
        D.adjust_p(p, "fdr")


def test_portfolio_is_geometric_mean_of_pooled_cdfs():
    from scipy.stats import gmean, percentileofscore
    rng = np.random.default_rng(12)
    acc = [rng.random(20), rng.random(20)]
    rew = [rng.normal(0, 1, 20), rng.normal(1, 1, 20)]
    port = D.portfolio({"acc": acc, "reward": rew}, weights={"acc": 1, "reward": 3})
    pooled_a, pooled_r = np.concatenate(acc), np.concatenate(rew)
    for i in range(2):
        fa = np.array([percentileofscore(pooled_a, v, kind="weak") / 100 for v in acc[i]])
        fr = np.array([percentileofscore(pooled_r, v, kind="weak") / 100 for v in rew[i]])
        assert np.allclose(port[i], gmean(np.stack([fa, fr]), axis=0, weights=np.array([[0.25], [0.75]])))
    # a model better on every metric on every sample dominates in the portfolio
    better = D.portfolio({"m1": [acc[0] + 2, acc[0]], "m2": [rew[0] + 2, rew[0]]})
    assert D.violation_ratio(better[0], better[1]) == 0.0


def test_bad_input_names_the_culprit():
    with pytest.raises(ValueError, match=r"model_b: 1 NaN"):
        D.relative_test({"model_a": np.ones(20), "model_b": np.r_[np.ones(19), np.nan]})
    with pytest.raises(ValueError, match="at least two models"):
        D.relative_test({"only": np.arange(20.0)})
    with pytest.raises(ValueError, match=r"small: 5 scores, fewer than the 10"):
        D.relative_test({"big": np.arange(20.0), "small": np.arange(5.0)})
    with pytest.raises(ValueError, match="same prompts.*'a': 20, 'b': 21"):
        D.relative_test({"a": np.arange(20.0), "b": np.arange(21.0)}, paired=True)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        D.violation_ratio([1, 2], [2, 3], order=3)
    with pytest.raises(ValueError, match="cost must be"):
        D.multivariate_violation_ratio(np.ones((3, 2)), np.ones((3, 2)), cost="l2")


def test_tensor_inputs_and_progress(capsys):
    x, y = torch.linspace(0, 1, 30), torch.linspace(-0.2, 0.9, 25)
    r = D.almost_dominance_test(x, y, n_boot=50, progress=True)
    assert r.eps == D.violation_ratio(x.numpy(), y.numpy()) and r.reject
    assert "bootstrap" in capsys.readouterr().err
