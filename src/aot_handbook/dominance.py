"""Stochastic dominance between score distributions, with confidence (docs/DOMINANCE.md).

Which model is better, and how sure are we? Pure functions on numpy arrays / torch
tensors (no trainer, no model); higher scores are better throughout.

- ``violation_ratio(x, y, order=1|2)``: the share of the squared distance between two
  quantile curves where ``x`` fails to dominate ``y`` (Del Barrio et al. 2018, eps_W2;
  Nitsure et al. 2024 for the second order), exact for step quantile functions.
- ``almost_dominance_test``: the absolute test of almost dominance, eps_min at level alpha.
- ``relative_test``: k models, one-versus-all ratios, pairwise differences with a
  bootstrap variance, a multiple-testing correction, a ranking with p-values.
- ``portfolio``: several metrics turned into one score (weighted geometric mean of CDFs).
- ``multivariate_violation_ratio`` / ``multivariate_relative``: the ratio of Rioux et al.
  (2024) through entropic optimal transport with a hinge / squared hinge / logistic cost,
  with a CLT confidence interval from the dual potentials.

Choices the papers leave open are parameters; their defaults are argued in docs/DOMINANCE.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

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


def _as_scores(a, name: str = "scores") -> np.ndarray:
    x = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name}: no scores")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: {int((~np.isfinite(x)).sum())} NaN or infinite scores")
    return x


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
    k = np.union1d(np.arange(1, n + 1, dtype=np.int64) * (lcm // n),
                   np.arange(1, m + 1, dtype=np.int64) * (lcm // m))
    dt = np.diff(k, prepend=0) / lcm
    ix = (k * n + lcm - 1) // lcm - 1
    iy = (k * m + lcm - 1) // lcm - 1
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
        raise ValueError(f"a paired test needs the same prompts for every model; sizes differ: {sizes}")


def _min_size(samples: list[np.ndarray], names: list[str], min_samples: int) -> None:
    for nm, s in zip(names, samples):
        if s.size < min_samples:
            raise ValueError(f"{nm}: {s.size} scores, fewer than the {min_samples} this test needs "
                             "(its bootstrap variance would be meaningless)")


@dataclass
class AbsoluteTest:
    """Almost dominance of x over y: H0 eps(x, y) >= threshold, rejected when eps_min < threshold."""
    eps: float
    se: float
    eps_min: float
    threshold: float
    alpha: float
    p_value: float
    interval: str

    @property
    def reject(self) -> bool:
        return self.eps_min < self.threshold


def almost_dominance_test(x, y, *, threshold: float = 0.5, alpha: float = 0.05, order: int = 1,
                          n_boot: int = 1000, paired: bool = False, seed: int = 0, interval: str = "percentile",
                          min_samples: int = 10, chunk: int | None = None, progress: bool = False) -> AbsoluteTest:
    """The absolute test of almost dominance (Del Barrio et al. 2018; Nitsure et al. 2024).

    ``eps_min`` is the upper end of a one-sided (1 - alpha) bootstrap confidence interval for
    the true ratio; if it is below ``threshold``, x almost dominates y at level alpha.
    ``interval="normal"``: ``eps + z_{1-alpha} * se`` (se the bootstrap sd), the papers'
    CLT form and the quantity ``deepsig.aso`` returns (with ``confidence_level = 1 - alpha``);
    ``interval="percentile"`` (default): the (1 - alpha) quantile of the bootstrap ratios.
    The ratio's sampling law is skewed and its se grows with it, so the normal form rejects
    too often on the boundary of the null (8-10% at alpha = 5% in docs/DOMINANCE.md); the
    percentile form stays near alpha.
    The p-value is the normal one, ``Phi((eps - threshold) / se)``, for either interval.
    ``threshold=0.5``: x violates dominance of y on less than half the squared distance;
    the papers use it or smaller values (0.2-0.4) for a stricter claim.
    """
    xa, ya = _as_scores(x, "x"), _as_scores(y, "y")
    _min_size([xa, ya], ["x", "y"], min_samples)
    if paired:
        _check_paired([xa, ya], ["x", "y"])
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
    elif interval == "percentile":
        eps_min = float(np.quantile(boots, 1 - alpha))
    else:
        raise ValueError(f"interval must be percentile or normal, got {interval!r}")
    p = float(_phi((eps - threshold) / se)) if se > 0 else float(eps >= threshold)
    return AbsoluteTest(eps, se, float(np.clip(eps_min, 0.0, 1.0)), threshold, alpha, p, interval)


def mean_ci(x, *, alpha: float = 0.05, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap (1 - alpha) interval of the mean over samples
    (prompts). Used by ``make compare`` and the cells of ``make table``."""
    a = _as_scores(x)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // a.size))
    means = np.concatenate([a[rng.integers(0, a.size, size=(min(chunk, n_boot - s), a.size))].mean(-1)
                            for s in range(0, n_boot, chunk)])
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(a.mean()), float(lo), float(hi)


# --------------------------------------------------------------------------------------
# The relative test over k models
# --------------------------------------------------------------------------------------

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
    """eps_i = mean over j != i of eps(i, j): how much model i fails to dominate the others."""
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


@dataclass
class RelativeTest:
    """Result of ``relative_test``. Lower ``eps`` is better (fewer violations against the rest)."""
    names: list[str]
    eps: np.ndarray          # (k,) one-versus-all ratios
    eps_se: np.ndarray       # (k,) their bootstrap standard deviations
    pair_eps: np.ndarray     # (k, k) eps(i, j)
    delta: np.ndarray        # (k, k) eps_i - eps_j
    delta_se: np.ndarray     # (k, k) bootstrap sd of delta (information; the p-values are permutation p-values)
    p_value: np.ndarray      # (k, k) corrected two-sided p-value of "i and j are interchangeable"
    alpha: float
    correction: str
    paired: bool
    n_boot: int
    ranking: list[str] = field(default_factory=list)

    def beats(self, a: str, b: str) -> bool:
        """a significantly better than b at level alpha (after the correction)."""
        i, j = self.names.index(a), self.names.index(b)
        return bool(self.delta[i, j] < 0 and self.p_value[i, j] < self.alpha)

    def verdicts(self) -> list[tuple[str, str, str, float]]:
        """(a, relation, b, corrected p) for every pair, a listed before b in the ranking;
        relation is ">" (a significantly better), "<" or "~" (no significant difference)."""
        out = []
        for x, a in enumerate(self.ranking):
            for b in self.ranking[x + 1:]:
                i, j = self.names.index(a), self.names.index(b)
                rel = ">" if self.beats(a, b) else ("<" if self.beats(b, a) else "~")
                out.append((a, rel, b, float(self.p_value[i, j])))
        return out


def relative_test(scores, *, order: int = 1, alpha: float = 0.05, n_boot: int = 1000, paired: bool = False,
                  correction: str = "holm", seed: int = 0, min_samples: int = 10, chunk: int | None = None,
                  progress: bool = False) -> RelativeTest:
    """Relative almost-dominance test over k models (Nitsure et al. 2024, sec. 4).

    ``scores``: dict name -> 1-D scores (or a list; names are then "0", "1", ...).
    ``paired=True`` when every model answered the same prompts in the same order: the
    bootstrap then resamples prompts jointly, which removes prompt difficulty from the
    variance; otherwise each model is resampled on its own.

    Ranking: by the one-versus-all ratio ``eps_i = mean_{j != i} eps(i, j)`` (lower is
    better), with its bootstrap sd; ``delta_ij = eps_i - eps_j`` with its bootstrap sd.

    Pairwise verdicts. The paper divides delta_ij by its bootstrap sd and reads a normal
    p-value. That fails where it matters most, two models of the same quality: eps(i, j)
    between equal distributions does not converge to 1/2 but stays spread over [0, 1] at every
    n (0/0 in the limit), and the bootstrap around the sample underestimates that spread (23-28%
    rejections at alpha = 5% in docs/DOMINANCE.md). A permutation test of delta itself is
    exact there but has no power on 0/1 scores (accuracy), where every ratio is 0, 1/2 or 1
    whatever the gap in accuracy. So each pair gets a permutation test of "i and j are
    interchangeable" with the squared distance between their (order-1 or order-2) quantile
    curves, the ratio's denominator, as statistic: exact for any n, powerful against any
    difference, also on 0/1 scores. Paired, the two answers of each prompt are swapped at
    random; unpaired, the pooled scores of i and j are dealt out again.
    ``p = (1 + #{dist* >= dist}) / (n_boot + 1)``; a rejected pair's direction is the sign of
    delta_ij ("i beats j": rejected and eps_i < eps_j). n_boot bounds the smallest p-value:
    keep ``n_boot >= 2 * k(k-1)/2 / alpha`` so that the first Holm step can pass (the default
    1000 suffices for k <= 7; ``make compare`` raises it for more models).
    ``correction`` over the k(k-1)/2 pairs: Holm (default) controls the same family-wise
    error as Bonferroni and is never less powerful; a pair of truly equal models is then
    rejected at about alpha once the clearly different pairs are out (Bonferroni:
    alpha / (k(k-1)/2)). "bonferroni" and "none" are available.
    """
    names, samples = _named(scores, _as_scores)
    k = len(samples)
    if k < 2:
        raise ValueError(f"the relative test needs at least two models, got {names}")
    _min_size(samples, names, min_samples)
    if paired:
        _check_paired(samples, names)
    grids = {(i, j): quantile_grid(samples[i].size, samples[j].size) for i in range(k) for j in range(k) if i < j}
    S0 = [np.sort(s) for s in samples]
    pair = _pair_matrix(S0, order, grids)
    eps = one_versus_all(pair)
    delta = eps[:, None] - eps[None, :]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    # replicates per vectorised step: about 2M scores per array keeps memory small
    chunk = chunk or max(1, min(n_boot, 2_000_000 // max(s.size for s in samples)))
    rng = np.random.default_rng(seed)
    boot_eps, null = [], {p: [] for p in pairs}
    bar = _progress(n_boot, "bootstrap", progress)
    for start in range(0, n_boot, chunk):
        reps = min(chunk, n_boot - start)
        if paired:
            idx = rng.integers(0, samples[0].size, size=(reps, samples[0].size))
            R = [s[idx] for s in samples]
        else:
            R = [s[rng.integers(0, s.size, size=(reps, s.size))] for s in samples]
        S = [np.sort(r, axis=-1) for r in R]
        boot_eps.append(one_versus_all(_pair_matrix(S, order, grids)))
        for i, j in pairs:
            # permutation draws of the distance between i and j; the other models play no part
            if paired:
                swap = rng.random((reps, samples[i].size)) < 0.5
                ri, rj = np.where(swap, samples[j], samples[i]), np.where(swap, samples[i], samples[j])
            else:
                perm = rng.permuted(np.tile(np.concatenate([samples[i], samples[j]]), (reps, 1)), axis=1)
                ri, rj = perm[:, :samples[i].size], perm[:, samples[i].size:]
            null[i, j].append(sq_distance_sorted(np.sort(ri, axis=-1), np.sort(rj, axis=-1), order=order,
                                                 grid=grids[i, j]))
        if bar is not None:
            bar.update(reps)
    if bar is not None:
        bar.close()
    b = np.concatenate(boot_eps)                       # (n_boot, k)
    delta_se = (b[:, :, None] - b[:, None, :]).std(0)
    dist = {(i, j): float(sq_distance_sorted(S0[i], S0[j], order=order, grid=grids[i, j])) for i, j in pairs}
    raw = np.array([(1 + np.sum(np.concatenate(null[i, j]) >= dist[i, j] * (1 - 1e-9))) / (n_boot + 1)
                    for i, j in pairs])
    adj = adjust_p(raw, correction)
    p = np.ones((k, k))
    for (i, j), q in zip(pairs, adj):
        p[i, j] = p[j, i] = q
    ranking = [names[i] for i in np.argsort(eps, kind="stable")]
    return RelativeTest(names, eps, b.std(0), pair, delta, delta_se, p, alpha, correction, paired, n_boot, ranking)


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

def violation_cost(x: torch.Tensor, y: torch.Tensor, cost: str = "logistic", beta: float = 10.0) -> torch.Tensor:
    """C[..., i, j] = sum_d h(y_jd - x_id): the cost of x_i failing to dominate y_j.

    hinge: h(t) = t_+; squared_hinge: t_+^2; logistic: softplus(beta t) / beta, a smooth
    hinge that tends to it as beta grows. A coupling of zero cost puts every x above its y.
    """
    gap = y.unsqueeze(-3) - x.unsqueeze(-2)            # (..., n, m, d)
    if cost == "hinge":
        h = gap.clamp_min(0)
    elif cost == "squared_hinge":
        h = gap.clamp_min(0) ** 2
    elif cost == "logistic":
        h = torch.nn.functional.softplus(beta * gap) / beta
    else:
        raise ValueError(f"cost must be hinge, squared_hinge or logistic, got {cost!r}")
    return h.sum(-1)


def sinkhorn_log(C: torch.Tensor, reg: float, *, max_iter: int = 5000, tol: float = 1e-4, f0=None, g0=None):
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


def _both_directions(X: torch.Tensor, Y: torch.Tensor, cost: str, beta: float, reg: float, max_iter: int, tol: float):
    """OT(x, y) and OT(y, x) with their potentials, batched over leading dims.

    For the hinge and the logistic cost h(t) - h(-t) = t, so the reverse cost is the forward one
    plus a separable term: C_yx[j, i] = C_xy[i, j] + s(x_i) - s(y_j), s = sum over metrics. A
    separable term shifts the (entropic) OT value by its means and the potentials by itself,
    so one Sinkhorn solve gives both directions (half the work). The squared hinge needs two.
    Returns (A, fA on x, gA on y, B, fB on y, gB on x).
    """
    A, fA, gA = sinkhorn_log(violation_cost(X, Y, cost, beta), reg, max_iter=max_iter, tol=tol)
    if cost in ("hinge", "logistic"):
        sx, sy = X.sum(-1), Y.sum(-1)
        fB, gB = gA - sy, fA + sx
        return A, fA, gA, fB.mean(-1) + gB.mean(-1), fB, gB
    B, fB, gB = sinkhorn_log(violation_cost(Y, X, cost, beta), reg, max_iter=max_iter, tol=tol)
    return A, fA, gA, B, fB, gB


@dataclass
class MultivariateRatio:
    ratio: float            # OT(x, y) / (OT(x, y) + OT(y, x)); 0 = x dominates y
    se: float               # CLT standard deviation from the dual potentials (nan when reg = 0)
    ci: tuple[float, float]
    ot_xy: float
    ot_yx: float


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
    t = torch.as_tensor(np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64))
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected (n, d) scores, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: NaN or infinite scores")
    return t


def multivariate_violation_ratio(x, y, *, cost: str = "logistic", beta: float = 10.0, reg: float = 0.05,
                                 alpha: float = 0.05, paired: bool = False, max_iter: int = 5000,
                                 tol: float = 1e-4) -> MultivariateRatio:
    """Multivariate violation ratio of x (n, d) over y (m, d) through (entropic) OT.

    ``OT(x, y)`` transports x onto y at ``violation_cost``; the ratio
    ``OT(x, y) / (OT(x, y) + OT(y, x))`` is 0 when x dominates y, and swapping gives 1 - ratio.
    For d = 1 and the squared hinge with ``reg=0`` (exact OT) it is the 1-D violation ratio.
    ``reg > 0`` solves entropic OT (log-domain Sinkhorn) and gives a (1 - alpha) normal
    confidence interval from the dual potentials (delta method on the two OT values).
    """
    xt, yt = _tensor(x, "x"), _tensor(y, "y")
    if xt.shape[1] != yt.shape[1]:
        raise ValueError(f"x has {xt.shape[1]} metrics and y {yt.shape[1]}")
    if paired and xt.shape[0] != yt.shape[0]:
        raise ValueError(f"paired ratio needs the same prompts: {xt.shape[0]} vs {yt.shape[0]} rows")
    if reg == 0:
        A = _exact_ot(violation_cost(xt, yt, cost, beta).numpy())
        B = _exact_ot(violation_cost(yt, xt, cost, beta).numpy())
        r = A / (A + B) if A + B > 0 else 0.5
        return MultivariateRatio(r, float("nan"), (float("nan"), float("nan")), A, B)
    A, fA, gA, B, fB, gB = _both_directions(xt, yt, cost, beta, reg, max_iter, tol)
    A, B = float(A), float(B)
    r = A / (A + B)
    ix, iy = _influence_ratio(A, B, fA, gA, fB, gB)
    se = math.sqrt(_variance([ix, iy], paired))
    z = _N.inv_cdf(1 - alpha / 2)
    return MultivariateRatio(r, se, (r - z * se, r + z * se), A, B)


def multivariate_bootstrap_se(x, y, *, cost: str = "logistic", beta: float = 10.0, reg: float = 0.05,
                              n_boot: int = 200, paired: bool = False, seed: int = 0, chunk: int = 50) -> float:
    """Bootstrap standard deviation of the multivariate ratio (batched Sinkhorn; a reference
    for the CLT variance of ``multivariate_violation_ratio``, too slow for large n)."""
    xt, yt = _tensor(x, "x"), _tensor(y, "y")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n_boot, chunk):
        reps = min(chunk, n_boot - start)
        ix = torch.randint(0, xt.shape[0], (reps, xt.shape[0]), generator=gen)
        iy = ix if paired else torch.randint(0, yt.shape[0], (reps, yt.shape[0]), generator=gen)
        A, *_, B, _, _ = _both_directions(xt[ix], yt[iy], cost, beta, reg, 5000, 1e-4)
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


def multivariate_relative(samples, *, cost: str = "logistic", beta: float = 10.0, reg: float = 0.05,
                          alpha: float = 0.05, paired: bool = False, max_iter: int = 5000,
                          tol: float = 1e-4) -> MultivariateRelative:
    """One-versus-all multivariate ratios of k models, (n_i, d) each, with CLT intervals.

    One Sinkhorn solve per pair of models (both directions from it for the hinge and logistic
    costs, see ``_both_directions``).
    """
    names, ts = _named(samples, _tensor)
    k = len(ts)
    if k < 2:
        raise ValueError(f"need at least two models, got {names}")
    if paired and len({t.shape[0] for t in ts}) > 1:
        raise ValueError(f"paired ratios need the same prompts: sizes {[t.shape[0] for t in ts]}")
    sol = {}
    # one 2-D solve per pair: measured 4x faster per problem than one batched (pairs, n, m) solve
    # on CPU (the reduction over the middle axis is strided), and each pair stops when it converges
    for i in range(k):
        for j in range(i + 1, k):
            A, fA, gA, B, fB, gB = _both_directions(ts[i], ts[j], cost, beta, reg, max_iter, tol)
            sol[i, j], sol[j, i] = (float(A), fA, gA), (float(B), fB, gB)
    pair, pair_se = np.full((k, k), 0.5), np.zeros((k, k))
    infl = [[torch.zeros(t.shape[0], dtype=torch.float64) for t in ts] for _ in range(k)]
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            (A, fA, gA), (B, fB, gB) = sol[i, j], sol[j, i]
            pair[i, j] = A / (A + B)
            ix, iy = _influence_ratio(A, B, fA, gA, fB, gB)
            pair_se[i, j] = math.sqrt(_variance([ix, iy], paired))
            infl[i][i] += ix / (k - 1)
            infl[i][j] += iy / (k - 1)
    eps = one_versus_all(pair)
    se = np.array([math.sqrt(_variance(infl[i], paired)) for i in range(k)])
    z = _N.inv_cdf(1 - alpha / 2)
    ci = np.stack([eps - z * se, eps + z * se], axis=1)
    return MultivariateRelative(names, eps, se, ci, pair, [names[i] for i in np.argsort(eps, kind="stable")],
                                pair_se)
