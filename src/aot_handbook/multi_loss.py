"""The multi-attribute AOT loss (docs/MULTI_REWARD.md, eq. 1): dominance on every attribute.

Each answer of a batch carries one label per attribute k (helpfulness, correctness, ..., or the sum and the
format of the tiny multi task). The batch is partitioned once per attribute: U_k are the implicit rewards of the
answers positive on k, V_k those of the answers negative on k, and

    L = sum_k w_k * OT_h(mu_{U_k}, mu_{V_k})                      (docs/MULTI_REWARD.md, eq. 1)

where OT_h is the exact one-dimensional transport cost of single-attribute AOT (:func:`aot_handbook.loss.aot_loss`,
docs/MATH.md sec. 3): n_k != m_k is handled exactly, with the same penalties and sorts. An attribute whose batch
holds no positive or no negative contributes 0 (its term is undefined, not small). With one attribute of weight 1
this is ``aot_loss`` itself. Pure tensors; the trainer is ``trainers.multi.MultiAttributeAOTTrainer``.
"""

from __future__ import annotations

import math

import torch

from .loss import aot_loss


def multi_aot_loss(x: torch.Tensor, labels: torch.Tensor, weights, **aot_kwargs) -> tuple[torch.Tensor, list]:
    """``sum_k w_k OT_h(mu_{U_k}, mu_{V_k})`` with ``U_k = x[labels[:, k]]``, ``V_k = x[~labels[:, k]]``.

    Args:
        x: (N,) the batch's log-ratios (``aot_loss`` scales them by ``beta`` inside ``h``).
        labels: (N, K) bool, one column per attribute.
        weights: K non-negative attribute weights (not renormalized).
        **aot_kwargs: ``aot_loss``'s options (beta, penalty, sort, label_smoothing, sort options).

    Returns ``(loss, terms)``: ``terms[k]`` is attribute k's unweighted ``OT_h`` (a 0-dim tensor), or
    None when the batch holds no positive or no negative on k (it then contributes 0).
    """
    labels = torch.as_tensor(labels, device=x.device)
    if x.dim() != 1 or labels.dim() != 2 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"x must be (N,) and labels (N, K), got {tuple(x.shape)} and {tuple(labels.shape)}")
    if labels.dtype != torch.bool:
        raise ValueError(f"labels must be bool, got {labels.dtype}")
    weights = [float(w) for w in weights]
    if len(weights) != labels.shape[1] or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be {labels.shape[1]} finite numbers >= 0, got {weights}")
    loss, terms = x.sum() * 0.0, []  # keeps the graph (and the dtype) when every attribute is empty
    for k, w in enumerate(weights):
        positive = labels[:, k]
        if positive.all() or not positive.any():
            terms.append(None)
            continue
        term = aot_loss(x[positive], x[~positive], **aot_kwargs)
        terms.append(term)
        loss = loss + w * term
    return loss, terms
