"""Power and planning of a comparison (``aot-compare --plan``; docs/DOMINANCE.md, "Power and planning").

How large a difference can the prompts and seeds at hand detect, and how many prompts or seeds does a target
difference need? On the scale a reader acts on, the difference of mean scores (points of win rate or accuracy),
with the variance model of the seed level of ``dominance.relative_test`` (``dominance.mean_difference_test``):

    Var(mean_A - mean_B) = 2 (seed + within / n) / S + interaction / n

for n prompts and S runs (seeds) per model: ``seed`` the seed variance of a run's mean score, ``within`` a run's
own noise per prompt (what averaging seeds removes), ``interaction`` the per-prompt difference that seeds do not
average out (unpaired: the two models' prompt variances). The first term is the variance of the run means,
estimated from the runs with 2 (S - 1) degrees of freedom; the test is two-sided at alpha / pairs (Holm's first
step, the worst case for a pair), Student t with Satterthwaite's degrees of freedom. With one run per model the
test is over prompts only: Var = (interaction + 2 within) / n, and the seed variance is not seen.
The components come from pilot scores (``pilot``) or are stated (``stated``). The planner's predicted power is
checked against the rejection rate of the verdicts themselves by simulation (benchmarks/bench_dominance.py plan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dominance import ScoreError, seed_components, student_isf


@dataclass
class Components:
    """Variance components of the difference of two models' mean scores (squared units of the scores)."""
    interaction: float      # per-prompt difference variance that seeds do not average out
    within: float           # a run's own variance per prompt (averaged out by seeds)
    seed: float             # seed variance of a run's mean score
    seed_known: bool        # False: one run per model and nothing stated, seed variance taken as 0
    paired: bool = True
    prompts: int | None = None   # the pilot's
    runs: int | None = None      # the pilot's, per model (the smaller)
    diff: float = math.nan       # the pilot's difference of means


def pilot(x, y, *, paired: bool) -> Components:
    """The components of a pair from pilot scores, (runs, prompts) or (prompts,) per model (two-way analysis of
    variance of each model's runs x prompts; pooled over the two models; clamped at 0)."""
    cx, cy = seed_components(x), seed_components(y)
    if paired and cx.prompts != cy.prompts:
        raise ScoreError(f"pilot: a paired pilot needs the same prompts: {cx.prompts} vs {cy.prompts}")
    df = cx.runs + cy.runs - 2
    within = sum((c.runs - 1) * c.within for c in (cx, cy) if c.runs > 1) / df if df else 0.0
    seed = max(0.0, sum((c.runs - 1) * c.seed_var for c in (cx, cy) if c.runs > 1) / df) if df else 0.0
    if paired:
        spread = float(np.var(cx.prompt_means - cy.prompt_means, ddof=1))
    else:
        spread = float(np.var(cx.prompt_means, ddof=1) + np.var(cy.prompt_means, ddof=1))
    interaction = max(0.0, spread - within * (1 / cx.runs + 1 / cy.runs))
    return Components(interaction, within, seed, df > 0, paired, min(cx.prompts, cy.prompts),
                      min(cx.runs, cy.runs), cx.mean - cy.mean)


def stated(sd: float | None, seed_sd: float | None = None) -> Components:
    """Stated effect sizes: ``sd`` the sd over prompts of the per-prompt difference between two models (with
    the runs you will have; taken as not averaged by more seeds, which is conservative), ``seed_sd`` the sd of
    a run's mean score over seeds (None: unknown, taken as 0 and said so)."""
    if sd is None or not sd > 0:
        raise ValueError(f"--plan without runs needs --sd (the per-prompt sd of a difference, > 0), got {sd!r}")
    if seed_sd is not None and seed_sd < 0:
        raise ValueError(f"--seed-sd must be >= 0, got {seed_sd!r}")
    return Components(float(sd) ** 2, 0.0, float(seed_sd or 0.0) ** 2, seed_sd is not None)


def _parts(c: Components, prompts: int, runs: int) -> tuple[float, float, float]:
    """(variance the test uses, its degrees of freedom, seed variance the test cannot see) at n prompts and S
    runs per model. With one run per model the test has no seed part: the seed variance is then unseen."""
    if runs < 2:
        return (c.interaction + 2 * c.within) / prompts, max(prompts - 1, 1), 2 * c.seed
    v_runs = 2 * (c.seed + c.within / prompts) / runs          # the run means, 2 (S - 1) df
    v_prompt = c.interaction / prompts
    df = (v_runs + v_prompt) ** 2 / (v_runs ** 2 / (2 * (runs - 1)) + v_prompt ** 2 / max(prompts - 1, 1) + 1e-300)
    return v_runs + v_prompt, df, 0.0


def t_power(crit: float, ncp: float, df: float, points: int = 4001) -> float:
    """P(|T'| > crit) for the noncentral t with ``df`` degrees of freedom and noncentrality ``ncp``: the average
    over s = sqrt(chi2_df / df) of P(|Z + ncp| > crit s), by the trapezoid rule on s (with few degrees of
    freedom the variance estimate's own spread matters: the shifted central t overstates power, 0.80 for 0.66
    at df 4). Normal for df > 1e4."""
    if not math.isfinite(df) or df > 1e4:
        return _phi(ncp - crit) + _phi(-ncp - crit)
    s = np.linspace(1e-9, 1 + 12 / math.sqrt(df), points)
    log_f = (math.log(2) + (df / 2) * math.log(df / 2) - math.lgamma(df / 2) + (df - 1) * np.log(s)
             - df * s * s / 2)
    f = np.exp(log_f)
    g = np.array([_phi(ncp - crit * x) + _phi(-ncp - crit * x) for x in s])
    return float(np.clip(np.trapezoid(f * g, s) / np.trapezoid(f, s), 0.0, 1.0))


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def power_at(c: Components, prompts: int, runs: int, diff: float, alpha_pair: float) -> float:
    """Power of the two-sided t-test at level ``alpha_pair`` to find a difference of means ``diff``."""
    v, df, _ = _parts(c, prompts, runs)
    if v <= 0:
        return 1.0 if diff else 0.0
    return t_power(student_isf(alpha_pair / 2, df), abs(diff) / math.sqrt(v), df)


def detectable(c: Components, prompts: int, runs: int, alpha_pair: float, power: float) -> float:
    """The smallest difference of means found with probability ``power`` (``power_at`` solved by bisection; the
    usual (t_{alpha/2} + t_{1-power}) se is its starting bracket)."""
    v, df, _ = _parts(c, prompts, runs)
    lo, hi = 0.0, 2 * (student_isf(alpha_pair / 2, df) + student_isf(1 - power, df)) * math.sqrt(v)
    while power_at(c, prompts, runs, hi, alpha_pair) < power:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power_at(c, prompts, runs, mid, alpha_pair) < power else (lo, mid)
    return hi


def prompts_needed(c: Components, runs: int, diff: float, alpha_pair: float, power: float,
                   most: int = 10 ** 8) -> int | None:
    """The fewest prompts with ``power`` for ``diff`` at ``runs`` per model; None when no number suffices
    (the seed part alone is too large: more seeds are needed)."""
    if power_at(c, most, runs, diff, alpha_pair) < power:
        return None
    lo, hi = 2, most
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if power_at(c, mid, runs, diff, alpha_pair) < power else (lo, mid)
    return lo


def seeds_needed(c: Components, prompts: int, diff: float, alpha_pair: float, power: float,
                 most: int = 1000) -> int | None:
    """The fewest runs per model (at least 2, so that the test sees the seed variance) with ``power`` for
    ``diff`` at ``prompts``; None when no number up to ``most`` suffices (the per-prompt part at these prompts
    is too large: more prompts are needed)."""
    for runs in range(2, most + 1):
        if power_at(c, prompts, runs, diff, alpha_pair) >= power:
            return runs
    return None


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def plan_table(comps: dict[str, Components], *, alpha: float = 0.05, power_wanted: float = 0.8,
               target: float | None = None, prompts: int | None = None, seeds: int | None = None,
               pairs: int | None = None, pairs_in_test: int = 1) -> str:
    """A Markdown report, one row per pair: the components, the detectable difference at the prompts and seeds
    planned (default: the pilot's), and for ``target`` the power and the prompts or seeds it needs."""
    from .dominance import check_alpha

    alpha = check_alpha(alpha)
    if not 0 < power_wanted < 1:
        raise ValueError(f"--power must be in (0, 1), got {power_wanted!r}")
    m = pairs or pairs_in_test
    a = alpha / m
    head = ["Pair", "prompts", "runs/model", "pilot diff", "sd per prompt", "seed sd (run mean)",
            f"detectable at power {power_wanted}"]
    if target is not None:
        head += [f"power for {target}", f"prompts for {target}", f"runs/model for {target}"]
    lines = [f"Two-sided test of the difference of means at alpha {alpha} / {m} pair(s) = {a:.4g} (Holm's first "
             "step), Student t with Satterthwaite df; Var = 2 seed/S + (interaction + 2 within/S)/n "
             "(aot_handbook.power). It plans the seed level of the verdicts; the verdict also needs the pair's "
             "ratio and permutation parts, which cost some power (measured in docs/DOMINANCE.md).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = set()
    for name, c in comps.items():
        n = prompts or c.prompts
        s = seeds or c.runs or 1
        if n is None:
            raise ValueError("--plan with stated sizes needs --prompts")
        if not c.seed_known:
            notes.add("seed variance not known (one run per model, no --seed-sd): taken as 0, so these numbers "
                      "are optimistic if seeds matter")
        if s < 2 and c.seed > 0:
            notes.add("with one run per model the test cannot see the seed variance: its p-values would be too "
                      "small; plan for at least 2 runs per model")
        row = [name, str(n), str(s), _fmt(c.diff), _fmt(math.sqrt(c.interaction + 2 * c.within / s)),
               _fmt(math.sqrt(c.seed)) if c.seed_known else "?", _fmt(detectable(c, n, s, a, power_wanted))]
        if target is not None:
            need_n, need_s = prompts_needed(c, s, target, a, power_wanted), seeds_needed(c, n, target, a, power_wanted)
            row += [_fmt(power_at(c, n, s, target, a)), str(need_n) if need_n else "none suffices (add seeds)",
                    str(need_s) if need_s else "none suffices (add prompts)"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines + [""] + [f"Note: {x}." for x in sorted(notes)]) + "\n"
