"""Shared-prompt packing: one row per preference pair, its prompt computed once (a gap in TRL).

TRL's DPO collator sends every pair as two rows, ``prompt + chosen`` and ``prompt + rejected``,
so the prompt goes through the model twice. With a causal model the prompt's hidden states do
not depend on what follows, so one row per pair gives the same log-probs with fewer tokens:

    row:       p0 p1 .. p[P-1] | c0 .. c[C-1] | p[P-1]' r0 .. r[R-1] | pad
    positions: 0  1  .. P-1    | P  .. P+C-1  | P-1     P  .. P+R-1  | 0
    attends:   the prompt      | prompt, own  | prompt (but p[P-1]), own

``p[P-1]'`` is a copy of the last prompt token (same token, same position, same keys), so
``r0`` is predicted by the position just before it and the usual shifted labels (TRL's fused
LM head) score both completions. A query sees a key when the key's position is not later and
the key is in the shared prompt or in the query's own branch. Positions and this mask are passed
to the model (``position_ids`` and a 4-D ``attention_mask``), which transformers uses as given
for the eager and SDPA attentions.

Tokens per pair: ``P + C + 1 + R`` instead of twice the padded ``P + max(C, R)``. The log-probs
equal the two-row forward's up to float rounding (tests/test_packing.py, per architecture).

``completion_logps`` (both layouts) runs the LM head only where a label is scored: TRL's fused head
scores every position of every row off CUDA/XPU (prompt, padding and all; on Triton devices it keeps
only the scored ones), and with a 32k vocabulary the head is most of a small model's work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Architectures whose forward takes position_ids and a custom 4-D mask as given, checked against
# the two-row forward in tests/test_packing.py. Others use TRL's layout.
# (GPT-2, for one, is not: its packed log-probs differ; see the test.)
MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "phi", "phi3", "granite", "olmo2",
               "starcoder2", "cohere")
ATTENTIONS = ("eager", "sdpa")
_SHARED, _CHOSEN, _REJECTED, _PAD = 0, 1, 2, 3


@dataclass
class PackedPairs:
    input_ids: torch.Tensor  # (B, L)
    visible: torch.Tensor  # (B, L, L) bool: query i sees key j
    position_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L): completion tokens, -100 elsewhere
    chosen_mask: torch.Tensor  # (B, L - 1) bool, over the shifted per-token log-probs
    rejected_mask: torch.Tensor  # (B, L - 1) bool

    def model_kwargs(self, attention: str) -> dict:
        """Model inputs; SDPA takes the boolean mask, eager attention adds it (0 or the float32 minimum)."""
        mask = self.visible[:, None]
        if attention != "sdpa":
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        return {"input_ids": self.input_ids, "attention_mask": mask, "position_ids": self.position_ids}


def unsupported_reason(model) -> str | None:
    """Why this model cannot take packed pairs (None: it can). ``model``: the (PEFT-wrapped) model."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} is not among the checked ones {list(MODEL_TYPES)}"
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    if attention not in ATTENTIONS:
        return f"attention {attention!r} does not take a custom 4-D mask (use one of {list(ATTENTIONS)})"
    if any(getattr(c, "is_prompt_learning", False) for c in getattr(model, "peft_config", {}).values()):
        return "prompt-learning PEFT prepends virtual tokens to every row"
    return None


def completion_logps(model, backbone, labels: torch.Tensor, **inputs):
    """Per-token log-probs ``(B, L - 1)`` of the next-token ``labels`` (-100: not scored, 0 there), and the output.

    ``model`` is what the trainer calls (DDP/PEFT-wrapped), ``backbone`` the module TRL's fused LM head runs
    first (``base_model`` of the causal LM that ``add_fused_lm_head`` patched). A forward hook on it keeps the
    hidden states of the scored positions only, as one row, and TRL's head scores them with the labels
    pre-shifted (``shift_labels``), with all its handling of temperature, logit scaling, soft-capping and
    autocast. The other positions' logits are never computed.
    """
    scored = labels[:, 1:] != -100
    length = labels.size(1)

    def keep_scored(module, args, output):  # the last `length` positions: prompt-learning PEFT prepends tokens
        output.last_hidden_state = output.last_hidden_state[:, -length:][:, :-1][scored][None]
        return output

    handle = backbone.register_forward_hook(keep_scored)
    try:
        outputs = model(**inputs, shift_labels=labels[:, 1:][scored][None], use_cache=False, fused_lm_head=True)
    finally:
        handle.remove()
    outputs.log_probs = outputs.log_probs.new_zeros(scored.shape).masked_scatter(scored, outputs.log_probs[0])
    return outputs.log_probs, outputs


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
               max_span: int | None = None) -> PackedPairs | None:
    """TRL's DPO batch (rows ``[chosen..., rejected...]``, right-padded) as one row per pair.

    None when the batch does not have that shape: a pair whose two rows differ in their prompt
    (``truncation_mode="keep_end"`` can cut them differently), an empty prompt, or (``max_span``,
    a sliding attention window) a row longer than the window the mask would silently widen.
    """
    rows, width = input_ids.shape
    if rows % 2:
        return None
    b, device = rows // 2, input_ids.device
    col = torch.arange(width, device=device)
    length = attention_mask.sum(1)
    completion = completion_mask.sum(1)
    prompt = length - completion
    # Each row must be prompt, then completion, then padding (TRL's collator).
    if not (torch.equal(attention_mask.bool(), col < length[:, None])
            and torch.equal(completion_mask.bool(), (col >= prompt[:, None]) & (col < length[:, None]))):
        return None
    p = prompt[:b]
    if not torch.equal(p, prompt[b:]) or (p < 1).any():
        return None
    in_prompt = col < p[:, None]
    if not torch.equal(input_ids[:b][in_prompt], input_ids[b:][in_prompt]):
        return None

    if max_span is not None and int(length.max()) > max_span:
        return None
    n_chosen = length[:b]  # prompt + chosen
    n_total = n_chosen + 1 + completion[b:]  # + copy of the last prompt token + rejected
    j = torch.arange(int(n_total.max()), device=device)[None, :]
    first, copy = j < n_chosen[:, None], j == n_chosen[:, None]
    second = (j > n_chosen[:, None]) & (j < n_total[:, None])
    p_ = p[:, None]
    chosen_rows, rejected_rows = torch.arange(b, device=device)[:, None], torch.arange(b, rows, device=device)[:, None]
    src_row = torch.where(first, chosen_rows, rejected_rows)
    src_col = torch.where(first, j, torch.where(copy, p_ - 1, p_ + j - n_chosen[:, None] - 1))
    src_col = torch.where(first | copy | second, src_col, 0)
    tokens = input_ids[src_row, src_col]
    branch = torch.full_like(src_col, _PAD)
    branch = torch.where(first & (j < p_ - 1), _SHARED, torch.where(first, _CHOSEN, branch))
    branch = torch.where(copy | second, _REJECTED, branch)

    pos_q, pos_k = src_col[:, :, None], src_col[:, None, :]
    br_q, br_k = branch[:, :, None], branch[:, None, :]
    visible = (pos_k <= pos_q) & ((br_k == _SHARED) | (br_k == br_q))

    scored = (first & (j >= p_)) | second  # completion tokens; not the prompt, its copy, or padding
    labels = tokens.masked_fill(~scored, -100)
    target = scored[:, 1:]
    return PackedPairs(
        input_ids=tokens,  # padding repeats the row's first token; it is never scored or seen
        visible=visible,
        position_ids=src_col,
        labels=labels,
        chosen_mask=target & (branch[:, 1:] == _CHOSEN),
        rejected_mask=target & (branch[:, 1:] == _REJECTED),
    )
