"""The batch order of unpaired AOT: every batch holds both labels, drawn independently."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class BalancedLabelSampler(Sampler[int]):
    """Index order whose every consecutive ``batch_size`` chunk holds both labels, or, with ``accumulation``
    > 1, whose every optimizer step does: balanced over the batch AOT sorts (``aot_sort_scope``).

    Each sorted set, ``accumulation`` micro-batches of ``batch_size`` rows (one micro-batch: 1), draws
    ``round(share * size)`` positives and the rest negatives, each class from its own shuffled pool
    (reshuffled when used up), so positives and negatives are drawn independently, as unpaired AOT assumes;
    its rows are shuffled, so one micro-batch may hold one label only. The DataLoader batches the order by
    ``batch_size``, and accelerate deals batch k to rank ``k % ranks``: an optimizer step takes ``ranks *
    accumulation`` consecutive batches, and each rank's ``accumulation`` of them are one balanced set.
    """

    def __init__(self, labels, batch_size: int, share: float = 0.5, seed: int = 0, *, accumulation: int = 1,
                 ranks: int = 1):
        labels = torch.as_tensor(list(labels), dtype=torch.bool)
        self.pos, self.neg = labels.nonzero().flatten(), (~labels).nonzero().flatten()
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise ValueError(
                f"unpaired AOT needs both labels, got {len(self.pos)} positive and {len(self.neg)} negative rows"
            )
        if batch_size < 2 and accumulation < 2:
            raise ValueError(f"unpaired AOT needs per-device batch size >= 2 (one of each label), got {batch_size}")
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.accumulation, self.ranks = accumulation, ranks if accumulation > 1 else 1
        size = batch_size * accumulation  # one sorted set
        self.n_pos = min(max(round(share * size), 1), size - 1)
        step = size * self.ranks
        self.n_batches = math.ceil(len(labels) / step) * self.ranks * accumulation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _stream(self, pool, generator):
        while True:
            yield from pool[torch.randperm(len(pool), generator=generator)].tolist()

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        pos, neg = self._stream(self.pos, g), self._stream(self.neg, g)
        size, b = self.batch_size * self.accumulation, self.batch_size
        for _ in range(self.n_batches // (self.ranks * self.accumulation)):
            sets = []
            for _ in range(self.ranks):
                chunk = [next(pos) for _ in range(self.n_pos)] + [next(neg) for _ in range(size - self.n_pos)]
                sets.append([chunk[i] for i in torch.randperm(len(chunk), generator=g).tolist()])
            for j in range(self.accumulation):  # batch j * ranks + r goes to rank r (accelerate's dealing)
                for rows in sets:
                    yield from rows[j * b:(j + 1) * b]

    def __len__(self) -> int:
        return self.n_batches * self.batch_size
