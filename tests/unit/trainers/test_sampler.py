"""aot_handbook.trainers.sampler: every unpaired batch holds both labels."""

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from aot_handbook.trainers import BalancedLabelSampler


def test_unpaired_batches_hold_both_labels_in_any_share():
    labels = [True] * 30 + [False] * 70
    sampler = BalancedLabelSampler(labels, batch_size=8, share=0.25, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 13 * 8
    for start in range(0, len(order), 8):
        batch = [labels[i] for i in order[start:start + 8]]
        assert batch.count(True) == 2 and batch.count(False) == 6  # n != m, exactly as asked
    assert order == list(BalancedLabelSampler(labels, 8, 0.25, seed=3))  # deterministic per seed
    sampler.set_epoch(1)
    assert list(sampler) != order  # reshuffled each epoch
    # Each class is drawn from its own pool without replacement until the pool is used up:
    # 26 positive draws hit 26 distinct rows; 78 negative draws cover all 70 negatives.
    assert len({i for i in order if labels[i]}) == 26
    assert len({i for i in order if not labels[i]}) == 70


@pytest.mark.parametrize("labels,batch,message", [([True] * 5, 4, "needs both labels"),
                                                  ([True, False] * 3, 1, "batch size >= 2")])
def test_sampler_refuses_impossible_batches(labels, batch, message):
    with pytest.raises(ValueError, match=message):
        BalancedLabelSampler(labels, batch)


LABELS = [True] * 30 + [False] * 70


def _rank_batches(sampler, batch_size, ranks):
    """The batches each rank's dataloader yields: accelerate's own sharding of the sampler's order."""
    batches = BatchSampler(sampler, batch_size, drop_last=False)
    return [list(BatchSamplerShard(batches, num_processes=ranks, process_index=r)) for r in range(ranks)]


@pytest.mark.parametrize("ranks,accumulation,batch_size,share", [(1, 4, 3, 0.25), (2, 4, 3, 0.25), (2, 8, 2, 0.5),
                                                                 (3, 2, 4, 0.3)])
def test_each_rank_step_holds_its_share_of_positives(ranks, accumulation, batch_size, share):
    """Every optimizer step of every rank (its `accumulation` micro-batches) holds round(share * size)
    positives; single micro-batches do not (one label only is allowed), so the balance is over the step."""
    sampler = BalancedLabelSampler(LABELS, batch_size, share, seed=1, accumulation=accumulation, ranks=ranks)
    per_rank = _rank_batches(sampler, batch_size, ranks)
    size = batch_size * accumulation
    steps = len(per_rank[0]) // accumulation
    assert steps >= 2 and all(len(b) == steps * accumulation for b in per_rank)
    counts = []
    for batches in per_rank:
        for s in range(steps):
            window = [i for b in batches[s * accumulation:(s + 1) * accumulation] for i in b]
            assert len(window) == size
            assert sum(LABELS[i] for i in window) == round(share * size)
            counts += [sum(LABELS[i] for i in b) for b in batches[s * accumulation:(s + 1) * accumulation]]
    assert len(set(counts)) > 1, "every micro-batch balanced alike: the window's rows were not shuffled"
    assert len(sampler) == steps * accumulation * ranks * batch_size  # whole optimizer steps per epoch


def test_one_micro_batch_is_the_per_batch_sampler():
    """accumulation 1 (micro_batch scope, or no accumulation): every batch holds its share, and the order is
    the one this sampler always produced (ranks play no part: each batch is its own sorted set)."""
    plain = BalancedLabelSampler(LABELS, 8, 0.25, seed=3)
    assert list(BalancedLabelSampler(LABELS, 8, 0.25, seed=3, accumulation=1, ranks=4)) == list(plain)
    order = list(plain)
    for start in range(0, len(order), 8):
        assert sum(LABELS[i] for i in order[start:start + 8]) == 2


def test_draws_are_independent_per_class_and_deterministic():
    sampler = BalancedLabelSampler(LABELS, 4, 0.5, seed=0, accumulation=4, ranks=2)
    order = list(sampler)
    assert order == list(BalancedLabelSampler(LABELS, 4, 0.5, seed=0, accumulation=4, ranks=2))
    sampler.set_epoch(1)
    assert list(sampler) != order
    step = [i for i in order[:2 * 4 * 4] if LABELS[i]]  # one optimizer step: 16 positives of 30, without replacement
    assert len(step) == 16 and len(set(step)) == 16


def test_micro_batch_of_one_is_allowed_with_accumulation():
    with pytest.raises(ValueError, match="batch size >= 2"):
        BalancedLabelSampler(LABELS, 1)
    sampler = BalancedLabelSampler(LABELS, 1, 0.5, accumulation=4)
    window = list(sampler)[:4]
    assert sum(LABELS[i] for i in window) == 2
    assert torch.tensor([LABELS[i] for i in sampler]).float().mean() == pytest.approx(0.5)
