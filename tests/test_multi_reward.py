"""Multi-attribute unpaired AOT (issue 19): the loss against POT, gradcheck, the one-attribute reduction,
the global sort across real processes, the data's attribute labels and their errors, the trainer, recipes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import ot
import pytest
import torch

from aot_handbook.loss import PENALTIES, aot_loss
from aot_handbook.multi_reward import multi_aot_loss

HERE = Path(__file__).resolve()


def _cost(penalty, beta, u, v):
    """M[i, j] = h(beta * (u_i - v_j)), the transport cost POT gets (as tests/test_loss.py)."""
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


# ---------------------------------------------------------------- global sort over real processes (gloo)

GLOBAL_N, GLOBAL_K = 11, 3


def _global_case():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(GLOBAL_N, generator=g, dtype=torch.float64)
    labels = torch.rand(GLOBAL_N, GLOBAL_K, generator=g) < 0.5
    labels[:4, 1] = True  # rank 0's shard (rows 0-3): attribute 1 has no negative there
    labels[4:, 2] = False  # rank 1's shard (rows 4-10): attribute 2 has no positive there
    labels[0, 2] = True
    labels[4, 1] = False
    return x0, labels, [0.5, 1.0, 2.0]


def _model_x(w, x0):  # a replicated parameter w maps each row to its log-ratio
    return x0 * w[0] + w[1] * x0 ** 2


def _worker(out):
    import torch.distributed as dist

    from aot_handbook.multi_reward import gather_batch

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x0, labels, weights = _global_case()
    rows = slice(0, 4) if rank == 0 else slice(4, GLOBAL_N)  # unequal shards
    w = torch.tensor([1.0, 0.3], dtype=torch.float64, requires_grad=True)
    x, lab = gather_batch(_model_x(w, x0[rows]), labels[rows])
    loss, _ = multi_aot_loss(x, lab, weights, beta=0.7)
    loss.backward()
    grad = w.grad.clone()
    dist.all_reduce(grad)
    torch.save({"loss": loss.item(), "grad": grad / dist.get_world_size()}, Path(out) / f"rank{rank}.pt")


def test_global_sort_equals_one_process(tmp_path):
    """2 ranks, unequal shards, an attribute empty on each rank's shard: the loss and the DDP-averaged
    gradient equal the single-process ones on the whole batch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(HERE), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    x0, labels, weights = _global_case()
    w = torch.tensor([1.0, 0.3], dtype=torch.float64, requires_grad=True)
    loss, terms = multi_aot_loss(_model_x(w, x0), labels, weights, beta=0.7)
    loss.backward()
    assert all(t is not None for t in terms)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-12)
        torch.testing.assert_close(got["grad"], w.grad, rtol=1e-10, atol=1e-12)


if __name__ == "__main__":
    _worker(sys.argv[1])
