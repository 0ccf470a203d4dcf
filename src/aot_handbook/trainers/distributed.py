"""The data-parallel helpers of the global sort (docs/MATH.md sec. 6): a gather that keeps autograd."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any per-rank length over all ranks, keeping autograd.

    The autograd all-gather's backward sums, for each rank's shard, the gradients every
    rank sends back. Every rank computes the same global loss L, so a shard receives
    R * dL/dshard; DDP/FSDP/ZeRO then average parameter gradients over the R ranks, which
    gives exactly the gradient of the single-process loss on the global batch (tested).
    """
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.numel()], device=x.device))
    sizes = [int(s) for s in sizes]
    padded = torch.cat([x, x.new_zeros(max(sizes) - x.numel())])
    return torch.cat([part[:n] for part, n in zip(all_gather(padded), sizes)])


def world_size() -> int:
    return dist.get_world_size() if _multi_process() else 1


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` along its first dimension over all ranks, any per-rank length, values only (no
    autograd); returns ``(gathered, offset)``, ``offset`` being where this rank's rows start."""
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    wire = x.detach().to(torch.uint8) if x.dtype == torch.bool else x.detach()  # gloo gathers no bool
    padded = wire.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = wire
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    out = torch.cat([part[:n] for part, n in zip(parts, sizes)])
    return (out.bool() if x.dtype == torch.bool else out), sum(sizes[:rank])


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a detached copy of ``x`` (itself with one process)."""
    x = x.detach().clone()
    if _multi_process():
        dist.all_reduce(x)
    return x
