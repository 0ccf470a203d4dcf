"""The optimizer batch is the sorted set: AOT under gradient accumulation, exact, in one micro-batch's memory.

AOT's loss sorts the batch (docs/MATH.md sec. 3), so it is not a sum over micro-batches: sorting each
micro-batch of an accumulation window alone estimates the quantiles from fewer samples than the optimizer
steps on. But the loss depends on the weights only through per-sample scalars (the policy's log-probs), so
the gradient of the loss of the whole optimizer batch is exact in two passes (docs/MATH.md sec. 7):

1. every micro-batch of the window forward, without gradients: its policy log-probs, reference log-probs
   and labels (gathered from every rank under the global sort), the RNG state it started from saved;
2. the loss on the whole optimizer batch, and its gradient with respect to those scalars (autograd on a
   few thousand numbers, whatever the penalty, sort, n != m or smoothing);
3. each micro-batch again, with gradients, its RNG state replayed (so dropout draws the same masks), and
   the backward of the surrogate ``sum_i g_i * logp_i`` (plus the NLL term over the optimizer batch's
   tokens): its gradient is this micro-batch's exact share of the full-batch gradient.

The idea is gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"); memory stays that of one micro-batch, the cost is one extra forward without gradients.

Hooks (transformers 5.23, pinned by tests/unit/trainers/test_optimizer_batch.py::test_trainer_contract): the Trainer
collects each accumulation window with ``get_batch_samples`` and hands its micro-batches, the same objects,
to ``training_step`` one by one. Pass 1 runs at the window's first ``training_step`` (after the Trainer has
restored a resumed run's RNG state), pass 3 in each ``training_step`` through ``_compute_loss``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from trl.models.utils import disable_gradient_checkpointing

from .distributed import all_reduce_sum, gather_rows, world_size

logger = logging.getLogger("aot_handbook.trainers")
SCOPES = ("optimizer_batch", "micro_batch")


@dataclass
class MicroBatch:
    """What the loss of an optimizer batch needs from one micro-batch (the trainers' ``_micro_batch``).

    ``params``: per-sample scalars that depend on the weights (policy log-probs), each of the same length;
    ``consts``: per-sample values that do not (reference log-probs, labels); ``nll_logps`` / ``nll_mask``:
    the per-token log-probs and mask of the NLL term's tokens (chosen / positive completions)."""

    params: dict[str, torch.Tensor]
    consts: dict[str, torch.Tensor]
    nll_logps: torch.Tensor
    nll_mask: torch.Tensor
    outputs: Any = None

    def nll_sum(self) -> torch.Tensor:
        return -self.nll_logps[self.nll_mask.bool()].sum()


@dataclass
class _Cached:
    """One micro-batch after pass 1: its RNG state, constants, values and the loss's gradient for its rows."""

    rng: list
    consts: dict
    values: dict
    grads: dict
    nll_scale: float
    loss_share: torch.Tensor
    index: int = 0


def _rng_state(device: torch.device) -> list:
    state = [torch.get_rng_state()]
    if device.type != "cpu":
        state.append(torch.get_device_module(device).get_rng_state(device))
    return state


def _set_rng_state(state: list, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type != "cpu":
        torch.get_device_module(device).set_rng_state(state[1], device)


def _data_order(sizes: list[int], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Every rank's micro-batches in the order the data has them: accelerate deals batch k to rank k % R, so
    micro-batch j of rank r is batch j * R + r. Returns the index that puts the rank-major gather of the
    window's rows in that order, and where this rank's micro-batches start in it. (The loss does not depend
    on the order; the float rounding of a soft sort does, and in data order it is that of one process.)"""
    counts, _ = gather_rows(torch.tensor([len(sizes)], device=device))
    flat, _ = gather_rows(torch.tensor(sizes, dtype=torch.long, device=device))
    per_rank, at = [], 0
    for count in counts.tolist():
        per_rank.append(flat[at:at + count].tolist())
        at += count
    rank_start = [sum(map(sum, per_rank[:r])) for r in range(len(per_rank))]
    order, starts, position = [], {}, 0
    for j in range(max(counts.tolist())):
        for r, rank_sizes in enumerate(per_rank):
            if j < len(rank_sizes):
                begin = rank_start[r] + sum(rank_sizes[:j])
                order.append(torch.arange(begin, begin + rank_sizes[j]))
                starts[r, j] = position
                position += rank_sizes[j]
    rank = torch.distributed.get_rank()
    return torch.cat(order).to(device), [starts[rank, j] for j in range(len(sizes))]


class OptimizerBatchStep:
    """Mixin for the AOT trainers: with ``aot_sort_scope: optimizer_batch`` and gradient accumulation, one
    optimizer step sorts its whole batch (module docstring). The trainer supplies ``_micro_batch(model,
    inputs, consts=None) -> MicroBatch`` (``consts`` given: pass 3 reuses pass 1's reference log-probs),
    ``_batch_loss(params, consts, mode)`` (the AOT loss of a whole set, no NLL term) and
    ``_log_batch(params, consts, mode)`` (reward logs of this rank's samples)."""

    _window: list | None = None
    _cache: list | None = None
    _current: _Cached | None = None
    _gathered = False  # the samples given to _batch_loss are every rank's already

    def _two_pass(self) -> bool:
        return self.args.aot_sort_scope == "optimizer_batch" and self.args.gradient_accumulation_steps > 1

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window, self._cache = samples, None
        return samples, num_items

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._two_pass():
            return super().training_step(model, inputs, num_items_in_batch)
        index = next((i for i, batch in enumerate(self._window or ()) if batch is inputs), None)
        if index is None:
            raise RuntimeError("aot_sort_scope=optimizer_batch: training_step got a micro-batch that is not one of "
                               "the window get_batch_samples collected (transformers' Trainer loop changed?)")
        if index == 0:
            self._cache = self._first_pass(model, self._window)
        self._current = self._cache[index]
        # The value returned is already this micro-batch's share of the optimizer batch's loss: no division by
        # the number of micro-batches (Trainer.training_step's loss_is_scaled_for_ga).
        scaled, self.loss_is_scaled_for_ga = self.loss_is_scaled_for_ga, True
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._current, self.loss_is_scaled_for_ga = None, scaled

    def _first_pass(self, model, window: list) -> list[_Cached]:
        """Passes 1 and 2: every micro-batch without gradients, then the loss of the whole optimizer batch and
        its gradient with respect to each sample's policy log-probs."""
        mode, device = "train", self.accelerator.device
        model.train()  # what training_step does before its forward
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()  # schedule-free optimizers swap the weights the forward sees
        records = []
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              self.compute_loss_context_manager()):
            for raw in window:
                inputs = self._prepare_inputs(raw)
                rng = _rng_state(device)
                mb = self._micro_batch(model, inputs)
                mb.outputs = None  # per-token tensors: not kept for the whole window
                records.append((rng, mb))
        local = {key: torch.cat([mb.params[key] for _, mb in records]) for key in records[0][1].params}
        local_consts = {key: torch.cat([mb.consts[key] for _, mb in records]) for key in records[0][1].consts}
        sizes = [len(next(iter(mb.params.values()))) for _, mb in records]
        params, consts, ranks = local, local_consts, 1
        starts = [sum(sizes[:j]) for j in range(len(sizes))]  # where each micro-batch's rows sit in the set
        if self._global_sort():  # every rank sorts the same global optimizer batch (docs/MATH.md sec. 6)
            order, starts = _data_order(sizes, device)
            params = {key: gather_rows(x)[0][order] for key, x in local.items()}
            consts = {key: gather_rows(x)[0][order] for key, x in local_consts.items()}
            ranks = world_size()
        leaves = {key: x.detach().requires_grad_() for key, x in params.items()}
        with torch.enable_grad():
            self._gathered = True
            try:
                loss = self._batch_loss(leaves, consts, mode)
            finally:
                self._gathered = False
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        # Each rank back-propagates its own rows only; data parallelism then averages over the ranks, so each
        # rank's share is scaled by their number (as gather_with_grad's backward does, docs/MATH.md sec. 6).
        grads = {key: (torch.zeros_like(leaves[key]) if g is None else g) * ranks for key, g in zip(leaves, grads)}
        value, nll_scale = loss.detach(), 0.0
        weight = self.args.aot_nll_weight
        if weight:  # the NLL term: the mean over every NLL token of the optimizer batch
            tokens = sum(mb.nll_mask.bool().sum() for _, mb in records)
            total = sum(mb.nll_sum() for _, mb in records)
            if self._global_sort():
                tokens, total = all_reduce_sum(tokens), all_reduce_sum(total)
            tokens = max(int(tokens), 1)
            nll = total / tokens
            self._metrics[mode]["nll"].append(nll.item())
            value, nll_scale = value + weight * nll, weight * ranks / tokens
        self._log_batch({key: x.detach() for key, x in local.items()}, local_consts, mode)
        return [_Cached(rng=rng, consts=mb.consts, values=mb.params,
                        grads={key: g[start:start + n] for key, g in grads.items()},
                        nll_scale=nll_scale, loss_share=value / len(records), index=index)
                for index, ((rng, mb), start, n) in enumerate(zip(records, starts, sizes))]

    def _second_pass(self, model, inputs, return_outputs: bool):
        """Pass 3 for one micro-batch: its forward with gradients under the replayed RNG state, and the
        surrogate whose gradient is this micro-batch's share of the optimizer batch's gradient. Its value is
        the micro-batch's share of the optimizer batch's loss (what the Trainer sums into the logged loss)."""
        cached = self._current
        _set_rng_state(cached.rng, self.accelerator.device)
        mb = self._micro_batch(model, inputs, consts=cached.consts)
        self._check_replay(mb, cached)
        surrogate = sum((cached.grads[key].to(x.dtype) * x).sum() for key, x in mb.params.items())
        if cached.nll_scale:
            surrogate = surrogate + cached.nll_scale * mb.nll_sum()
        loss = surrogate - surrogate.detach() + cached.loss_share
        return (loss, mb.outputs) if return_outputs else loss

    def _check_replay(self, mb: MicroBatch, cached: _Cached) -> None:
        """Both passes must see the same log-probs; a source of randomness the replay does not cover (or
        non-deterministic kernels) would make the gradient that of other values: say so, with the size."""
        for key, x in mb.params.items():
            before = cached.values[key]
            diff = float(((x.detach() - before).abs() / (1 + before.abs())).max()) if len(before) else 0.0
            if diff > 1e-4 and not getattr(self, "_told_replay", False):
                self._told_replay = True
                logger.warning("aot_sort_scope=optimizer_batch: the second pass computed log-probs up to %.2g "
                               "(relative) away from the first pass's (micro-batch %d, step %d); the gradient is "
                               "exact only where both passes agree: check for randomness other than torch's RNG "
                               "or non-deterministic kernels", diff, cached.index, self.state.global_step)
