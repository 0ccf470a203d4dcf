"""Shared prompts through the key/value cache: the prompt once, the two answers as its continuations.

A measured alternative to ``packing.py`` that needs no custom attention mask (so any attention
implementation and architecture with a cache could take it): the prompt minus its last token runs
once per pair, left-padded, into a ``DynamicCache``; the cache is repeated for the pair's two rows,
and each row continues it with ``[last prompt token, answer...]`` at the right positions, its keys and
values attending to the cached ones with gradients flowing back into the prompt's pass.

    prefix pass:   p0 .. p[P-2]                     (B rows, left-padded, no LM head)
    continuations: p[P-1] c0 .. c[C-1]              (2B rows, right-padded, past = the prefix)
                   p[P-1] r0 .. r[R-1]

Not used by the trainer: transformers' gradient checkpointing drops ``past_key_values`` in training
(``GradientCheckpointingLayer``), so it cannot run with the 7B recipes' checkpointing, and two forward
calls per step through DDP need care; BENCHMARKS.md section 1b has its measurement against the packed
row and TRL's two rows (``bench.py --only realistic``). tests/benchmarks/test_prefix.py checks its log-probs and
gradients against the two rows. Repository tooling beside ``bench.py``, not part of the installed package.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from aot_handbook.packing import completion_logps


def prefix_logps(model, backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 completion_mask: torch.Tensor):
    """(chosen, rejected) summed log-probs from TRL's DPO batch (rows ``[chosen..., rejected...]``, right-padded),
    the prompt run once through the cache. None when the batch is not in that layout with prompts of >= 2 tokens
    shared by each pair. ``backbone``: as for ``packing.completion_logps``."""
    rows, width = input_ids.shape
    if rows % 2:
        return None
    b, device = rows // 2, input_ids.device
    col = torch.arange(width, device=device)
    length, completion = attention_mask.sum(1), completion_mask.sum(1)
    prompt = length - completion
    if not (torch.equal(attention_mask.bool(), col < length[:, None])
            and torch.equal(completion_mask.bool(), (col >= prompt[:, None]) & (col < length[:, None]))):
        return None
    p = prompt[:b]
    if not torch.equal(p, prompt[b:]) or (p < 2).any() or not torch.equal(
            input_ids[:b][col < p[:, None]], input_ids[b:][col < p[:, None]]):
        return None

    # The prefix: the first P - 1 prompt tokens of each pair, left-padded.
    n = int(p.max()) - 1
    j = torch.arange(n, device=device)[None, :]
    src = j - (n - (p[:, None] - 1))
    prefix_mask = (src >= 0).long()
    prefix_ids = input_ids[:b].gather(1, src.clamp(min=0))
    cache = DynamicCache(config=backbone.config)
    model(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=src.clamp(min=0), past_key_values=cache,
          use_cache=True, logits_to_keep=1)
    pair_cache = DynamicCache(config=backbone.config)
    for i, layer in enumerate(cache.layers):  # one copy for the chosen rows, one for the rejected
        pair_cache.update(torch.cat([layer.keys, layer.keys]), torch.cat([layer.values, layer.values]), i)

    # The continuations: the last prompt token, then the answer, right-padded.
    m = int(completion.max()) + 1
    k = torch.arange(m, device=device)[None, :]
    start = prompt[:, None] - 1
    valid = k <= completion[:, None]
    ids = input_ids.gather(1, (start + k).clamp(max=width - 1)).masked_fill(~valid, 0)
    labels = ids.masked_fill(~valid | (k == 0), -100)
    mask = torch.cat([prefix_mask.repeat(2, 1), valid.long()], 1)
    per_token, _ = completion_logps(model, backbone, labels, input_ids=ids, attention_mask=mask,
                                    position_ids=start + k, past_key_values=pair_cache)
    return per_token.sum(1).chunk(2)
