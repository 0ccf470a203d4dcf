"""Speed, calibration and power of aot_handbook.dominance and aot_handbook.power (docs/DOMINANCE.md).

    python benchmarks/bench_dominance.py speed          # relative test k=8 n=5000; multivariate k=4 n=1000 d=3
    python benchmarks/bench_dominance.py calibration    # absolute and relative tests: null rejection and power
    python benchmarks/bench_dominance.py verdicts       # the flip case, a ratio-1/2 pair among four, power
    python benchmarks/bench_dominance.py seeds          # seed-level noise only: prompt-only vs hierarchical vs ours
    python benchmarks/bench_dominance.py plan           # the planner's predicted power vs the verdicts' rate
    python benchmarks/bench_dominance.py multivariate   # d = 1 against the 1-D ratio; CLT coverage
    python benchmarks/bench_dominance.py checks         # Monte-Carlo precision of eps_min, deepsig on discrete scores

Every rate is over seeded simulated data sets and printed with its Monte-Carlo standard error,
sqrt(r (1 - r) / sets). ``--reps`` scales the number of sets (default: each table's own). Run with
OMP_NUM_THREADS=1 on a quiet machine; timings on a shared one are indicative only.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import time
from statistics import NormalDist

import numpy as np
import torch

from aot_handbook import dominance as D
from aot_handbook import power as P

N = NormalDist()
ALPHA = 0.05


def _rate(hits) -> str:
    """'rate ± Monte-Carlo se' over simulated sets."""
    h = np.asarray(hits, dtype=float)
    r = h.mean()
    return f"{r:.3f} ± {math.sqrt(max(r * (1 - r), 1e-12) / h.size):.3f}"


def _table(head: list[str]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))


def _row(*cells) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def _directional(res: D.RelativeTest, a: str, b: str) -> bool:
    return res.beats(a, b) or res.beats(b, a)


def _draw(rng, n: int, z, sd: float, mu: float) -> np.ndarray:
    """mu + sd * a standard normal score per prompt; with a shared prompt effect z (paired): (z + e) / sqrt(2)."""
    e = rng.normal(0, 1, n)
    return mu + sd * ((z + e) / math.sqrt(2) if z is not None else e)


def _old_rule(res: D.RelativeTest, a: str, b: str) -> str:
    """The verdict of the former relative test (before issue 27) from the same resamples: the permutation test of
    "interchangeable", Holm over the pairs, direction from the sign of the one-versus-all delta."""
    names, k = res.names, len(res.names)
    iu = [(i, j) for i in range(k) for j in range(i + 1, k)]
    adj = D.adjust_p(np.array([res.p_parts["interchangeable"][i, j] for i, j in iu]), res.correction)
    i, j = names.index(a), names.index(b)
    p = adj[iu.index((min(i, j), max(i, j)))]
    if p > res.alpha:
        return "~"
    return f"{a} > {b}" if res.delta[i, j] < 0 else f"{b} > {a}"


# ---------------------------------------------------------------- speed

def speed(profile: bool) -> None:
    rng = np.random.default_rng(0)
    k, n = 8, 5000
    z = rng.normal(0, 1, n)
    scores = {f"m{i}": z + rng.normal(0.05 * i, 1, n) for i in range(k)}
    prof = cProfile.Profile() if profile else None
    t, c = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    res = D.relative_test(scores, n_boot=max(1000, D.min_resamples(k, ALPHA)), paired=True, progress=True)
    if prof:
        prof.disable()
    print(f"univariate relative test k={k} n={n} B={res.n_boot} paired: {time.perf_counter() - t:.1f} s wall, "
          f"{time.process_time() - c:.1f} s CPU; ranking {res.ranking}")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(8)

    k, n, d = 4, 1000, 3
    samples = {f"m{i}": rng.normal(0.1 * i, 1, (n, d)) for i in range(k)}
    settings = {"default (squared hinge, debiased, reg 0.01 x scale)": {},
                "former default (logistic beta 10, entropic, reg 0.05)":
                    {"cost": "logistic", "reg": 0.05, "estimator": "entropic"}}
    times = {name: [] for name in settings}
    for _ in range(2):                                  # interleaved: A, B, A, B
        for name, kw in settings.items():
            t, c = time.perf_counter(), time.process_time()
            mv = D.multivariate_relative(samples, paired=False, **kw)
            times[name].append(time.process_time() - c)
            print(f"multivariate relative k={k} n={n} d={d}, {name}: {time.perf_counter() - t:.1f} s wall, "
                  f"{times[name][-1]:.1f} s CPU; eps {np.round(mv.eps, 3)} se {np.round(mv.se, 4)}", flush=True)
    a, b = (min(v) for v in times.values())
    print(f"CPU time ratio default / former default (best of 2 each, interleaved): {a / b:.2f}")


# ---------------------------------------------------------------- calibration of the absolute and relative tests

def _eps_normal(c: float) -> float:
    """True eps(X, Y) for X ~ N(c, 1), Y ~ N(0, 2^2): the quantile gap is z - c, so eps = E(Z - c)_+^2 / E(Z - c)^2."""
    return ((1 + c * c) * (1 - N.cdf(c)) - c * N.pdf(c)) / (1 + c * c)


def calibration(reps: int) -> None:
    rng = np.random.default_rng(1)
    thr = _eps_normal(0.5)
    B = D.min_resamples(4, ALPHA)
    _table(["test", "scenario", "n", "sets", "paper's form", "ours (default)"])
    for c, label in [(0.5, f"boundary: true eps = threshold = {thr:.3f}"), (0.25, "inside H0: true eps 0.310")]:
        for n in (200, 500):
            hits = [[], []]
            for r in range(reps):
                x, y = rng.normal(c, 1, n), rng.normal(0, 2, n)
                for q, interval in enumerate(("normal", "percentile")):
                    hits[q].append(D.almost_dominance_test(x, y, threshold=thr, n_boot=200, seed=r,
                                                           interval=interval).reject)
            _row("absolute, alpha=0.05", label, n, reps, _rate(hits[0]), _rate(hits[1]))
    for shift in (0.2, 0.25):
        hits = [[], []]
        for r in range(reps // 2):
            x, y = rng.normal(shift, 1, 500), rng.normal(0, 1, 500)
            for q, interval in enumerate(("normal", "percentile")):
                hits[q].append(D.almost_dominance_test(x, y, threshold=0.3, n_boot=200, seed=r,
                                                       interval=interval).reject)
        _row("absolute, H0 eps >= 0.3", f"power, N({shift},1) vs N(0,1)", 500, reps // 2, _rate(hits[0]),
             _rate(hits[1]))
    for paired in (True, False):
        for n in (100, 500):
            paper, ours = [], []
            for r in range(reps):
                z = rng.normal(0, 1, n) if paired else np.zeros(n)
                s = {m: z + rng.normal(mu, 1, n) for m, mu in zip("abcd", (0.0, 0.0, 1.0, -1.0))}
                res = D.relative_test(s, n_boot=B, paired=paired, seed=r)
                zz = res.delta / np.where(res.delta_se > 0, res.delta_se, np.inf)
                iu = np.triu_indices(4, 1)
                naive = D.adjust_p(np.array([2 * (1 - N.cdf(abs(v))) for v in zz[iu]]), "holm")
                paper.append(naive[0] <= ALPHA)
                ours.append(_directional(res, "a", "b"))
            _row("relative k=4, alpha=0.05, Holm", f"a = b (c, d at +-1 sd), {'paired' if paired else 'unpaired'}",
                 n, reps, _rate(paper), _rate(ours))


# ---------------------------------------------------------------- directional verdicts

def verdicts(reps: int) -> None:
    B = D.min_resamples(4, ALPHA)
    n_big = 5000
    print(f"Flip case: a ~ N(0, 1), b ~ N(0, 2^2) (true eps(a, b) = 1/2), with a third model c. One data set (seed 0) "
          f"of n = {n_big} per model, close to the population; c's noise the same, shifted.\n")
    rng = np.random.default_rng(0)
    a, b, zc = rng.normal(0, 1, n_big), rng.normal(0, 2, n_big), rng.normal(0, 1, n_big)
    _table(["c", "former rule (permutation p, sign of one-vs-all delta)", "ours: a vs b", "p(a, b): ratio / "
            "interchangeable", "eps(a, b)"])
    for mu in (-0.5, 0.5):
        res = D.relative_test({"a": a, "b": b, "c": zc + mu}, n_boot=D.min_resamples(3, ALPHA), seed=0)
        ours = "a > b" if res.beats("a", "b") else "b > a" if res.beats("b", "a") else "a ~ b"
        _row(f"N({mu:+.1f}, 1)", _old_rule(res, "a", "b"), ours,
             f"{res.p_parts['ratio'][0, 1]:.3f} / {res.p_parts['interchangeable'][0, 1]:.3f}",
             f"{res.pair_eps[0, 1]:.3f}")
    print(f"\nOver {reps} simulated flip sets per c (n = 500): the verdict on a vs b\n")
    _table(["c", "former rule: a > b", "former rule: b > a", "ours: a > b", "ours: b > a"])
    for mu in (-0.5, 0.5):
        rng = np.random.default_rng(2 + int(mu > 0))
        got = {k: [] for k in ("old a", "old b", "new a", "new b")}
        for r in range(reps):
            res = D.relative_test({"a": rng.normal(0, 1, 500), "b": rng.normal(0, 2, 500),
                                   "c": rng.normal(mu, 1, 500)}, n_boot=D.min_resamples(3, ALPHA), seed=r)
            old = _old_rule(res, "a", "b")
            got["old a"].append(old == "a > b")
            got["old b"].append(old == "b > a")
            got["new a"].append(res.beats("a", "b"))
            got["new b"].append(res.beats("b", "a"))
        _row(f"N({mu:+.1f}, 1)", *(_rate(v) for v in got.values()))

    print(f"\nA pair with true eps = 1/2 (a ~ N(0, 1), b ~ N(0, 2^2)) among k = 4: c, d ~ N(mu, 1) with mu ~ U(-1, 1) "
          f"per set; {reps} sets per row, alpha 0.05, Holm over 6 pairs, {B} resamples. Paired: a = (z + e)/sqrt(2), "
          "b = 2 (z + e')/sqrt(2), c, d = mu + (z + e'')/sqrt(2) with a shared prompt effect z.\n")
    _table(["data", "n", "any directional verdict a vs b (ours)", "former rule"])
    for paired in (False, True):
        for n in (200, 500):
            rng = np.random.default_rng(3 + n + paired)
            ours, former = [], []
            for r in range(reps):
                z = rng.normal(0, 1, n) if paired else None
                mu_c, mu_d = rng.uniform(-1, 1, 2)
                res = D.relative_test({m: _draw(rng, n, z, sd, mu) for m, sd, mu in
                                       (("a", 1, 0.0), ("b", 2, 0.0), ("c", 1, mu_c), ("d", 1, mu_d))},
                                      n_boot=B, paired=paired, seed=r)
                ours.append(_directional(res, "a", "b"))
                former.append(_old_rule(res, "a", "b") != "~")
            _row("paired" if paired else "unpaired", n, _rate(ours), _rate(former))

    print(f"\nPower at n = 500: k = 4 unpaired normals, a = N(0, 1), b = N(-delta, 1), c = N(0.5, 1), d = N(-0.5, 1); "
          f"{reps // 2} sets per row; 'a > b' found (Holm over 6 pairs, {B} resamples)\n")
    _table(["shift delta (sd)", "power: a > b", "wrong direction: b > a"])
    for delta in (0.2, 0.25, 0.3):
        rng = np.random.default_rng(int(delta * 100))
        found, wrong = [], []
        for r in range(reps // 2):
            res = D.relative_test({m: rng.normal(mu, 1, 500) for m, mu in zip("abcd", (0, -delta, 0.5, -0.5))},
                                  n_boot=B, seed=r)
            found.append(res.beats("a", "b"))
            wrong.append(res.beats("b", "a"))
        _row(delta, _rate(found), _rate(wrong))


# ---------------------------------------------------------------- seeds

def _runs(rng, tau: float, q: np.ndarray, runs: int, discrete: bool, shift: float = 0.0) -> np.ndarray:
    """(runs, prompts): prompt effect q shared, a seed effect N(0, tau^2) per run, noise N(0, 1) per answer;
    discrete: cut into 0 / 50 / 100 (a win-rate scale) at -0.5 and 0.5."""
    y = shift + q[None, :] + rng.normal(0, tau, (runs, 1)) + rng.normal(0, 1, (runs, q.size))
    return np.digitize(y, [-0.5, 0.5]) * 50.0 if discrete else y


def _hierarchical_p(x: np.ndarray, y: np.ndarray, rng, B: int) -> float:
    """The hierarchical bootstrap asked for first (seeds resampled with replacement, then prompts jointly),
    percentile p of eps(x, y) = 1/2, two-sided: the design docs/DOMINANCE.md shows miscalibrated with 3 seeds."""
    sx, sy = rng.integers(0, x.shape[0], (B, x.shape[0])), rng.integers(0, y.shape[0], (B, y.shape[0]))
    idx = rng.integers(0, x.shape[1], (B, x.shape[1]))
    bx = np.sort(x[sx[:, :, None], idx[:, None, :]].reshape(B, -1), -1)
    by = np.sort(y[sy[:, :, None], idx[:, None, :]].reshape(B, -1), -1)
    e = D.ratios_sorted(bx, by)
    return min(1.0, 2 * min(D.bootstrap_p(e, 0.5), D.bootstrap_p(1 - e, 0.5)))


def seeds(reps: int) -> None:
    n, S, B = 600, 3, 400
    print(f"Two models that differ only by seed-level noise: {S} runs each on the same {n} prompts; per answer "
          "score = prompt effect N(0, 1) + run effect N(0, tau^2) + noise N(0, 1) (discrete: cut at -0.5 / 0.5 into "
          f"0 / 50 / 100); {reps} sets per row; rejection rate of a directional verdict at alpha 0.05, {B} "
          "resamples. Prompt-only: the relative test on the seed-averaged per-prompt scores (the former claims "
          "report). Hierarchical: seeds then prompts resampled, percentile p of eps = 1/2. Ours: relative_test on "
          "(runs, prompts), whose seed part is mean_difference_test.\n")
    _table(["scores", "tau (seed sd / answer sd)", "prompt-only", "hierarchical bootstrap",
            "ours (seeds in the test)"])
    for discrete in (False, True):
        for tau in (0.0, 0.05, 0.1, 0.2):
            rng = np.random.default_rng(int(100 * tau) + 7 * discrete)
            prompt_only, hier, ours = [], [], []
            for r in range(reps):
                q = rng.normal(0, 1, n)
                x, y = _runs(rng, tau, q, S, discrete), _runs(rng, tau, q, S, discrete)
                prompt_only.append(_directional(D.relative_test({"x": x.mean(0), "y": y.mean(0)}, n_boot=B,
                                                                paired=True, seed=r), "x", "y"))
                hier.append(_hierarchical_p(x, y, rng, B) <= ALPHA)
                ours.append(_directional(D.relative_test({"x": x, "y": y}, n_boot=B, paired=True, seed=r), "x", "y"))
            _row("discrete 0/50/100" if discrete else "continuous", tau, _rate(prompt_only), _rate(hier), _rate(ours))
    print(f"\nPower with seeds: x better by a shift of 0.1 (answer sd 1), {S} runs, {n} prompts, {reps // 2} sets\n")
    _table(["scores", "tau", "prompt-only", "ours"])
    for discrete in (False, True):
        for tau in (0.0, 0.05):
            rng = np.random.default_rng(11 + int(100 * tau) + 7 * discrete)
            prompt_only, ours = [], []
            for r in range(reps // 2):
                q = rng.normal(0, 1, n)
                x, y = _runs(rng, tau, q, S, discrete, 0.1), _runs(rng, tau, q, S, discrete)
                prompt_only.append(D.relative_test({"x": x.mean(0), "y": y.mean(0)}, n_boot=B, paired=True,
                                                   seed=r).beats("x", "y"))
                ours.append(D.relative_test({"x": x, "y": y}, n_boot=B, paired=True, seed=r).beats("x", "y"))
            _row("discrete 0/50/100" if discrete else "continuous", tau, _rate(prompt_only), _rate(ours))


# ---------------------------------------------------------------- the planner

def _points(shift: float, tau: float) -> float:
    """Difference of mean scores (0/50/100 scale) made by a latent shift in the discrete model of ``_runs``: the
    latent score is N(shift, 2 + tau^2) (prompt effect, run effect, noise), cut at -0.5 and 0.5."""
    sd = math.sqrt(2 + tau * tau)

    def mean(m):
        return 50 * (N.cdf((m + 0.5) / sd) + N.cdf((m - 0.5) / sd))

    return mean(shift) - mean(0.0)


def _shift_for(points: float, tau: float) -> float:
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _points(mid, tau) < points else (lo, mid)
    return (lo + hi) / 2


def plan(reps: int) -> None:
    B = 400
    print("The planner (aot_handbook.power) against simulation. Scores as in `seeds` (prompt effect N(0, 1), run "
          "effect N(0, tau^2), noise N(0, 1); discrete: cut to 0/50/100), k = 2, paired. The planner's components "
          "are the model's own: continuous within 1, seed tau^2, interaction 0; discrete: within and interaction "
          "from a pilot of 40 runs x 5000 prompts per model, seed (slope tau)^2 with the slope of the mean score in "
          "the latent shift (a pilot's seed estimate from few runs is itself noisy: plan with a margin). The "
          "difference of means is the planner's own detectable difference at power 0.8 (and 1.5x it); "
          f"{reps // 2} sets per row; rates of the full verdict (relative_test, {B} resamples) and of its mean part "
          "alone (mean_difference_test: the seed level, or the paired t over prompts with one run).\n")
    _table(["scores", "prompts", "runs", "tau", "difference of means", "predicted power", "verdict rate",
            "mean-part rate"])
    for discrete, n, runs, tau in ((False, 805, 1, 0.0), (False, 600, 3, 0.0), (False, 600, 3, 0.1),
                                   (True, 805, 1, 0.0), (True, 600, 3, 0.05)):
        rng = np.random.default_rng(n + runs + int(100 * tau) + discrete)
        if discrete:
            q = rng.normal(0, 1, 5000)
            comp = P.pilot(_runs(rng, 0.0, q, 40, True), _runs(rng, 0.0, q, 40, True), paired=True)
            comp.seed = (tau * (_points(1e-4, 0.0) / 1e-4)) ** 2
        else:
            comp = P.Components(interaction=0.0, within=1.0, seed=tau * tau, seed_known=True)
        for factor in (1.0, 1.5):
            diff = factor * P.detectable(comp, n, runs, ALPHA, 0.8)   # in points of mean score when discrete
            predicted = P.power_at(comp, n, runs, diff, ALPHA)
            shift = _shift_for(diff, tau) if discrete else diff
            verdict, mean_part = [], []
            for r in range(reps // 2):
                q = rng.normal(0, 1, n)
                x, y = _runs(rng, tau, q, runs, discrete, shift), _runs(rng, tau, q, runs, discrete)
                verdict.append(D.relative_test({"x": x, "y": y}, n_boot=B, paired=True, seed=r).beats("x", "y"))
                md = D.mean_difference_test(x, y, paired=True)
                mean_part.append(md.p_value <= ALPHA and md.diff > 0)
            _row("discrete 0/50/100" if discrete else "continuous", n, runs, tau, f"{diff:.3f}", f"{predicted:.3f}",
                 _rate(verdict), _rate(mean_part))


# ---------------------------------------------------------------- multivariate

def multivariate(reps: int, cases: str = "d1,1,2,3,4,4@600") -> None:
    """``cases``: which tables or coverage rows to print (d1: the d = 1 table; 1-4: the coverage cases at n = 200;
    4@600: case 4 at n = 600, reps // 4 sets, about 20 s a set on one loaded core). Each row seeds its own
    generator, so rows run apart print what they print together."""
    cases = cases.split(",")
    if "d1" in cases:
        _d1_table(reps)
    _coverage(reps, cases)


def _d1_table(reps: int) -> None:
    print(f"d = 1: the multivariate ratio against the exact 1-D ratio on the same samples (n = 200 each, {reps // 10} "
          "sets per family): mean and largest absolute difference.\n")
    families = {
        "continuous: N(0.2, 1) vs N(0, 1.5^2)": lambda g, n: (g.normal(0.2, 1, n), g.normal(0, 1.5, n)),
        "bounded: Beta(5, 3) vs Beta(1.2, 1.2)": lambda g, n: (g.beta(5, 3, n), g.beta(1.2, 1.2, n)),
        "discrete: 0/50/100 (.3/.3/.4) vs (.2/.5/.3)": lambda g, n: (
            g.choice([0.0, 50.0, 100.0], n, p=[.3, .3, .4]), g.choice([0.0, 50.0, 100.0], n, p=[.2, .5, .3])),
        "discrete: integers 0-4 uniform vs Binomial(4, 1/2)": lambda g, n: (
            g.integers(0, 5, n).astype(float), g.binomial(4, 0.5, n).astype(float)),
    }
    settings = {"default: squared hinge, debiased, reg 0.01 x scale": {},
                "squared hinge, entropic value, same reg": {"estimator": "entropic"},
                "former default: logistic beta 10, entropic, reg 0.05 (absolute)":
                    {"cost": "logistic", "reg": 0.05, "estimator": "entropic"}}
    _table(["family", *settings])
    for fam, gen in families.items():
        rng = np.random.default_rng(len(fam))
        errs = {s: [] for s in settings}
        for _ in range(reps // 10):
            x, y = gen(rng, 200)
            exact = D.violation_ratio(x, y)
            for s, kw in settings.items():
                errs[s].append(abs(D.multivariate_violation_ratio(x, y, **kw).ratio - exact))
        _row(fam, *(f"{np.mean(e):.4f} (max {np.max(e):.4f})" for e in errs.values()))


def _coverage(reps: int, cases: list[str]) -> None:
    print("\nCoverage of the 95% CLT intervals (default settings), of the population value: "
          "(1) d = 1 bounded, x ~ Beta(3, 3), y ~ Beta(1, 1.2), true eps 0.1776 (quantile functions integrated on "
          "2M points); (2) d = 2, x ~ N(0, I), y ~ N(0, 4 I): true ratio 1/2 by symmetry; (3) d = 2, x ~ N((0.3, "
          "0), I) vs y ~ N(0, I), paired rows sharing a prompt effect: x dominates y on both metrics, so the "
          "population ratio is 0, a bound; the reference is the mean of 5 solves at n = 1000 (their sd printed), "
          "itself biased up; (4) the stress case d = 1, x ~ N(0.5, 1), y ~ N(0, 2^2), true eps 0.1677 (closed form), "
          "where the sample ratio itself is skewed and biased at small n (the mean of the exact 1-D ratio is "
          "printed beside ours).\n")
    _table(["case", "n", "sets", "coverage (logit interval, default)", "coverage (symmetric interval, former)",
            "mean ratio", "mean exact 1-D ratio", "mean CLT se", "sd of the ratio over sets"])
    for case, n, sets in (("(1) d=1 Beta", 200, reps), ("(2) d=2 symmetric", 200, reps),
                          ("(3) d=2 shifted, paired", 200, reps), ("(4) d=1 normal", 200, reps),
                          ("(4) d=1 normal", 600, reps // 4)):
        if (case[1] if n == 200 else f"{case[1]}@{n}") not in cases:
            continue
        rng = np.random.default_rng(n + len(case))
        if case.startswith("(3)"):
            refs = []
            for _ in range(5):
                z = rng.normal(0, 1, (1000, 2))
                refs.append(D.multivariate_violation_ratio(np.array([0.3, 0]) + (z + rng.normal(0, 1, (1000, 2))) /
                                                           math.sqrt(2), (z + rng.normal(0, 1, (1000, 2))) /
                                                           math.sqrt(2), paired=True).ratio)
            truth = float(np.mean(refs))
            print(f"(3) truth {truth:.4f} (sd of the 5 solves at n = 1000 {np.std(refs):.4f})")
        else:
            truth = {"(1)": 0.17757, "(2)": 0.5, "(4)": _eps_normal(0.5)}[case[:3]]
        hits, sym, ratios, exact, ses = [], [], [], [], []
        for _ in range(sets):
            paired = False
            if case.startswith("(1)"):
                x, y = rng.beta(3, 3, n), rng.beta(1, 1.2, n)
            elif case.startswith("(2)"):
                x, y = rng.normal(0, 1, (n, 2)), rng.normal(0, 2, (n, 2))
            elif case.startswith("(3)"):
                z = rng.normal(0, 1, (n, 2))
                x = np.array([0.3, 0]) + (z + rng.normal(0, 1, (n, 2))) / math.sqrt(2)
                y, paired = (z + rng.normal(0, 1, (n, 2))) / math.sqrt(2), True
            else:
                x, y = rng.normal(0.5, 1, n), rng.normal(0, 2, n)
            r = D.multivariate_violation_ratio(x, y, paired=paired)
            hits.append(r.ci[0] <= truth <= r.ci[1])
            lo, hi = D.ratio_interval(r.ratio, r.se, ALPHA, "normal")
            sym.append(lo <= truth <= hi)
            ratios.append(r.ratio)
            ses.append(r.se)
            exact.append(D.violation_ratio(x, y) if x.ndim == 1 else math.nan)
        _row(case, n, sets, _rate(hits), _rate(sym), f"{np.mean(ratios):.4f}", f"{np.mean(exact):.4f}",
             f"{np.mean(ses):.4f}", f"{np.std(ratios):.4f}")


# ---------------------------------------------------------------- checks of docs/DOMINANCE.md statements

def checks(reps: int) -> None:
    import deepsig
    from deepsig.aso import compute_violation_ratio

    rng = np.random.default_rng(5)
    x, y = rng.normal(0.1, 1, 300), rng.normal(0, 1.4, 300)
    print("Monte-Carlo precision of eps_min at B = 1000 (one data set, n = 300; eps_min recomputed with "
          f"{reps // 10} bootstrap seeds): sd over bootstrap seeds, in units of the bootstrap se\n")
    _table(["form", "sd of eps_min / se", "theory"])
    for interval in ("normal", "percentile"):
        tests = [D.almost_dominance_test(x, y, n_boot=1000, seed=s, interval=interval) for s in range(reps // 10)]
        se = np.mean([t.se for t in tests])
        theory = (f"{N.inv_cdf(0.95) / math.sqrt(2000):.3f} (z sqrt(1/(2B)))" if interval == "normal" else
                  f"{math.sqrt(0.05 * 0.95 / 1000) / N.pdf(N.inv_cdf(0.95)):.3f} (sqrt(a(1-a)/B) / phi(z), "
                  "normal law)")
        _row(interval, f"{np.std([t.eps_min for t in tests]) / se:.3f}", theory)

    print("\ndeepsig.aso (1.2.8) on discrete scores: its ratio integrates on a grid t = dt, 2dt, ... and drops "
          "t = dt from the numerator only; n = 200 each, dt 0.001\n")
    _table(["scores", "sets", "max |eps ours - eps deepsig|", "max |eps_ab + eps_ba - 1| (deepsig)",
            "max |eps ours - eps deepsig| at dt 0.0001"])
    for name, gen in (("continuous N(0.1,1) vs N(0,1.4^2)",
                       lambda: (rng.normal(0.1, 1, 200), rng.normal(0, 1.4, 200))),
                      ("0/1 (p .55 vs .5)", lambda: ((rng.random(200) < .55) * 1.0, (rng.random(200) < .5) * 1.0)),
                      ("0/50/100", lambda: (rng.choice([0.0, 50, 100], 200, p=[.3, .3, .4]),
                                            rng.choice([0.0, 50, 100], 200, p=[.2, .5, .3]))),
                      ("integers 0-4", lambda: (rng.integers(0, 5, 200) * 1.0, rng.binomial(4, .5, 200) * 1.0))):
        d1, sym, d2 = [], [], []
        for _ in range(reps // 40):
            a, b = gen()
            ours = D.violation_ratio(a, b)
            theirs = compute_violation_ratio(a, b, dt=0.001)
            d1.append(abs(ours - theirs))
            sym.append(abs(theirs + compute_violation_ratio(b, a, dt=0.001) - 1))
            d2.append(abs(ours - compute_violation_ratio(a, b, dt=0.0001)))
        _row(name, reps // 40, f"{max(d1):.4f}", f"{max(sym):.4f}", f"{max(d2):.4f}")

    print("\neps_min (normal form, alpha 0.05) against deepsig.aso (confidence 0.95, B = 1000 each), one data set "
          "per row, n = 200: difference, and our bootstrap's Monte-Carlo error 1.645 se sqrt(1/2000 + 1/2000)\n")
    _table(["scores", "eps ours", "eps_min ours", "eps_min deepsig", "difference", "3 x MC error", "bootstrap law"])
    for name, (a, b) in (("continuous", (rng.normal(0.1, 1, 200), rng.normal(0, 1.4, 200))),
                         ("0/50/100", (rng.choice([0.0, 50, 100], 200, p=[.35, .3, .35]),
                                       rng.choice([0.0, 50, 100], 200, p=[.3, .4, .3]))),
                         ("0/1", ((rng.random(200) < .52) * 1.0, (rng.random(200) < .5) * 1.0))):
        ours = D.almost_dominance_test(a, b, interval="normal", n_boot=1000, seed=0)
        theirs = float(deepsig.aso(a, b, confidence_level=0.95, num_bootstrap_iterations=1000, dt=0.001, seed=0,
                                   show_progress=False))
        boots = np.array([D.violation_ratio(a[i], b[j]) for i, j in
                          zip(rng.integers(0, 200, (300, 200)), rng.integers(0, 200, (300, 200)))])
        law = ", ".join(f"{v:g}: {np.mean(boots == v):.2f}" for v in (0.0, 0.5, 1.0) if np.mean(boots == v) > 0.01)
        mc = 1.645 * ours.se * math.sqrt(2 / 2000)
        _row(name, f"{ours.eps:.3f}", f"{ours.eps_min:.3f}", f"{theirs:.3f}", f"{abs(ours.eps_min - theirs):.3f}",
             f"{3 * mc:.3f}", law or "continuous")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["speed", "calibration", "verdicts", "seeds", "plan", "multivariate", "checks"])
    ap.add_argument("--reps", type=int, default=400, help="simulated sets per row (tables use fractions of it)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--cases", default="d1,1,2,3,4,4@600", help="multivariate: which tables/coverage cases")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.what == "speed":
        speed(a.profile)
    elif a.what == "multivariate":
        multivariate(a.reps, a.cases)
    else:
        {"calibration": calibration, "verdicts": verdicts, "seeds": seeds, "plan": plan, "multivariate": multivariate,
         "checks": checks}[a.what](a.reps)


if __name__ == "__main__":
    main()
