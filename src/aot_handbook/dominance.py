"""Stochastic dominance between score distributions, with confidence (docs/DOMINANCE.md).

Which model is better, and how sure are we? Pure functions on numpy arrays / torch
tensors (no trainer, no model); higher scores are better throughout.

- ``violation_ratio(x, y, order=1|2)``: the share of the squared distance between two
  quantile curves where ``x`` fails to dominate ``y`` (Del Barrio et al. 2018, eps_W2;
  Nitsure et al. 2024 for the second order), exact for step quantile functions.
- ``almost_dominance_test``: the absolute test of almost dominance, eps_min at level alpha.
- ``relative_test``: k models (each one run, or several runs: seeds), a directional test of
  every pair from that pair's own ratio eps(i, j), a multiple-testing correction, a ranking
  consistent with the verdicts; the one-versus-all ratios as a summary.
- ``mean_difference_test``: the seed level of a comparison (run means against the seed-to-seed
  spread, Student t); ``seed_components`` its variance components (also what ``power`` plans with).
- ``portfolio``: several metrics turned into one score (weighted geometric mean of CDFs).
- ``multivariate_violation_ratio`` / ``multivariate_relative``: the ratio of Rioux et al.
  (2024) through entropic optimal transport, by default with the squared-hinge cost (the 1-D
  ratio's own) and a debiased estimator, with a CLT confidence interval from the dual potentials.

Choices the papers leave open are parameters; their defaults are argued in docs/DOMINANCE.md.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

from .errors import UserError

_N = NormalDist()


def _phi(z):
    """Standard normal CDF, elementwise (stdlib only: no scipy dependency)."""
    z = np.asarray(z, dtype=float)
    return 0.5 * np.vectorize(math.erfc, otypes=[float])(-z / math.sqrt(2.0)) if z.size else z


def _named(models, convert) -> tuple[list[str], list]:
    """Model names and their converted samples, from a mapping name -> samples or a sequence (named by index)."""
    items = models.items() if isinstance(models, dict) else enumerate(models)
    pairs = [(str(n), convert(v, str(n))) for n, v in items]
    return [n for n, _ in pairs], [v for _, v in pairs]


class ScoreError(UserError):
    """Scores a test cannot use (not numbers, NaN, too few, mismatched prompts); the message names them."""


def _numeric(a, name: str) -> np.ndarray:
    """``a`` as a float64 array, refusing what is not a number: strings ("0.5" is not coerced), booleans,
    None, objects. A user's scores pass through here once, so the error names them."""
    try:
        raw = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    except ValueError as exc:  # numpy refuses ragged nesting
        raise ScoreError(f"{name}: runs of different lengths ({exc})") from exc
    if raw.dtype.kind not in "iuf":
        what = {"b": "booleans", "U": "strings", "S": "bytes", "O": "non-numbers (None, objects or ragged lists)"}
        raise ScoreError(f"{name}: scores must be numbers, got {what.get(raw.dtype.kind, raw.dtype)} "
                         f"(e.g. {raw.ravel()[:3].tolist()})")
    x = raw.astype(np.float64)
    if x.size == 0:
        raise ScoreError(f"{name}: no scores")
    if not np.isfinite(x).all():
        raise ScoreError(f"{name}: {int((~np.isfinite(x)).sum())} NaN or infinite scores")
    return x


def _as_scores(a, name: str = "scores") -> np.ndarray:
    return _numeric(a, name).ravel()


def _as_runs(a, name: str = "scores") -> np.ndarray:
    """One model's scores as (runs, prompts): a 1-D array is one run; a 2-D array (or a list of equal-length
    arrays) is several runs of the model (training seeds) that answered the same prompts in the same order."""
    x = _numeric(a, name)
    if x.ndim == 1:
        return x[None, :]
    if x.ndim != 2:
        raise ScoreError(f"{name}: expected scores (prompts,) or (runs, prompts), got shape {x.shape}")
    return x


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """A level in (0, 1), or a ValueError naming it (1.5 or 0 would make every test meaningless)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


# --------------------------------------------------------------------------------------
# The 1-D violation ratio, exact for step quantile functions
# --------------------------------------------------------------------------------------

def quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged quantile levels of samples of sizes n and m.

    The empirical quantile functions (left-continuous inverses of the CDFs) are constant
    on every interval ``(t_{k-1}, t_k]`` of the merged levels {i/n} U {j/m}; there they
    equal the order statistics ``x_(ceil(t_k n))`` and ``y_(ceil(t_k m))``. Levels are
    integers over lcm(n, m), so the indices are exact (no float rounding at ties of levels).
    Returns (interval lengths, 0-based index into sorted x, into sorted y).
    """
    lcm = n * m // math.gcd(n, m)
    if lcm > np.iinfo(np.int64).max:
        # k <= lcm must fit int64; the indices below never multiply two large numbers (no silent wrap-around)
        raise ValueError(f"quantile_grid: sizes {n} and {m} have lcm {lcm}, beyond int64; subsample the scores")
    step_x, step_y = lcm // n, lcm // m
    k = np.union1d(np.arange(1, n + 1, dtype=np.int64) * step_x, np.arange(1, m + 1, dtype=np.int64) * step_y)
    dt = np.diff(k, prepend=0) / lcm
    ix = (k + step_x - 1) // step_x - 1            # ceil(k n / lcm) - 1, without forming k * n
    iy = (k + step_y - 1) // step_y - 1
    return dt, ix, iy


def _positive_sq_integral(a: np.ndarray, b: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact integrals of D^2 and (D)_+^2 over segments where D is linear from a to b."""
    full = length * (a * a + a * b + b * b) / 3.0
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_down = length * np.where(a > 0, a, 0.0) ** 3 / (3.0 * (a - b))   # a > 0 > b
        cross_up = length * np.where(b > 0, b, 0.0) ** 3 / (3.0 * (b - a))     # a < 0 < b
    pos = np.where((a >= 0) & (b >= 0), full,
                   np.where((a > 0) & (b < 0), cross_down,
                            np.where((a < 0) & (b > 0), cross_up, 0.0)))
    return full, pos


def _num_den(xs: np.ndarray, ys: np.ndarray, order: int, grid) -> tuple[np.ndarray, np.ndarray]:
    """(int (G_y - G_x)_+^2, int (G_y - G_x)^2) for batches of sorted samples."""
    dt, ix, iy = grid if grid is not None else quantile_grid(xs.shape[-1], ys.shape[-1])
    # equal sizes: the levels are i/n for both, no gather needed
    gap = ys - xs if xs.shape[-1] == ys.shape[-1] else ys[..., iy] - xs[..., ix]
    if order == 1:
        return (np.maximum(gap, 0.0) ** 2) @ dt, (gap * gap) @ dt
    if order == 2:
        d = np.cumsum(gap * dt, axis=-1)
        a = np.concatenate([np.zeros_like(d[..., :1]), d[..., :-1]], axis=-1)
        full, pos = _positive_sq_integral(a, d, dt)
        return pos.sum(-1), full.sum(-1)
    raise ValueError(f"order must be 1 or 2, got {order!r}")


def ratios_sorted(xs: np.ndarray, ys: np.ndarray, *, order: int = 1, grid=None) -> np.ndarray:
    """Violation ratios eps(x, y) for batches of SORTED samples, xs (..., n), ys (..., m).

    Order 1: the quantile gap ``Q_y - Q_x`` is constant on each merged interval.
    Order 2: ``G(p) = int_0^p Q`` is piecewise linear, so ``G_y - G_x`` is linear on each
    interval and its (positive part) squared integrates in closed form.
    Identical curves (zero distance) give 0.5, which keeps eps(x, y) + eps(y, x) = 1.
    """
    num, den = _num_den(xs, ys, order, grid)
    same = den == 0.0          # identical quantile curves: every gap is exactly 0
    return np.where(same, 0.5, num / np.where(same, 1.0, den))


def sq_distance_sorted(xs: np.ndarray, ys: np.ndarray, *, order: int = 1, grid=None) -> np.ndarray:
    """``int (G_y - G_x)^2``: the squared W2 distance (order 1), the ratio's denominator."""
    return _num_den(xs, ys, order, grid)[1]


def violation_ratio(x, y, *, order: int = 1) -> float:
    """eps(x, y) = int (G_y - G_x)_+^2 / int (G_y - G_x)^2 over quantile levels [0, 1].

    ``G = Q`` (quantile function) for ``order=1``; ``G(p) = int_0^p Q`` for ``order=2``.
    0 means x dominates y at every level; eps(x, y) + eps(y, x) = 1. Exact for samples of
    any sizes, with ties. Higher scores are better.
    """
    xs, ys = np.sort(_as_scores(x, "x")), np.sort(_as_scores(y, "y"))
    return float(ratios_sorted(xs, ys, order=order))


# --------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------

def _progress(total: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="rep")


def _resample_sorted(samples: list[np.ndarray], idx_rng: np.random.Generator, reps: int, paired: bool):
    """One chunk of bootstrap replicates, each model's resample sorted: list of (reps, n_i)."""
    if paired:
        n = samples[0].size
        idx = idx_rng.integers(0, n, size=(reps, n))
        return [np.sort(s[idx], axis=-1) for s in samples]
    return [np.sort(s[idx_rng.integers(0, s.size, size=(reps, s.size))], axis=-1) for s in samples]


def _check_paired(samples: list[np.ndarray], names: list[str]) -> None:
    sizes = {nm: s.size for nm, s in zip(names, samples)}
    if len(set(sizes.values())) > 1:
        raise ScoreError(f"a paired test needs the same prompts for every model; sizes differ: {sizes}")


def _min_size(samples: list[np.ndarray], names: list[str], min_samples: int) -> None:
    for nm, s in zip(names, samples):
        if s.size < min_samples:
            raise ScoreError(f"{nm}: {s.size} scores, fewer than the {min_samples} this test needs "
                             "(its bootstrap variance would be meaningless)")


def bootstrap_p(boots: np.ndarray, threshold: float) -> float:
    """One-sided bootstrap p-value of H0 ``value >= threshold``: ``(1 + #{boot >= threshold}) / (B + 1)``.

    It inverts the percentile interval: p <= alpha exactly when the order statistic
    ``percentile_upper(boots, alpha)`` is below the threshold. Its smallest value is 1 / (B + 1).
    """
    return float((1 + np.count_nonzero(boots >= threshold)) / (boots.size + 1))


def percentile_upper(boots: np.ndarray, alpha: float) -> float:
    """The upper end of the one-sided (1 - alpha) percentile interval that ``bootstrap_p`` inverts: the
    k-th smallest bootstrap value, k = B + 1 - floor(alpha (B + 1)) (the (1 - alpha)(B + 1)-th when that is an
    integer). ``+inf`` when B is too small for any rejection at this alpha (alpha (B + 1) < 1)."""
    b = boots.size
    k = b + 1 - math.floor(alpha * (b + 1))
    return float(np.partition(boots, k - 1)[k - 1]) if k <= b else math.inf


@dataclass
class AbsoluteTest:
    """Almost dominance of x over y: H0 eps(x, y) >= threshold. ``reject`` is ``p_value <= alpha``, the same
    decision as comparing ``eps_min`` with the threshold (below it for the percentile form, at most it for the
    normal form)."""
    eps: float
    se: float
    eps_min: float
    threshold: float
    alpha: float
    p_value: float
    interval: str

    @property
    def reject(self) -> bool:
        return self.p_value <= self.alpha


def almost_dominance_test(x, y, *, threshold: float = 0.5, alpha: float = 0.05, order: int = 1,
                          n_boot: int = 1000, paired: bool = False, seed: int = 0, interval: str = "percentile",
                          min_samples: int = 10, chunk: int | None = None, progress: bool = False) -> AbsoluteTest:
    """The absolute test of almost dominance (Del Barrio et al. 2018; Nitsure et al. 2024).

    ``eps_min`` is the upper end of a one-sided (1 - alpha) bootstrap confidence interval for
    the true ratio; if it is below ``threshold``, x almost dominates y at level alpha.
    ``interval="percentile"`` (default): the order statistic of the bootstrap ratios that
    ``bootstrap_p`` inverts, and ``p_value = (1 + #{eps* >= threshold}) / (n_boot + 1)``.
    ``interval="normal"``: ``eps + z_{1-alpha} * se`` (se the bootstrap sd), the papers' CLT form
    and the quantity ``deepsig.aso`` returns (with ``confidence_level = 1 - alpha``), and
    ``p_value = Phi((eps - threshold) / se)``. Each form's p-value is the one of its own decision
    rule: ``reject`` is ``p_value <= alpha``. The ratio's sampling law is skewed and its se grows
    with it, so the normal form rejects too often on the boundary of the null (docs/DOMINANCE.md);
    the percentile form stays near alpha.
    ``threshold=0.5``: x violates dominance of y on less than half the squared distance;
    the papers use it or smaller values (0.2-0.4) for a stricter claim.
    """
    alpha = check_alpha(alpha)
    xa, ya = _as_scores(x, "x"), _as_scores(y, "y")
    _min_size([xa, ya], ["x", "y"], min_samples)
    if paired:
        _check_paired([xa, ya], ["x", "y"])
    if interval not in ("percentile", "normal"):
        raise ValueError(f"interval must be percentile or normal, got {interval!r}")
    eps = float(ratios_sorted(np.sort(xa), np.sort(ya), order=order))
    rng = np.random.default_rng(seed)
    grid = quantile_grid(xa.size, ya.size)
    chunk = chunk or max(1, min(n_boot, 2_000_000 // max(xa.size, ya.size)))
    boots, bar = [], _progress(n_boot, "bootstrap", progress)
    for start in range(0, n_boot, chunk):
        reps = min(chunk, n_boot - start)
        xs, ys = _resample_sorted([xa, ya], rng, reps, paired)
        boots.append(ratios_sorted(xs, ys, order=order, grid=grid))
        if bar is not None:
            bar.update(reps)
    if bar is not None:
        bar.close()
    boots = np.concatenate(boots)
    se = float(boots.std())
    if interval == "normal":
        eps_min = eps + _N.inv_cdf(1 - alpha) * se
        p = float(_phi((eps - threshold) / se)) if se > 0 else float(eps >= threshold)
    else:
        eps_min, p = percentile_upper(boots, alpha), bootstrap_p(boots, threshold)
    return AbsoluteTest(eps, se, float(np.clip(eps_min, 0.0, 1.0)), threshold, alpha, p, interval)


def mean_ci(x, *, alpha: float = 0.05, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap (1 - alpha) interval of the mean over samples
    (prompts). Used by ``make compare`` and the cells of ``make table``."""
    alpha = check_alpha(alpha)
    a = _as_scores(x)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // a.size))
    means = np.concatenate([a[rng.integers(0, a.size, size=(min(chunk, n_boot - s), a.size))].mean(-1)
                            for s in range(0, n_boot, chunk)])
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(a.mean()), float(lo), float(hi)


# --------------------------------------------------------------------------------------
# The relative test over k models (each model one run, or several: seeds)
# --------------------------------------------------------------------------------------

# ---- Student t (stdlib only), for the seed level of a comparison and for planning ----

def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz; Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    floor = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > floor else floor)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > floor else floor)
            c = 1.0 + num / c
            c = c if abs(c) > floor else floor
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * h / a


def student_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom; normal for df = inf."""
    if not math.isfinite(df) or df > 1e7:
        return float(_phi(-t))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def student_isf(p: float, df: float) -> float:
    """The t with P(T > t) = p (bisection on ``student_sf``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"student_isf: p must be in (0, 1), got {p}")
    lo, hi = -1.0, 1.0
    while student_sf(lo, df) < p:
        lo *= 2.0
    while student_sf(hi, df) > p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if student_sf(mid, df) > p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


# ---- the seed level: run means against the seed-to-seed spread ----

@dataclass
class SeedComponents:
    """Variance components of one model's scores, runs (seeds) x prompts (the same prompts in every run)."""
    runs: int
    prompts: int
    mean: float               # over runs and prompts
    prompt_means: np.ndarray  # (prompts,) averaged over runs
    run_var: float            # variance of the run means (ddof 1); nan with one run
    within: float             # mean square of the run x prompt residual (what a run adds per prompt); nan: one run

    @property
    def seed_var(self) -> float:
        """The seed variance of a run's mean beyond its prompt noise, run_var - within / prompts (unclamped)."""
        return self.run_var - self.within / self.prompts


def seed_components(runs) -> SeedComponents:
    """Two-way (runs x prompts) analysis of variance of one model's scores, (runs, prompts) or (prompts,)."""
    y = _as_runs(runs)
    s, n = y.shape
    run_means, prompt_means = y.mean(1), y.mean(0)
    if s < 2:
        return SeedComponents(s, n, float(y.mean()), prompt_means, math.nan, math.nan)
    resid = y - run_means[:, None] - prompt_means[None, :] + y.mean()
    within = float((resid ** 2).sum() / ((s - 1) * (n - 1))) if n > 1 else 0.0
    return SeedComponents(s, n, float(y.mean()), prompt_means, float(run_means.var(ddof=1)), within)


@dataclass
class MeanDifference:
    """``mean_difference_test``: mean(x) - mean(y) against the seed and the prompt variance."""
    diff: float
    se: float
    df: float               # degrees of freedom of the t reference
    p_value: float          # two-sided
    seed_df: int            # runs(x) + runs(y) - 2 (0: one run each, the test is over prompts only)


def mean_difference_test(x, y, *, paired: bool) -> MeanDifference:
    """The seed level of a comparison: is mean(x) - mean(y) larger than the seed-to-seed spread allows?

    ``x``, ``y``: (runs, prompts), or (prompts,) for one run. With several runs, the variance of the difference is

        var_runs (1/S_x + 1/S_y)  +  interaction / n

    ``var_runs`` the pooled variance of the run means (Student's two-sample t on the runs: it holds the seed
    variance and each run's own prompt noise, with S_x + S_y - 2 degrees of freedom), ``interaction`` the
    variance over prompts of the run-averaged per-prompt differences beyond what the runs' noise explains
    (two-way analysis of variance; 0 when the models differ by the same amount on every prompt), with n - 1;
    Student t with Satterthwaite's degrees of freedom. Exact under normal seed effects when there is no
    interaction, whatever the seed variance (docs/DOMINANCE.md): with three seeds per model it has only four
    degrees of freedom, which is what three seeds can tell (a bootstrap over three seeds cannot be calibrated).
    With one run each: the paired t over prompts (``paired``) or Welch's t.
    """
    cx, cy = seed_components(x), seed_components(y)
    if paired and cx.prompts != cy.prompts:
        raise ScoreError(f"a paired test needs the same prompts: {cx.prompts} vs {cy.prompts}")
    diff = cx.mean - cy.mean
    seed_df = cx.runs + cy.runs - 2
    if paired:
        spreads = [(float(np.var(cx.prompt_means - cy.prompt_means, ddof=1)), cx.prompts)]
    else:
        spreads = [(float(np.var(c.prompt_means, ddof=1)), c.prompts) for c in (cx, cy)]
    if seed_df == 0:                                   # prompts only: paired t or Welch
        parts = [(v / n, n - 1) for v, n in spreads]
    else:
        pooled = sum((c.runs - 1) * c.run_var for c in (cx, cy) if c.runs > 1) / seed_df
        within = sum((c.runs - 1) * c.within for c in (cx, cy) if c.runs > 1) / seed_df
        noise = [within * (1 / cx.runs + 1 / cy.runs)] if paired else [within / cx.runs, within / cy.runs]
        parts = [(pooled * (1 / cx.runs + 1 / cy.runs), seed_df),
                 *((max(0.0, v - e) / n, n - 1) for (v, n), e in zip(spreads, noise))]
    v = sum(a for a, _ in parts)
    if v <= 0:
        return MeanDifference(diff, 0.0, math.inf, 1.0 if diff == 0 else 0.0, seed_df)
    df = v * v / sum(a * a / max(d, 1) for a, d in parts)
    return MeanDifference(diff, math.sqrt(v), df, min(1.0, 2.0 * student_sf(abs(diff) / math.sqrt(v), df)), seed_df)


def interchangeable_p(x, y, *, paired: bool, n_boot: int = 1000, seed: int = 0, order: int = 1) -> float:
    """Permutation p-value of "x and y are interchangeable" for (n,) or (n, d) scores: the statistic is the sum
    over the d metrics of the squared distance between the two quantile curves (squared W2 at order 1); paired,
    each prompt's rows are swapped at random, unpaired, all rows dealt out again. Exact at any n; the part of a
    verdict that holds where a ratio's own test cannot (identical distributions, a discrete ratio on its jump).
    ``p = (1 + #{dist* >= dist}) / (n_boot + 1)``."""
    xa, ya = _numeric(x, "x"), _numeric(y, "y")
    xa, ya = (xa[:, None], ya[:, None]) if xa.ndim == 1 else (xa, ya)
    if xa.shape[1] != ya.shape[1] or (paired and xa.shape[0] != ya.shape[0]):
        raise ScoreError(f"interchangeable_p: shapes {xa.shape} and {ya.shape} do not match")
    grid = quantile_grid(xa.shape[0], ya.shape[0])

    def dist(a, b):            # (..., n, d), (..., m, d) -> (...,)
        return sum(sq_distance_sorted(np.sort(a[..., k], -1), np.sort(b[..., k], -1), order=order, grid=grid)
                   for k in range(a.shape[-1]))

    observed = float(dist(xa, ya))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // (xa.size + ya.size)))
    far = 0
    for start in range(0, n_boot, chunk):
        reps = min(chunk, n_boot - start)
        if paired:
            swap = rng.random((reps, xa.shape[0], 1)) < 0.5
            px, py = np.where(swap, ya, xa), np.where(swap, xa, ya)
        else:
            rows = np.concatenate([xa, ya])
            order_ = rng.permuted(np.broadcast_to(np.arange(rows.shape[0]), (reps, rows.shape[0])), axis=1)
            px, py = rows[order_[:, :xa.shape[0]]], rows[order_[:, xa.shape[0]:]]
        far += int(np.count_nonzero(dist(px, py) >= observed * (1 - 1e-9)))
    return (1 + far) / (n_boot + 1)


# ---- the relative test: every pair from its own ratio ----

def _pair_matrix(sorted_samples: list[np.ndarray], order: int, grids: dict) -> np.ndarray:
    """eps(i, j) for all ordered pairs: (..., k, k); the diagonal is 0.5 (unused)."""
    k = len(sorted_samples)
    batch = sorted_samples[0].shape[:-1]
    out = np.full(batch + (k, k), 0.5)
    for i in range(k):
        for j in range(i + 1, k):
            r = ratios_sorted(sorted_samples[i], sorted_samples[j], order=order, grid=grids[i, j])
            out[..., i, j], out[..., j, i] = r, 1.0 - r
    return out


def one_versus_all(pair: np.ndarray) -> np.ndarray:
    """eps_i = mean over j != i of eps(i, j): how much model i fails to dominate the others (a summary: it
    depends on which other models are in the set, so no verdict is read from it)."""
    k = pair.shape[-1]
    return (pair.sum(-1) - 0.5) / (k - 1)


def adjust_p(p: np.ndarray, method: str = "holm") -> np.ndarray:
    """Family-wise error correction of a flat array of p-values: holm | bonferroni | none."""
    p = np.asarray(p, dtype=float)
    m = p.size
    if method == "none" or m <= 1:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    if method == "holm":
        order = np.argsort(p)
        stepped = np.maximum.accumulate(np.minimum(p[order] * (m - np.arange(m)), 1.0))
        out = np.empty(m)
        out[order] = stepped
        return out
    raise ValueError(f"correction must be holm, bonferroni or none, got {method!r}")


def min_resamples(k: int, alpha: float) -> int:
    """Resamples a k-model comparison needs: a pair's p-value is at least 2 / (B + 1) (two-sided bootstrap
    count), and Holm's first step compares it with alpha / m, m = k(k - 1)/2 pairs; so B + 1 >= 2m / alpha is
    the bare minimum (a pair passes only when every resample agrees). Twice that leaves room."""
    m = k * (k - 1) // 2
    return math.ceil(4 * m / check_alpha(alpha))


def consistent_ranking(names: list[str], better: np.ndarray, score: np.ndarray) -> tuple[list[str], bool]:
    """An order of the models in which every significant "i better than j" puts i before j (a topological
    order of the verdicts), ties broken by ``score`` (lower first: the one-versus-all ratio). The second value
    is True when the verdicts form a cycle (the ratio is not transitive), broken there by the score."""
    remaining, order, cyclic = list(range(len(names))), [], False
    while remaining:
        free = [i for i in remaining if not any(better[j, i] for j in remaining if j != i)]
        if not free:
            free, cyclic = remaining, True
        pick = min(free, key=lambda i: (score[i], i))
        order.append(pick)
        remaining.remove(pick)
    return [names[i] for i in order], cyclic


@dataclass
class RelativeTest:
    """Result of ``relative_test``: a directional verdict for every pair, from the pair alone.

    ``better[i, j]``: i significantly better than j (after the correction). ``p_value``: the pair's corrected
    p-value (symmetric); ``p_parts``: its parts before correction ("interchangeable", "ratio", and "seeds" where
    a model has several runs; nan where a part does not apply). The one-versus-all ``eps`` is a summary."""
    names: list[str]
    runs: list[int]          # runs (training seeds) per model
    eps: np.ndarray          # (k,) one-versus-all ratios: a SUMMARY, it depends on the other models in the set
    eps_se: np.ndarray       # (k,) their bootstrap sd over prompts
    pair_eps: np.ndarray     # (k, k) eps(i, j): the pair's own ratio, what the verdicts test
    pair_ci: np.ndarray      # (k, k, 2) (1 - alpha) percentile interval of eps(i, j) over prompts
    p_parts: dict            # part name -> (k, k) uncorrected p-values
    p_raw: np.ndarray        # (k, k) the pair's p-value before correction: max of its parts, 1 if they disagree
    p_value: np.ndarray      # (k, k) corrected
    better: np.ndarray       # (k, k) bool
    alpha: float
    threshold: float
    correction: str
    paired: bool
    n_boot: int
    ranking: list[str] = field(default_factory=list)
    cyclic: bool = False     # the verdicts form a cycle; the ranking breaks it by eps
    delta: np.ndarray | None = None      # (k, k) eps_i - eps_j (summary)
    delta_se: np.ndarray | None = None   # its bootstrap sd

    @property
    def variance(self) -> str:
        """Which variance the verdicts include: prompts only, or prompts and training seeds."""
        return "prompts + seeds" if max(self.runs) > 1 else "prompts"

    def beats(self, a: str, b: str) -> bool:
        """a significantly better than b at level alpha (after the correction)."""
        return bool(self.better[self.names.index(a), self.names.index(b)])

    def verdicts(self) -> list[tuple[str, str, str, float]]:
        """(a, relation, b, corrected p) for every pair, a listed before b in the ranking;
        relation is ">" (a significantly better), "<" or "~" (no significant difference)."""
        out = []
        for x, a in enumerate(self.ranking):
            for b in self.ranking[x + 1:]:
                i, j = self.names.index(a), self.names.index(b)
                rel = ">" if self.better[i, j] else ("<" if self.better[j, i] else "~")
                out.append((a, rel, b, float(self.p_value[i, j])))
        return out


def _resample_runs(runs: list[np.ndarray], rng: np.random.Generator, reps: int, paired: bool) -> list[np.ndarray]:
    """One chunk of the bootstrap over prompts: each model's runs resampled on the same prompt indices (all
    models too when paired), pooled and sorted: list of (reps, runs_i * prompts_i)."""
    if paired:
        idx = rng.integers(0, runs[0].shape[1], size=(reps, runs[0].shape[1]))
        picks = [idx] * len(runs)
    else:
        picks = [rng.integers(0, r.shape[1], size=(reps, r.shape[1])) for r in runs]
    return [np.sort(r[:, i].transpose(1, 0, 2).reshape(reps, -1), axis=-1) for r, i in zip(runs, picks)]


def _permute_pair(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, reps: int, paired: bool):
    """Draws of (a, b) under "interchangeable": paired, the runs' answers to each prompt are dealt out again
    between the two models (one run each: the two answers swapped at random); unpaired, all pooled scores are."""
    if paired:
        both = np.concatenate([a, b])                                 # (runs_a + runs_b, prompts)
        dealt = rng.permuted(np.broadcast_to(both, (reps,) + both.shape), axis=1)
        return dealt[:, :a.shape[0]].reshape(reps, -1), dealt[:, a.shape[0]:].reshape(reps, -1)
    pooled = np.concatenate([a.ravel(), b.ravel()])
    dealt = rng.permuted(np.broadcast_to(pooled, (reps, pooled.size)), axis=1)
    return dealt[:, :a.size], dealt[:, a.size:]


def relative_test(scores, *, order: int = 1, alpha: float = 0.05, threshold: float = 0.5, n_boot: int = 1000,
                  paired: bool = False, correction: str = "holm", seed: int = 0, min_samples: int = 10,
                  chunk: int | None = None, progress: bool = False) -> RelativeTest:
    """Which of k models is better than which, every pair tested on its own (docs/DOMINANCE.md).

    ``scores``: name -> scores (prompts,), or (runs, prompts) for a model trained with several seeds whose runs
    answered the same prompts (a list instead of a dict names them "0", "1", ...). ``paired=True`` when every
    model answered the same prompts in the same order: the bootstrap then resamples prompts jointly.

    The verdict "i better than j" needs, at level alpha before the correction, each of:

    - ratio: eps(i, j), the pair's own violation ratio on the pooled runs, significantly below ``threshold``
      (default 1/2): a two-sided bootstrap test over prompts, ``p = 2 min(p_i, p_j)`` with
      ``p_i = (1 + #{eps*(i, j) >= threshold}) / (B + 1)`` and ``p_j`` the same of eps(j, i) = 1 - eps(i, j);
      the smaller side gives the direction;
    - interchangeable: a permutation test of "i and j are interchangeable" on the squared distance between
      their quantile curves (answers to each prompt dealt out again between them when paired). Between
      identical distributions eps(i, j) is 0/0 in the limit, spread over [0, 1] at every n, and its bootstrap
      is not calibrated (28% rejections in docs/DOMINANCE.md); this part is exact there;
    - seeds (where a model has several runs): ``mean_difference_test`` in the same direction, the seed
      variance of the run means against its few degrees of freedom.

    The pair's p-value is the largest of its parts (an intersection-union test: each part is a level-alpha
    test of one way the claim can be false, so needing all of them keeps the level), 1 when the parts disagree
    on the direction. The other models play no part in a pair's test. ``correction`` over the k(k-1)/2 pairs:
    Holm (default; the family-wise error of Bonferroni, never less powerful), "bonferroni" or "none". Keep
    ``n_boot >= min_resamples(k, alpha)``. The ranking puts every winner before its loser
    (``consistent_ranking``), ties by the one-versus-all ratio ``eps_i = mean_{j != i} eps(i, j)``, which is
    reported as a summary with ``delta_ij = eps_i - eps_j`` and their bootstrap sds.
    """
    alpha = check_alpha(alpha)
    if not 0.0 < threshold <= 0.5:
        raise ValueError(f"threshold must be in (0, 0.5], got {threshold!r}")
    names, runs = _named(scores, _as_runs)
    k = len(runs)
    if k < 2:
        raise ScoreError(f"the relative test needs at least two models, got {names}")
    _min_size([r[0] for r in runs], names, min_samples)
    if paired:
        _check_paired([r[0] for r in runs], names)
    pooled = [r.ravel() for r in runs]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    family = 1 if correction == "none" else len(pairs)
    if 2 * family / (n_boot + 1) > alpha:       # the smallest p-value, 2 / (B + 1), could never pass
        raise ValueError(f"n_boot={n_boot} is too small for any verdict at alpha {alpha} over {family} pair(s) "
                         f"({correction}): use at least {math.ceil(2 * family / alpha) - 1}, better "
                         f"min_resamples(k, alpha) = {min_resamples(k, alpha)}")
    grids = {(i, j): quantile_grid(pooled[i].size, pooled[j].size) for i, j in pairs}
    S0 = [np.sort(s) for s in pooled]
    pair = _pair_matrix(S0, order, grids)
    eps = one_versus_all(pair)
    # replicates per vectorised step: about 2M scores per array keeps memory small
    chunk = chunk or max(1, min(n_boot, 2_000_000 // max(s.size for s in pooled)))
    rng = np.random.default_rng(seed)
    boot_eps, boot_pair, null = [], {p: [] for p in pairs}, {p: [] for p in pairs}
    bar = _progress(n_boot, "bootstrap", progress)
    for start in range(0, n_boot, chunk):
        reps = min(chunk, n_boot - start)
        M = _pair_matrix(_resample_runs(runs, rng, reps, paired), order, grids)      # (reps, k, k)
        boot_eps.append(one_versus_all(M))
        for i, j in pairs:
            boot_pair[i, j].append(M[:, i, j])
            ri, rj = _permute_pair(runs[i], runs[j], rng, reps, paired)
            null[i, j].append(sq_distance_sorted(np.sort(ri, axis=-1), np.sort(rj, axis=-1), order=order,
                                                 grid=grids[i, j]))
        if bar is not None:
            bar.update(reps)
    if bar is not None:
        bar.close()
    parts = {name: np.full((k, k), np.nan) for name in ("ratio", "interchangeable", "seeds")}
    p_raw, pair_ci, direction = np.ones((k, k)), np.full((k, k, 2), 0.5), np.zeros((k, k), dtype=int)
    for i, j in pairs:
        b = np.concatenate(boot_pair[i, j])
        p_i, p_j = bootstrap_p(b, threshold), bootstrap_p(1.0 - b, threshold)
        d = (p_i < p_j) - (p_j < p_i)                            # +1: i better, -1: j better, 0: no side
        dist = float(sq_distance_sorted(S0[i], S0[j], order=order, grid=grids[i, j]))
        far = np.count_nonzero(np.concatenate(null[i, j]) >= dist * (1 - 1e-9))
        got = {"ratio": min(1.0, 2 * min(p_i, p_j)), "interchangeable": (1 + far) / (n_boot + 1)}
        if runs[i].shape[0] + runs[j].shape[0] > 2:
            md = mean_difference_test(runs[i], runs[j], paired=paired)
            got["seeds"] = md.p_value
            d = d if np.sign(md.diff) == d else 0
        for name, value in got.items():
            parts[name][i, j] = parts[name][j, i] = value
        p_raw[i, j] = p_raw[j, i] = max(got.values()) if d else 1.0
        direction[i, j], direction[j, i] = d, -d
        pair_ci[i, j] = np.quantile(b, [alpha / 2, 1 - alpha / 2])
        pair_ci[j, i] = 1.0 - pair_ci[i, j][::-1]
    adj = adjust_p(np.array([p_raw[i, j] for i, j in pairs]), correction)
    p = np.ones((k, k))
    for (i, j), q in zip(pairs, adj):
        p[i, j] = p[j, i] = q
    better = (p <= alpha) & (direction > 0)
    ranking, cyclic = consistent_ranking(names, better, eps)
    b = np.concatenate(boot_eps)                                   # (n_boot, k)
    return RelativeTest(names, [r.shape[0] for r in runs], eps, b.std(0), pair, pair_ci, parts, p_raw, p, better,
                        alpha, threshold, correction, paired, n_boot, ranking, cyclic,
                        eps[:, None] - eps[None, :], (b[:, :, None] - b[:, None, :]).std(0))


# --------------------------------------------------------------------------------------
# Metric portfolios
# --------------------------------------------------------------------------------------

def portfolio(metrics: dict[str, list], weights: dict[str, float] | None = None) -> list[np.ndarray]:
    """Several metrics -> one score per sample (Nitsure et al. 2024, sec. 5).

    ``metrics``: metric name -> list over models of 1-D arrays (higher is better; negate a
    metric where lower is better). Each metric is normalised by the empirical CDF of the
    scores of ALL models pooled (a common scale: the paper leaves open which CDF; pooling
    makes the normalisation the same for every model, so it cannot favour one), then
    the weighted geometric mean ``prod_m F_m(s_m)^{w_m}`` (weights sum to 1; equal by
    default) is the portfolio. The pooled CDF is >= 1/N, so the logarithm is finite.
    """
    if not metrics:
        raise ValueError("portfolio: no metrics")
    names = list(metrics)
    w = np.array([1.0 if weights is None else float(weights[n]) for n in names])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"portfolio weights must be >= 0 and not all 0: {dict(zip(names, w))}")
    w = w / w.sum()
    k = len(metrics[names[0]])
    for n in names:
        if len(metrics[n]) != k:
            raise ValueError(f"portfolio: metric {n!r} has {len(metrics[n])} models, expected {k}")
    logs = [np.zeros(_as_scores(metrics[names[0]][i]).size) for i in range(k)]
    for n, wn in zip(names, w):
        per_model = [_as_scores(a, f"{n}[{i}]") for i, a in enumerate(metrics[n])]
        for i, a in enumerate(per_model):
            if a.size != logs[i].size:
                raise ValueError(f"portfolio: metric {n!r} has {a.size} samples for model {i}, "
                                 f"expected {logs[i].size}")
        pooled = np.sort(np.concatenate(per_model))
        for i, a in enumerate(per_model):
            cdf = np.searchsorted(pooled, a, side="right") / pooled.size
            logs[i] += wn * np.log(cdf)
    return [np.exp(lg) for lg in logs]


# --------------------------------------------------------------------------------------
# Multivariate dominance through entropic OT (Rioux et al. 2024)
# --------------------------------------------------------------------------------------

# The default entropic regularisation, relative to the pair's scale (mean over all (x_i, y_j) of the cost of the
# violations both ways: for the squared hinge, the mean squared distance). Measured in docs/DOMINANCE.md: with
# the debiased estimator, d = 1 within 0.005 of the exact 1-D ratio on continuous, bounded and discrete scores.
REL_REG = 0.01
COSTS = ("squared_hinge", "hinge", "logistic")
ESTIMATORS = ("debiased", "entropic")


def violation_cost(x: torch.Tensor, y: torch.Tensor, cost: str = "squared_hinge", beta: float = 10.0) -> torch.Tensor:
    """C[..., i, j] = sum_d h(y_jd - x_id): the cost of x_i failing to dominate y_j.

    squared_hinge: h(t) = t_+^2 (the 1-D violation ratio's own); hinge: t_+; logistic: softplus(beta t) / beta,
    the smooth hinge of Rioux et al., which tends to the hinge as beta grows. A coupling of zero cost puts every
    x above its y.
    """
    gap = y.unsqueeze(-3) - x.unsqueeze(-2)            # (..., n, m, d)
    if cost == "hinge":
        h = gap.clamp_min(0)
    elif cost == "squared_hinge":
        h = gap.clamp_min(0) ** 2
    elif cost == "logistic":
        h = torch.nn.functional.softplus(beta * gap) / beta
    else:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    return h.sum(-1)


def sinkhorn_log(C: torch.Tensor, reg: float, *, max_iter: int = 5000, tol: float = 1e-3, f0=None, g0=None):
    """Entropic OT between uniform weights, log domain, batched over leading dims of C (..., n, m).

    Solves min_P <P, C> + reg * KL(P | a b^T). Returns (value, f, g) with value = <a, f> + <b, g>
    (the dual optimum equals the primal optimum) and f, g the dual potentials, whose
    variances give the CLT variance of the value (Mena & Niles-Weed 2019; del Barrio et al. 2022).
    """
    n, m = C.shape[-2], C.shape[-1]
    loga, logb = -math.log(n), -math.log(m)
    K = C / -reg                                   # once, not per iteration; u = f / reg, v = g / reg
    u = torch.zeros(C.shape[:-1], dtype=C.dtype) if f0 is None else f0 / reg
    v = torch.zeros(C.shape[:-2] + (m,), dtype=C.dtype) if g0 is None else g0 / reg
    for it in range(max_iter):
        u = -torch.logsumexp(K + (v + logb).unsqueeze(-2), dim=-1)
        v = -torch.logsumexp(K + (u + loga).unsqueeze(-1), dim=-2)
        if it % 10 == 9:
            # after the v update the columns are exact; check the rows
            rows = torch.exp(K + (u + loga).unsqueeze(-1) + (v + logb).unsqueeze(-2)).sum(-1)
            if float((rows * n - 1).abs().max()) < tol:
                break
    f, g = reg * u, reg * v
    return f.mean(-1) + g.mean(-1), f, g


def plan_cost(C: torch.Tensor, f: torch.Tensor, g: torch.Tensor, reg: float) -> torch.Tensor:
    """<P, C> for the entropic plan P_ij = exp((f_i + g_j - C_ij) / reg) / (n m) of ``sinkhorn_log``'s potentials:
    the transport cost alone, without the entropy term of the Sinkhorn value (the "sharp" Sinkhorn cost)."""
    n, m = C.shape[-2], C.shape[-1]
    P = torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - C) / reg - math.log(n * m))
    return (P * C).sum((-2, -1))


def _solve(C: torch.Tensor, reg: float, estimator: str, max_iter: int, tol: float):
    """(value, f, g) of one transport problem at cost C.

    ``entropic``: the Sinkhorn value <a, f> + <b, g> (transport cost + reg * KL) and its potentials: shrunk
    toward a common value for both directions, so the ratio is pulled toward 1/2 (0.28 where the exact ratio is
    0.02 at the former defaults, docs/DOMINANCE.md). ``debiased``: the transport cost of the entropic plan, whose
    bias is about linear in reg, at reg and 2 reg, extrapolated to reg -> 0 (Richardson: 2 T(reg) - T(2 reg));
    its influence function is taken as the same combination of the potentials (exact as reg -> 0; the coverage
    of the interval is checked by simulation in docs/DOMINANCE.md).
    """
    if estimator == "entropic":
        return sinkhorn_log(C, reg, max_iter=max_iter, tol=tol)
    _, f2, g2 = sinkhorn_log(C, 2 * reg, max_iter=max_iter, tol=tol)
    _, f1, g1 = sinkhorn_log(C, reg, max_iter=max_iter, tol=tol, f0=f2, g0=g2)   # warm start from 2 reg
    value = 2 * plan_cost(C, f1, g1, reg) - plan_cost(C, f2, g2, 2 * reg)
    return value.clamp_min(0.0), 2 * f1 - f2, 2 * g1 - g2


def _both_directions(X: torch.Tensor, Y: torch.Tensor, cost: str, beta: float, reg: float, max_iter: int, tol: float,
                     estimator: str = "entropic"):
    """OT(x, y) and OT(y, x) with their potentials, batched over leading dims.

    For the hinge and the logistic cost h(t) - h(-t) = t, so the reverse cost is the forward one
    plus a separable term: C_yx[j, i] = C_xy[i, j] + s(x_i) - s(y_j), s = sum over metrics. A
    separable term leaves the (entropic) plan as it is and shifts the value and the transport cost by its
    means and the potentials by itself, so one solve gives both directions (half the work). The squared hinge
    needs two. Returns (A, fA on x, gA on y, B, fB on y, gB on x).
    """
    A, fA, gA = _solve(violation_cost(X, Y, cost, beta), reg, estimator, max_iter, tol)
    if cost in ("hinge", "logistic"):
        sx, sy = X.sum(-1), Y.sum(-1)
        return A, fA, gA, A + sx.mean(-1) - sy.mean(-1), gA - sy, fA + sx
    B, fB, gB = _solve(violation_cost(Y, X, cost, beta), reg, estimator, max_iter, tol)
    return A, fA, gA, B, fB, gB


def _resolve_reg(X: torch.Tensor, Y: torch.Tensor, cost: str, beta: float, reg: float | None) -> float:
    """``reg`` as given (absolute), or the default: REL_REG x the pair's scale, the mean over all (x_i, y_j) of
    the cost of the violations both ways (the mean squared distance for the squared hinge). Relative, so the
    same default suits scores in [0, 1] and in [0, 100]."""
    if reg is not None:
        if reg < 0:
            raise ValueError(f"reg must be >= 0 (0: exact OT), got {reg!r}")
        return float(reg)
    scale = float((violation_cost(X, Y, cost, beta) + violation_cost(Y, X, cost, beta).transpose(-1, -2)).mean())
    return REL_REG * scale if scale > 0 else 1.0      # scale 0: every score equal, every cost 0, ratio 1/2


def ratio_interval(r: float, se: float, alpha: float, form: str = "logit") -> tuple[float, float]:
    """(1 - alpha) CLT interval of a ratio in [0, 1] from its delta-method se. ``logit`` (default): built on the
    logit scale (se / (r (1 - r)) there) and mapped back, so it stays in [0, 1] and follows the ratio's skew near
    0 and 1 (docs/DOMINANCE.md: it covers where the symmetric one did not); at r = 0 or 1, or se = 0, the
    symmetric interval. ``normal``: r +- z se, the former form."""
    if form not in ("logit", "normal"):
        raise ValueError(f"interval must be logit or normal, got {form!r}")
    z = _N.inv_cdf(1 - alpha / 2)
    if form == "normal":
        return r - z * se, r + z * se
    if se <= 0 or not 0 < r < 1:
        return max(0.0, r - z * se), min(1.0, r + z * se)
    centre, half = math.log(r / (1 - r)), z * se / (r * (1 - r))
    return 1 / (1 + math.exp(half - centre)), 1 / (1 + math.exp(-half - centre))


def ratio_half_p(r: float, se: float, form: str = "logit") -> float:
    """Two-sided p-value of ``r = 1/2`` on the scale of ``ratio_interval`` of the same form (p <= alpha exactly
    when that interval excludes 1/2)."""
    if form == "normal" or se <= 0 or not 0 < r < 1:
        return float(r == 0.5) if se <= 0 else math.erfc(abs(r - 0.5) / se / math.sqrt(2))
    return math.erfc(abs(math.log(r / (1 - r))) * r * (1 - r) / se / math.sqrt(2))


def _check_mv(cost: str, estimator: str) -> None:
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")


@dataclass
class MultivariateRatio:
    ratio: float            # OT(x, y) / (OT(x, y) + OT(y, x)); 0 = x dominates y
    se: float               # CLT standard deviation from the dual potentials (nan when reg = 0)
    ci: tuple[float, float]
    ot_xy: float
    ot_yx: float
    reg: float = math.nan   # the (absolute) entropic regularisation used


def _exact_ot(C: np.ndarray) -> float:
    import ot  # POT, the exact LP for reg = 0 (optional dependency, in the test extra)
    n, m = C.shape
    return float(ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), C))


def _influence_ratio(A, B, fA, gA, fB, gB):
    """Influence of r = A / (A + B) on the x samples and on the y samples.

    A = OT(x, y) has potentials fA on x, gA on y; B = OT(y, x) has fB on y, gB on x.
    """
    s2 = (A + B) ** 2
    return (B * fA - A * gB) / s2, (B * gA - A * fB) / s2


def _variance(parts: list[torch.Tensor], paired: bool) -> float:
    if paired:
        return float(torch.stack(parts).sum(0).var(unbiased=True) / parts[0].numel())
    return float(sum(p.var(unbiased=True) / p.numel() for p in parts))


def _tensor(a, name) -> torch.Tensor:
    t = torch.as_tensor(_numeric(a, name))
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ScoreError(f"{name}: expected (n, d) scores, got shape {tuple(t.shape)}")
    return t


def multivariate_violation_ratio(x, y, *, cost: str = "squared_hinge", beta: float = 10.0, reg: float | None = None,
                                 estimator: str = "debiased", alpha: float = 0.05, paired: bool = False,
                                 max_iter: int = 5000, tol: float = 1e-3,
                                 interval: str = "logit") -> MultivariateRatio:
    """Multivariate violation ratio of x (n, d) over y (m, d) through (entropic) OT.

    ``OT(x, y)`` transports x onto y at ``violation_cost``; the ratio ``OT(x, y) / (OT(x, y) + OT(y, x))`` is 0
    when x dominates y (every metric at once), and swapping gives 1 - ratio. Defaults: the squared hinge (the
    1-D ratio's own cost: with d = 1 and exact OT, ``reg=0`` through POT, it is ``violation_ratio``) and the
    ``debiased`` estimator at ``reg = REL_REG x`` the pair's scale (``_resolve_reg``), which reads as that ratio:
    within 0.005 of it at d = 1 on the score families of docs/DOMINANCE.md. ``estimator="entropic"`` gives the
    Sinkhorn value instead (shrunk toward 1/2); ``cost="logistic"`` (Rioux et al.'s smooth hinge, with
    ``beta``) and ``"hinge"`` are available. A float ``reg`` is absolute. ``reg > 0`` gives a (1 - alpha)
    confidence interval from the dual potentials (delta method on the two OT values; ``ratio_interval`` of
    form ``interval``).
    """
    alpha = check_alpha(alpha)
    _check_mv(cost, estimator)
    xt, yt = _tensor(x, "x"), _tensor(y, "y")
    if xt.shape[1] != yt.shape[1]:
        raise ScoreError(f"x has {xt.shape[1]} metrics and y {yt.shape[1]}")
    if paired and xt.shape[0] != yt.shape[0]:
        raise ScoreError(f"paired ratio needs the same prompts: {xt.shape[0]} vs {yt.shape[0]} rows")
    reg = _resolve_reg(xt, yt, cost, beta, reg)
    if reg == 0:
        A = _exact_ot(violation_cost(xt, yt, cost, beta).numpy())
        B = _exact_ot(violation_cost(yt, xt, cost, beta).numpy())
        r = A / (A + B) if A + B > 0 else 0.5
        return MultivariateRatio(r, float("nan"), (float("nan"), float("nan")), A, B, 0.0)
    A, fA, gA, B, fB, gB = _both_directions(xt, yt, cost, beta, reg, max_iter, tol, estimator)
    A, B = float(A), float(B)
    if A + B <= 0:                                    # every score equal: identical samples
        return MultivariateRatio(0.5, 0.0, (0.5, 0.5), A, B, reg)
    r = A / (A + B)
    ix, iy = _influence_ratio(A, B, fA, gA, fB, gB)
    se = math.sqrt(_variance([ix, iy], paired))
    return MultivariateRatio(r, se, ratio_interval(r, se, alpha, interval), A, B, reg)


def multivariate_bootstrap_se(x, y, *, cost: str = "squared_hinge", beta: float = 10.0, reg: float | None = None,
                              estimator: str = "debiased", n_boot: int = 200, paired: bool = False, seed: int = 0,
                              chunk: int = 50, tol: float = 1e-3) -> float:
    """Bootstrap standard deviation of the multivariate ratio (batched Sinkhorn at the regularisation of the
    full samples; a reference for the CLT variance of ``multivariate_violation_ratio``, too slow for large n)."""
    _check_mv(cost, estimator)
    xt, yt = _tensor(x, "x"), _tensor(y, "y")
    reg = _resolve_reg(xt, yt, cost, beta, reg)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n_boot, chunk):
        reps = min(chunk, n_boot - start)
        ix = torch.randint(0, xt.shape[0], (reps, xt.shape[0]), generator=gen)
        iy = ix if paired else torch.randint(0, yt.shape[0], (reps, yt.shape[0]), generator=gen)
        A, *_, B, _, _ = _both_directions(xt[ix], yt[iy], cost, beta, reg, 5000, tol, estimator)
        out.append(A / (A + B))
    return float(torch.cat(out).std())


@dataclass
class MultivariateRelative:
    names: list[str]
    eps: np.ndarray        # (k,) one-versus-all multivariate ratios; lower is better
    se: np.ndarray         # (k,) CLT standard deviations
    ci: np.ndarray         # (k, 2)
    pair: np.ndarray       # (k, k) ratio(i, j)
    ranking: list[str]
    pair_se: np.ndarray    # (k, k) CLT standard deviation of ratio(i, j) (that of multivariate_violation_ratio)
    pair_reg: np.ndarray | None = None   # (k, k) the regularisation each pair was solved at


def multivariate_relative(samples, *, cost: str = "squared_hinge", beta: float = 10.0, reg: float | None = None,
                          estimator: str = "debiased", alpha: float = 0.05, paired: bool = False,
                          max_iter: int = 5000, tol: float = 1e-3, interval: str = "logit") -> MultivariateRelative:
    """One-versus-all multivariate ratios of k models, (n_i, d) each, with CLT intervals; every pair's ratio is
    ``multivariate_violation_ratio`` with the same settings (one solve per pair and direction, both directions
    from one solve for the hinge and logistic costs, see ``_both_directions``).
    """
    alpha = check_alpha(alpha)
    _check_mv(cost, estimator)
    names, ts = _named(samples, _tensor)
    k = len(ts)
    if k < 2:
        raise ScoreError(f"need at least two models, got {names}")
    if paired and len({t.shape[0] for t in ts}) > 1:
        raise ScoreError(f"paired ratios need the same prompts: sizes {[t.shape[0] for t in ts]}")
    sol, pair_reg = {}, np.zeros((k, k))
    # one 2-D solve per pair: measured 4x faster per problem than one batched (pairs, n, m) solve
    # on CPU (the reduction over the middle axis is strided), and each pair stops when it converges
    for i in range(k):
        for j in range(i + 1, k):
            pair_reg[i, j] = pair_reg[j, i] = r = _resolve_reg(ts[i], ts[j], cost, beta, reg)
            A, fA, gA, B, fB, gB = _both_directions(ts[i], ts[j], cost, beta, r, max_iter, tol, estimator)
            sol[i, j], sol[j, i] = (float(A), fA, gA), (float(B), fB, gB)
    pair, pair_se = np.full((k, k), 0.5), np.zeros((k, k))
    infl = [[torch.zeros(t.shape[0], dtype=torch.float64) for t in ts] for _ in range(k)]
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            (A, fA, gA), (B, fB, gB) = sol[i, j], sol[j, i]
            if A + B <= 0:                            # identical constant samples: ratio 1/2, no spread
                continue
            pair[i, j] = A / (A + B)
            ix, iy = _influence_ratio(A, B, fA, gA, fB, gB)
            pair_se[i, j] = math.sqrt(_variance([ix, iy], paired))
            infl[i][i] += ix / (k - 1)
            infl[i][j] += iy / (k - 1)
    eps = one_versus_all(pair)
    se = np.array([math.sqrt(_variance(infl[i], paired)) for i in range(k)])
    ci = np.array([ratio_interval(float(e), float(v), alpha, interval) for e, v in zip(eps, se)])
    return MultivariateRelative(names, eps, se, ci, pair, [names[i] for i in np.argsort(eps, kind="stable")],
                                pair_se, pair_reg)
