"""First-order stochastic dominance (FSD) diagnostics of U over V (docs/MATH.md sec. 2-3).

All are read off the exact monotone coupling the loss uses (``loss.quantile_coupling``),
so "the quantiles the trainer logs" and "the quantiles the loss sorts" are the same thing.
"""

from __future__ import annotations

import torch

from .loss import quantile_coupling


@torch.no_grad()
def quantile_curves(u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step quantile functions of u and v on their merged levels.

    Returns ``t`` (right end of each interval ``(t_{k-1}, t_k]``), ``q_u`` and ``q_v``
    (the quantiles on that interval) and ``mass`` (its length); float64 on the CPU.
    """
    qu, qv, mass = quantile_coupling(u.detach().double().cpu(), v.detach().double().cpu())
    return {"t": torch.cumsum(mass, 0), "q_u": qu, "q_v": qv, "mass": mass}


@torch.no_grad()
def fsd_diagnostics(u: torch.Tensor, v: torch.Tensor) -> dict[str, float]:
    """How far U is from dominating V in the first order.

    - ``fsd_violation_share``: measure of quantile levels t with Q_U(t) < Q_V(t);
    - ``w1_violation``: ``int_0^1 (Q_V(t) - Q_U(t))_+ dt``, the Wasserstein-1 violation;
    - ``min_quantile_gap``: ``min_t Q_U(t) - Q_V(t)`` (>= 0 iff U dominates V).
    """
    c = quantile_curves(u, v)
    gap = c["q_u"] - c["q_v"]
    return {
        "fsd_violation_share": float(c["mass"][gap < 0].sum()),
        "w1_violation": float((c["mass"] * torch.relu(-gap)).sum()),
        "min_quantile_gap": float(gap.min()),
    }
