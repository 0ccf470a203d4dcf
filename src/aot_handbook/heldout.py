"""Held-out statistics of a policy against its reference: sequence log-probs, rewards, margins.

These feed the end-of-run summary and the paper's quantile plots (Fig. 1a: chosen vs rejected
rewards; Fig. 1b: policy vs reference chosen-to-rejected margins).
"""

from __future__ import annotations

import torch
from trl.data_utils import _tokenize, common_prefix_length

from .diagnostics import fsd_diagnostics


def _tokenize_like_trl(tokenizer, prompt, completion) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the prompt length, exactly as TRL's DPO/KTO tokenization
    builds them (special tokens, chat template, EOS appended to plain-text completions)."""
    if isinstance(prompt, list):  # conversational
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True)["input_ids"]
        ids = _tokenize(tokenizer, prompt + completion)["input_ids"]
    else:
        prompt_ids = _tokenize(tokenizer, prompt)["input_ids"]
        ids = _tokenize(tokenizer, prompt + completion + (tokenizer.eos_token or ""))["input_ids"]
    return ids, common_prefix_length(prompt_ids, ids)


@torch.no_grad()
def completion_logps(model, tokenizer, prompts, completions, *, batch_size: int = 64) -> torch.Tensor:
    """``log pi(y|x)`` summed over completion tokens, prompt masked out (TRL's tokenization)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = []
        for prompt, completion in zip(prompts[start : start + batch_size], completions[start : start + batch_size]):
            rows.append(_tokenize_like_trl(tokenizer, prompt, completion))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        completion = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, (ids, n_prompt) in enumerate(rows):  # right padding: positions stay 0..len-1
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            completion[i, n_prompt : len(ids)] = True
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None].to(device)).squeeze(-1)
        out.append((token_logps * completion[:, 1:].to(device)).sum(-1).cpu())
    return torch.cat(out).double()


def paired_statistics(policy, reference, tokenizer, rows, *, beta: float, batch_size: int = 64) -> dict:
    """On paired rows (prompt, chosen, rejected): the quantities of the paper's Fig. 1a and 1b.

    ``reference`` may be a callable returning a context manager (e.g. a PEFT model's
    ``disable_adapter``), in which case the policy under that context is the reference.
    """
    prompts = [r["prompt"] for r in rows]

    def logps(model, key):
        return completion_logps(model, tokenizer, prompts, [r[key] for r in rows], batch_size=batch_size)

    pol_c, pol_r = logps(policy, "chosen"), logps(policy, "rejected")
    if callable(reference) and not isinstance(reference, torch.nn.Module):
        with reference():
            ref_c, ref_r = logps(policy, "chosen"), logps(policy, "rejected")
    else:
        ref_c, ref_r = logps(reference, "chosen"), logps(reference, "rejected")
    chosen_rewards, rejected_rewards = beta * (pol_c - ref_c), beta * (pol_r - ref_r)
    policy_margins, reference_margins = pol_c - pol_r, ref_c - ref_r
    return {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "policy_margins": policy_margins,
        "reference_margins": reference_margins,
        "reward_accuracy": float((chosen_rewards > rejected_rewards).double().mean()),
        "rewards_fsd": fsd_diagnostics(chosen_rewards, rejected_rewards),
        "margins_fsd": fsd_diagnostics(policy_margins, reference_margins),
        "policy_margin_accuracy": float((policy_margins > 0).double().mean()),
        "reference_margin_accuracy": float((reference_margins > 0).double().mean()),
    }
