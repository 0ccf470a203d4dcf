"""The batch order of unpaired AOT: every batch holds both labels, drawn independently."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class BalancedLabelSampler(Sampler[int]):
    """Index order whose every consecutive ``batch_size`` chunk holds both labels.

    Each chunk draws ``round(share * batch_size)`` positives and the rest negatives, each
    class from its own shuffled pool (reshuffled when used up), so positives and negatives
    are drawn independently, as unpaired AOT assumes. The DataLoader batches the order by
    ``batch_size``; accelerate hands whole batches to ranks, so every rank sees both classes.
    """

    def __init__(self, labels, batch_size: int, share: float = 0.5, seed: int = 0):
        labels = torch.as_tensor(list(labels), dtype=torch.bool)
        self.pos, self.neg = labels.nonzero().flatten(), (~labels).nonzero().flatten()
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise ValueError(
                f"unpaired AOT needs both labels, got {len(self.pos)} positive and {len(self.neg)} negative rows"
            )
        if batch_size < 2:
            raise ValueError(f"unpaired AOT needs per-device batch size >= 2 (one of each label), got {batch_size}")
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.n_pos = min(max(round(share * batch_size), 1), batch_size - 1)
        self.n_batches = math.ceil(len(labels) / batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _stream(self, pool, generator):
        while True:
            yield from pool[torch.randperm(len(pool), generator=generator)].tolist()

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        pos, neg = self._stream(self.pos, g), self._stream(self.neg, g)
        for _ in range(self.n_batches):
            chunk = [next(pos) for _ in range(self.n_pos)] + [next(neg) for _ in range(self.batch_size - self.n_pos)]
            yield from (chunk[i] for i in torch.randperm(len(chunk), generator=g).tolist())

    def __len__(self) -> int:
        return self.n_batches * self.batch_size
