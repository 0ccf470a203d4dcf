"""aot_handbook.multi_loss: the multi-attribute loss equals the weighted sum of POT's exact transport costs."""

import numpy as np
import ot
import pytest
import torch

from aot_handbook.loss import PENALTIES, aot_loss
from aot_handbook.multi_loss import multi_aot_loss


def _cost(penalty, beta, u, v):
    """M[i, j] = h(beta * (u_i - v_j)), the transport cost POT gets (as tests/unit/test_loss.py)."""
    return PENALTIES[penalty](torch.as_tensor(beta * (u[:, None] - v[None, :])), 0.0).numpy()


def _pot_multi(x, labels, weights, penalty, beta):
    """sum_k w_k * emd2(uniform on U_k, uniform on V_k, h cost); attributes without both sides skipped."""
    total = 0.0
    for k, w in enumerate(weights):
        pos = labels[:, k]
        u, v = x[pos], x[~pos]
        if len(u) == 0 or len(v) == 0:
            continue
        total += w * ot.emd2(np.full(len(u), 1 / len(u)), np.full(len(v), 1 / len(v)),
                             _cost(penalty, beta, u, v), numItermax=10**7)
    return total


def _random_batch(rng, n, k, empty_share=0.25):
    x = torch.tensor(rng.normal(0, 3, n) if rng.random() < 0.5 else rng.integers(-3, 4, n) * 1.5)
    labels = torch.tensor(rng.random((n, k)) < rng.uniform(0.1, 0.9, k))
    for j in range(k):  # some attributes one-sided in the batch (all positive or all negative)
        if rng.random() < empty_share:
            labels[:, j] = bool(rng.integers(2))
    return x, labels


@pytest.mark.parametrize("penalty", list(PENALTIES))
def test_equals_weighted_sum_of_pot_transport_costs(penalty):
    rng = np.random.default_rng(0)
    empties = 0
    for _ in range(60):
        n, k = int(rng.integers(2, 40)), int(rng.integers(1, 6))
        x, labels = _random_batch(rng, n, k)
        weights = rng.uniform(0, 2, k)
        beta = float(rng.choice([0.1, 0.5, 2.0]))
        ours, terms = multi_aot_loss(x, labels, weights, beta=beta, penalty=penalty)
        ref = _pot_multi(x.numpy(), labels.numpy(), weights, penalty, beta)
        assert ours.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
        one_sided = [bool(labels[:, j].all() or not labels[:, j].any()) for j in range(k)]
        assert [t is None for t in terms] == one_sided
        empties += sum(one_sided)
    assert empties > 10  # the random cases did exercise empty partitions


def test_one_attribute_is_aot_loss_exactly():
    rng = np.random.default_rng(1)
    for penalty in PENALTIES:
        for sort in ("hard", "soft", "soft_pav"):
            x, labels = _random_batch(rng, 17, 1, empty_share=0.0)
            labels[0, 0], labels[1, 0] = True, False
            ours, _ = multi_aot_loss(x, labels, [1.0], beta=0.3, penalty=penalty, sort=sort)
            ref = aot_loss(x[labels[:, 0]], x[~labels[:, 0]], beta=0.3, penalty=penalty, sort=sort)
            assert torch.equal(ours, ref)


def test_gradcheck():
    rng = np.random.default_rng(2)
    x, labels = _random_batch(rng, 13, 3, empty_share=0.0)
    x = (x + torch.tensor(rng.normal(0, 1e-2, 13))).requires_grad_()  # no ties: the sort is locally fixed
    labels[:, 2] = True  # one attribute contributes 0 (and no gradient)
    for penalty in ("logistic", "squared_hinge", "least_squares"):
        assert torch.autograd.gradcheck(
            lambda t, h=penalty: multi_aot_loss(t, labels, [0.7, 1.3, 5.0], beta=0.4, penalty=h)[0], (x,))


def test_all_attributes_empty_gives_zero_with_a_graph():
    x = torch.randn(5, requires_grad=True)
    loss, terms = multi_aot_loss(x, torch.ones(5, 2, dtype=torch.bool), [1.0, 1.0], beta=0.1)
    assert loss.item() == 0.0 and terms == [None, None]
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(5))


def test_loss_rejects_bad_input():
    x = torch.randn(4)
    with pytest.raises(ValueError, match="weights must be 2"):
        multi_aot_loss(x, torch.ones(4, 2, dtype=torch.bool), [1.0])
    with pytest.raises(ValueError, match="labels must be bool"):
        multi_aot_loss(x, torch.ones(4, 2), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        multi_aot_loss(x, torch.ones(3, 2, dtype=torch.bool), [1.0, 1.0])
