"""TRL's DPO (dpo, ipo) and KTO trainers with the shared reference cache, and the NLL term (``mean_nll``) they
and the AOT trainers add to their losses."""

from __future__ import annotations

import torch
from trl import DPOTrainer, KTOTrainer

from .reference import SharedRefCache


def mean_nll(per_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per completion token (TRL's DPO "sft" term), per rank.

    With several ranks DDP averages the per-rank means, as TRL's "sft" term does, so unlike
    the AOT term it is not the single-process value when ranks hold different token counts.
    """
    mask = mask.bool()
    if not mask.any():  # a rank without positives this step (possible with the global sort)
        return per_token_logps.sum() * 0.0
    return -per_token_logps[mask].mean()


class HandbookDPOTrainer(SharedRefCache, DPOTrainer):
    """TRL's DPOTrainer (dpo, ipo) sharing the reference log-prob cache with the AOT runs."""


class HandbookKTOTrainer(SharedRefCache, KTOTrainer):
    """TRL's KTOTrainer sharing the reference log-prob cache, plus ``nll_weight`` (``HandbookKTOConfig``).

    The NLL term reuses the per-token log-probs of TRL's own forward pass over the batch (read with a
    forward hook on the module TRL gave the fused LM head), so it costs no extra forward.

    TRL's KTO reads the training rows in file order (``train_sampling_strategy="sequential"``: each
    row's KL completion is its neighbour's), so its ``seed`` changed nothing without dropout. Here the
    rows are shuffled with the seed first, then TRL pairs neighbours in that order as usual.
    """

    def __init__(self, *args, train_dataset=None, **kwargs):
        config = kwargs.get("args")
        if train_dataset is not None and config is not None and config.train_sampling_strategy == "sequential":
            train_dataset = train_dataset.shuffle(seed=config.seed)
        super().__init__(*args, train_dataset=train_dataset, **kwargs)

    def _compute_loss(self, model, inputs, return_outputs):
        weight = getattr(self.args, "nll_weight", 0.0)
        if not weight:
            return super()._compute_loss(model, inputs, return_outputs)
        from peft import PeftModel

        fused = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        ids, seen = inputs["input_ids"], []

        def keep(module, args, kwargs, output):  # the batch's forward (not the KL or reference pass)
            x = kwargs.get("input_ids")
            if not seen and x is not None and x.data_ptr() == ids.data_ptr() and x.shape == ids.shape:
                seen.append(output)

        handle = fused.register_forward_hook(keep, with_kwargs=True)
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError("nll_weight: TRL's KTO forward over the batch was not seen (trl changed?)")
        per_token_logps = seen[0].log_probs[:, -(ids.size(1) - 1):]
        positive = torch.as_tensor(inputs["label"], dtype=torch.bool, device=per_token_logps.device)
        nll = mean_nll(per_token_logps[positive], inputs["completion_mask"][positive, 1:])
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["nll"].append(nll.item())
        if return_outputs:
            loss, outputs = result
            return loss + weight * nll, outputs
        return result + weight * nll
