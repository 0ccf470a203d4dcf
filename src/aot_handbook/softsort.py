"""Differentiable (soft) ascending sorts for AOT's ``sort`` option (docs/MATH.md sec. 5).

Hard sorting holds the permutation fixed in the backward pass; a soft sort lets the
gradient flow through the ranking as well. Both methods tend to ``torch.sort`` as
their regularization goes to 0 (tested). Neither is in torch, TRL or POT, hence here.
"""

from __future__ import annotations

import numpy as np
import torch


def sinkhorn_sort(x: torch.Tensor, regularization: float = 1e-3, n_iter: int = 100) -> torch.Tensor:
    """Sinkhorn soft sort (Cuturi, Teboul, Vert 2019, "Differentiable ranks and sorting using OT").

    Entropic OT between the n inputs (standardized, squashed to (0, 1) by a sigmoid) and n
    sorted anchors ``linspace(0, 1, n)``, squared-distance cost, strength ``regularization``,
    ``n_iter`` log-domain Sinkhorn iterations (a fixed count, so the map is smooth). The soft
    sorted vector is ``n * P^T x``: anchor j receives a convex combination of the inputs.
    """
    _check_reg(regularization)
    if not (isinstance(n_iter, int) and n_iter >= 1):
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
    n = x.numel()
    if n == 1:
        return x
    z = torch.sigmoid((x - x.mean()) / x.std(unbiased=False).clamp_min(1e-12))
    anchors = torch.linspace(0, 1, n, dtype=x.dtype, device=x.device)
    cost = (z[:, None] - anchors[None, :]) ** 2
    log_marginal = -torch.log(torch.tensor(float(n), dtype=x.dtype))
    f = torch.zeros_like(x)
    g = torch.zeros_like(x)
    for _ in range(n_iter):
        f = regularization * (log_marginal - torch.logsumexp((g[None, :] - cost) / regularization, dim=1))
        g = regularization * (log_marginal - torch.logsumexp((f[:, None] - cost) / regularization, dim=0))
    plan = torch.exp((f[:, None] + g[None, :] - cost) / regularization)  # columns sum to exactly 1/n
    return n * plan.T @ x


def _decreasing_blocks(s: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: block label of each entry in the best non-increasing fit to s."""
    sums, counts = [], []
    for value in s:
        sums.append(value)
        counts.append(1)
        while len(sums) > 1 and sums[-2] / counts[-2] < sums[-1] / counts[-1]:
            last_sum, last_count = sums.pop(), counts.pop()
            sums[-1] += last_sum
            counts[-1] += last_count
    return np.repeat(np.arange(len(counts)), counts)


def pav_sort(x: torch.Tensor, regularization: float = 0.1) -> torch.Tensor:
    """Fast soft sort (Blondel, Teboul, Berthet, Djolonga 2020), quadratic regularization.

    The descending soft sort is the projection of ``rho / regularization`` (rho = n, ..., 1)
    onto the permutahedron of x: ``rho/eps - iso(rho/eps - sort_desc(x))`` with ``iso`` the
    non-increasing isotonic regression, solved by PAV in O(n). The block structure is
    piecewise constant in x, so autograd through the block means gives the exact Jacobian
    almost everywhere. Returned ascending.
    """
    _check_reg(regularization)
    n = x.numel()
    rho = torch.arange(n, 0, -1, dtype=x.dtype, device=x.device) / regularization
    s = rho - torch.sort(x, descending=True).values
    labels = torch.from_numpy(_decreasing_blocks(s.detach().cpu().double().numpy())).to(x.device)
    n_blocks = int(labels[-1]) + 1
    sums = torch.zeros(n_blocks, dtype=x.dtype, device=x.device).index_add(0, labels, s)
    counts = torch.bincount(labels, minlength=n_blocks).to(x.dtype)
    return torch.flip(rho - (sums / counts)[labels], dims=[0])


def _check_reg(regularization) -> None:
    if not (isinstance(regularization, (int, float)) and 0 < regularization < float("inf")):
        raise ValueError(f"soft sort regularization must be a finite number > 0, got {regularization!r}")


def _with_known_options(fn, names, sort_name):
    def wrapped(x, **options):
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for sort={sort_name!r}; known: {names}")
        return fn(x, **options)

    return wrapped


SOFT_SORTS = {
    "soft": _with_known_options(sinkhorn_sort, ["regularization", "n_iter"], "soft"),
    "soft_pav": _with_known_options(pav_sort, ["regularization"], "soft_pav"),
}
