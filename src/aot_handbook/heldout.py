"""Held-out statistics of a policy against its reference: sequence log-probs, rewards, margins.

These feed the end-of-run summary, the evaluation's held-out scores and the paper's quantile plots (Fig. 1a:
chosen vs rejected rewards; Fig. 1b: policy vs reference chosen-to-rejected margins). :func:`run_statistics`
loads a run folder and its reference; :func:`heldout_rows` finds a run's held-out pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trl.data_utils import _tokenize, common_prefix_length

from .data import DatasetMixture, load_mixture
from .diagnostics import fsd_diagnostics
from .generation import load_model_and_tokenizer
from .io import read_jsonl
from .model_utils import ensure_pad_token
from .run_folder import RunInfo
from .tasks import task_of


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


def run_statistics(run_path: str, rows: list[dict], *, beta: float | None = None, batch_size: int = 64) -> dict:
    """``paired_statistics`` of a run folder against its reference: the adapters disabled for a LoRA
    run, else the model its recipe started from (``model_name_or_path``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = RunInfo.from_path(run_path)
    if run.method == "base":
        raise ValueError(f"{run_path}: not a run folder (no recipe.json); Fig. 1 compares a run with its reference")
    beta = beta if beta is not None else float(run.recipe.get("beta", 0.1))
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(run.path))
    if run.adapter:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run.model), run.adapter)
        reference = policy.disable_adapter
    else:
        policy = AutoModelForCausalLM.from_pretrained(run.model)
        reference = load_model_and_tokenizer(run.reference, None, dtype="float32")[0] if run.reference else None
        if reference is None:
            raise ValueError(f"{run_path}: recipe.json names no model_name_or_path to use as the reference")
    return paired_statistics(policy, reference, tokenizer, rows, beta=beta, batch_size=batch_size)


def heldout_rows(run_path: str, data: str | None = None, *, max_rows: int = 512) -> list[dict]:
    """Held-out paired rows (prompt, chosen, rejected): ``data`` (a .json/.jsonl file), else the held-out pairs
    of the run's task (:mod:`aot_handbook.tasks`), else the test split of the run's recipe dataset mixture."""
    if data:
        rows = json.loads(Path(data).read_text()) if data.endswith(".json") else read_jsonl(data)
    else:
        run = RunInfo.from_path(run_path)
        task = task_of(run)
        if task is not None:
            rows = task.heldout_pairs(run.recipe)
        else:
            mixture = load_mixture(DatasetMixture.from_dict(run.recipe["dataset_mixture"], source=run.recipe_path),
                                   target="paired")
            if "test" not in mixture:
                raise ValueError(f"{run_path}: the recipe's dataset_mixture has no test split; pass --data FILE")
            rows = [mixture["test"][i] for i in range(min(max_rows, len(mixture["test"])))]
    missing = {"prompt", "chosen", "rejected"} - set(rows[0]) if rows else {"rows"}
    if missing:
        raise ValueError(f"{data or run_path}: held-out data needs columns prompt, chosen, rejected; "
                         f"missing {sorted(missing)}")
    return rows[:max_rows]


def heldout_scores(run_path: str, rows: list[dict], *, prefix: str) -> dict:
    """Result scores from :func:`run_statistics` on ``rows`` (named ``<prefix><score>``): reward accuracy
    (chosen reward > rejected reward, rewards = beta * log-ratio), the FSD violation shares of chosen over
    rejected rewards and of policy over reference chosen-rejected margins (percent), and the smallest
    quantile gap of each pair (raw units)."""
    stats = run_statistics(run_path, rows)
    return {f"{prefix}reward_accuracy": 100.0 * stats["reward_accuracy"],
            f"{prefix}rewards_fsd_violation": 100.0 * stats["rewards_fsd"]["fsd_violation_share"],
            f"{prefix}margins_fsd_violation": 100.0 * stats["margins_fsd"]["fsd_violation_share"],
            f"{prefix}margin_accuracy": 100.0 * stats["policy_margin_accuracy"],
            # min over quantile levels of Q_chosen - Q_rejected (rewards) and Q_policy - Q_reference (margins):
            # > 0 iff dominance holds, and how much room it holds with (raw units, not percent)
            f"{prefix}rewards_min_gap": stats["rewards_fsd"]["min_quantile_gap"],
            f"{prefix}margins_min_gap": stats["margins_fsd"]["min_quantile_gap"]}
