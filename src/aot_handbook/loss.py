"""The AOT loss: first-order stochastic dominance of U over V, relaxed to 1-D optimal transport.

Paper: Melnyk, Mroueh et al., "Distributional Preference Alignment of LLMs via Optimal
Transport", NeurIPS 2024 (arXiv 2406.05882). Conventions: ``docs/MATH.md``.

    eps(theta) = int_0^1 h(Q_U(t) - Q_V(t)) dt = OT_h(mu_U, mu_V)          (docs/MATH.md sec. 3)

For convex ``h`` the monotone coupling is optimal, so the loss needs only sorting:
``u`` and ``v`` are sorted, the quantile levels of both empirical measures are merged
into intervals ``(t_{k-1}, t_k]``, and each interval pairs one order statistic of ``u``
with one of ``v``. For n == m with uniform weights this is the paper's
``(1/n) sum_i h(u_(i) - v_(i))``; for n != m (or weighted samples) it is the exact
optimum of the transport linear program (checked against POT's ``ot.emd2`` in tests).

Pure functions on tensors: no trainer, no model. ``u`` and ``v`` are what the trainer
computes (docs/MATH.md sec. 2): policy vs reference margins (paired) or chosen vs rejected
log-ratios (unpaired).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .softsort import SOFT_SORTS


def _logistic(z, label_smoothing):
    # TRL's convention for the smoothed logistic loss (docs/MATH.md sec. 4).
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


PENALTIES = {  # h(z), z = beta * (quantile gap); all convex (docs/MATH.md sec. 4)
    "logistic": _logistic,
    "hinge": lambda z, _: torch.relu(1 - z),
    "squared_hinge": lambda z, _: torch.relu(1 - z) ** 2,
    "least_squares": lambda z, _: (1 - z) ** 2,
}
SORTS = ("hard", *SOFT_SORTS)


def _check_sample(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: AOT needs at least one sample on each side")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has non-finite values (first at indices {bad})")


def _sample_weights(w, x: torch.Tensor, name: str) -> torch.Tensor:
    if w is None:
        return torch.full_like(x, 1.0 / x.numel()).detach()
    w = torch.as_tensor(w, dtype=x.dtype, device=x.device).detach()
    if w.shape != x.shape:
        raise ValueError(f"{name} must have the shape of its samples {tuple(x.shape)}, got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{name} must be finite, non-negative and not all zero")
    return w / w.sum()


def _sort(x: torch.Tensor, w: torch.Tensor, sort: str, options: dict):
    """Ascending order statistics of x and the weights that travel with them."""
    if sort == "hard":
        # torch.sort backpropagates through the values with the permutation held fixed (docs/MATH.md sec. 5).
        values, perm = torch.sort(x)
        return values, w[perm]
    if not torch.allclose(w, torch.full_like(w, 1.0 / w.numel())):
        raise ValueError(f"sort={sort!r} supports uniform sample weights only; use sort='hard' with weights")
    return SOFT_SORTS[sort](x, **options), w


def quantile_coupling(u, v, *, u_weights=None, v_weights=None, sort="hard", **sort_options):
    """Monotone (north-west corner) coupling of the empirical measures of u and v.

    Returns ``(qu, qv, mass)``: on each interval ``(t_{k-1}, t_k]`` of merged quantile levels,
    ``qu[k] = Q_U(t)``, ``qv[k] = Q_V(t)`` and ``mass[k] = t_k - t_{k-1}`` (``mass`` sums to 1).
    """
    _check_sample(u, "u")
    _check_sample(v, "v")
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; expected one of {list(SORTS)}")
    if sort == "hard" and sort_options:
        raise ValueError(f"sort='hard' takes no options, got {sorted(sort_options)}")
    a = _sample_weights(u_weights, u, "u_weights")
    b = _sample_weights(v_weights, v, "v_weights")
    u_sorted, a = _sort(u, a, sort, sort_options)
    v_sorted, b = _sort(v, b, sort, sort_options)
    if u_weights is None and v_weights is None and u.numel() == v.numel():
        return u_sorted, v_sorted, a  # the paper's equal-size case: u_(i) pairs with v_(i)
    # Merged breakpoints t_k of both step quantile functions (float64 bookkeeping, no gradient).
    cu = torch.cumsum(a.double(), 0)
    cv = torch.cumsum(b.double(), 0)
    t = torch.cat([cu, cv]).sort().values
    t[-1] = 1.0
    mass = torch.diff(t, prepend=t.new_zeros(1))
    mid = t - mass / 2  # any level inside (t_{k-1}, t_k] selects that interval's order statistics
    iu = torch.searchsorted(cu, mid).clamp(max=u.numel() - 1)
    iv = torch.searchsorted(cv, mid).clamp(max=v.numel() - 1)
    keep = mass > 0
    return u_sorted[iu[keep]], v_sorted[iv[keep]], mass[keep].to(u.dtype)


def aot_loss(
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    beta: float = 0.01,
    penalty: str = "logistic",
    sort: str = "hard",
    label_smoothing: float = 0.0,
    u_weights: torch.Tensor | None = None,
    v_weights: torch.Tensor | None = None,
    **sort_options,
) -> torch.Tensor:
    """``OT_h(mu_U, mu_V) = int_0^1 h(beta * (Q_U(t) - Q_V(t))) dt``, a 0-dim tensor.

    Args:
        u, v: 1-D samples of U and V; lengths may differ.
        beta: scale of the quantile gap inside ``h`` (the paper uses 0.01 for 7B models).
        penalty: ``logistic`` (default), ``hinge``, ``squared_hinge`` or ``least_squares``.
        sort: ``hard`` (torch.sort), ``soft`` (Sinkhorn) or ``soft_pav`` (fast soft sort); see ``softsort``.
        label_smoothing: TRL's smoothing of the logistic penalty, in [0, 0.5).
        u_weights, v_weights: optional non-negative sample weights (normalized here; no gradient).
        **sort_options: options of the soft sort (``regularization``; ``n_iter`` for ``soft``).
    """
    if penalty not in PENALTIES:
        raise ValueError(f"unknown penalty {penalty!r}; expected one of {list(PENALTIES)}")
    if not (isinstance(beta, (int, float)) and beta > 0 and beta < float("inf")):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if label_smoothing and penalty != "logistic":
        raise ValueError(f"label_smoothing applies to the logistic penalty only, not {penalty!r}")
    qu, qv, mass = quantile_coupling(u, v, u_weights=u_weights, v_weights=v_weights, sort=sort, **sort_options)
    return (mass * PENALTIES[penalty](beta * (qu - qv), label_smoothing)).sum()
