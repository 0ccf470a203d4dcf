"""aot_handbook.trainers.multi under two processes: the global sort of the multi-attribute loss equals one
process on the whole batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aot_handbook.multi_loss import multi_aot_loss

pytestmark = pytest.mark.slow  # every test here: make test-fast leaves them out

HERE = Path(__file__).resolve()


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


def _worker(out):
    import torch.distributed as dist

    from aot_handbook.trainers.multi import gather_batch

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


if __name__ == "__main__":
    _worker(sys.argv[1])
