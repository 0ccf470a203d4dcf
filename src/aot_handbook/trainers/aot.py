"""AOT trainers on TRL (pinned: trl 1.16; tests/test_trainer.py::test_trl_contract guards the hooks).

- ``AOTTrainer`` (TRL ``DPOTrainer``): paired-format data (prompt, chosen, rejected), with
  ``aot_paired`` (U = policy margins, V = reference margins) or ``aot_unpaired`` (U = chosen
  log-ratios, V = rejected log-ratios). TRL's tokenization, collator, PEFT reference and
  precomputed reference log-probs are used as they are; ``_compute_loss`` is ours, and so is the
  forward layout, one row per pair (``packing.py``), where the model allows it.
- ``UnpairedAOTTrainer`` (TRL ``KTOTrainer``): truly unpaired data (prompt, completion, label),
  one response per row. Each batch draws positives and negatives independently
  (``BalancedLabelSampler``), so n != m; ``aot_loss`` handles that exactly. TRL has no AOT here.

TRL's own ``aot``/``aot_unpaired`` losses sort per device and use the logistic penalty only;
these add the other penalties, soft sorts, unequal batch sizes, the global sort across
data-parallel ranks (docs/MATH.md sec. 6) and FSD diagnostics in the logs.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from accelerate.utils import is_peft_model
from trl import DPOTrainer, KTOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from ..diagnostics import fsd_diagnostics
from ..loss import aot_loss
from ..packing import PackedPairs, completion_logps, pack_pairs, unsupported_reason
from .baselines import mean_nll
from .distributed import _multi_process, gather_with_grad
from .reference import SharedRefCache
from .sampler import BalancedLabelSampler

logger = logging.getLogger("aot_handbook.trainers")

_UV_NAMES = {  # docs/MATH.md sec. 2
    "aot_paired": ("U = policy chosen-rejected margins", "V = reference chosen-rejected margins"),
    "aot_unpaired": ("U = chosen log-ratios", "V = rejected log-ratios"),
}
# Batch keys that are not model inputs (TRL's DPO and KTO collators).
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", "label", "ref_logps"}
_PACKABLE_KEYS = {"input_ids", "attention_mask", "completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


class _AOTObjective:
    """The AOT part shared by both trainers: (u, v) -> loss, with optional global sort and logs."""

    def _backbone(self, model):
        """The module TRL's fused LM head runs before the head (``completion_logps`` hooks it)."""
        unwrapped = self.accelerator.unwrap_model(model)
        return (unwrapped.get_base_model() if is_peft_model(unwrapped) else unwrapped).base_model

    @contextlib.contextmanager
    def _reference_pass(self):
        """TRL's reference contexts (``compute_ref_log_probs`` of DPO and KTO): no grad, no checkpointing,
        the PEFT adapters off when the reference is the policy without them."""
        adapters = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapters = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              adapters, self.accelerator.autocast()):
            yield

    def _global_sort(self) -> bool:
        flag = self.args.aot_global_sort
        return _multi_process() if flag is None else (flag and _multi_process())

    def _aot_objective(self, u: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
        if self._global_sort():
            u, v = gather_with_grad(u), gather_with_grad(v)
        if u.numel() == 0 or v.numel() == 0:
            raise ValueError(
                f"AOT needs both sides in every batch, got {u.numel()} U and {v.numel()} V samples "
                "(unpaired data: check both labels are present and the batch size is >= 2)"
            )
        names = _UV_NAMES[self.args.aot_variant]
        for name, x in zip(names, (u, v)):
            if not torch.isfinite(x).all():
                raise FloatingPointError(
                    f"non-finite {name} ({int((~torch.isfinite(x)).sum())} of {x.numel()} values) at global step "
                    f"{self.state.global_step}: the log-probs overflowed; lower the learning rate or check the data"
                )
        loss = aot_loss(
            u,
            v,
            beta=self.args.beta,
            penalty=self.args.aot_penalty,
            sort=self.args.aot_sort,
            label_smoothing=getattr(self.args, "label_smoothing", 0.0),
            **self.args.sort_options,
        )
        # Logged diagnostics describe the set that was sorted: the global batch when gathered,
        # else the mean over ranks of each rank's own.
        diag = {**fsd_diagnostics(u, v), "loss": loss.item()}
        if not self._global_sort() and _multi_process():
            diag = {k: self.accelerator.gather_for_metrics(torch.tensor(val, device=u.device)).mean().item()
                    for k, val in diag.items()}
        for key, value in diag.items():
            self._metrics[mode][f"aot/{key}"].append(value)
        return loss

    def _log_rewards(self, mode, chosen_logratios, rejected_logratios, chosen_logps, rejected_logps):
        beta = self.args.beta
        # Ranks may hold different numbers of each label (unpaired data): a variable-length gather.
        gather = (lambda x: gather_with_grad(x.detach())) if _multi_process() else (lambda x: x.detach())
        chosen_r, rejected_r = gather(beta * chosen_logratios.detach()), gather(beta * rejected_logratios.detach())
        self._metrics[mode]["rewards/chosen"].append(chosen_r.mean().item())
        self._metrics[mode]["rewards/rejected"].append(rejected_r.mean().item())
        self._metrics[mode]["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        self._metrics[mode]["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        if not isinstance(self, KTOTrainer):  # paired rows: per-pair accuracy and margin
            self._metrics[mode]["rewards/accuracies"].append((chosen_r > rejected_r).float().mean().item())
            self._metrics[mode]["rewards/margins"].append((chosen_r - rejected_r).mean().item())
        elif len(chosen_r) and len(rejected_r):
            # Unpaired rows: positive i and negative i were drawn independently, so pairwise accuracies or
            # margins would mean nothing. Per side instead: the gap between the quantiles of the positive and
            # the negative rewards (what AOT's dominance is about; > 0 where positives lead).
            levels = torch.tensor([0.25, 0.5, 0.75], device=chosen_r.device)
            gaps = torch.quantile(chosen_r.float(), levels) - torch.quantile(rejected_r.float(), levels)
            for level, gap in zip((25, 50, 75), gaps.tolist()):
                self._metrics[mode][f"rewards/quantile_gap_q{level}"].append(gap)


class AOTTrainer(_AOTObjective, SharedRefCache, DPOTrainer):
    """AOT on paired-format data. ``args``: ``AOTConfig``.

    With ``aot_share_prompt`` (default) the policy and reference passes run one row per pair,
    the prompt computed once (``packing.py``); batches or models that cannot take that layout
    use TRL's two rows per pair, with the same log-probs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packing = self._packing_plan()

    def _packing_plan(self) -> dict:
        """Whether this trainer packs pairs (``off``: why not) and the attention window rows must fit."""
        off = None if self.args.aot_share_prompt else "aot_share_prompt is off"
        for model in (self.model, self.ref_model):
            if off is None and model is not None:
                off = unsupported_reason(model)
        if self.args.aot_share_prompt and off:
            logger.warning("aot_share_prompt: two rows per pair (TRL's layout): %s", off)
        config = self.model.config.get_text_config()
        use_window = getattr(config, "use_sliding_window", True)  # Qwen2 keeps a window it does not use
        return {"off": off, "span": getattr(config, "sliding_window", None) if use_window else None}

    def _pack(self, inputs: dict) -> PackedPairs | None:
        if self._packing["off"] or set(inputs) - _PACKABLE_KEYS:  # e.g. images: TRL's layout
            return None
        packed = pack_pairs(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"],
                            max_span=self._packing["span"])
        if packed is None and not getattr(self, "_told_unpacked", False):
            self._told_unpacked = True
            logger.warning("aot_share_prompt: a batch runs as TRL's two rows per pair (a pair's rows have different "
                           "prompts after truncation, an empty prompt, or a row longer than the attention window "
                           "%s); the log-probs are the same, only slower", self._packing["span"])
        return packed

    def _pair_logps(self, model, packed: PackedPairs):
        """(chosen, rejected) summed log-probs, per-token log-probs and the model output, from one row per pair."""
        # The mask's form follows the attention of the model called (a reference may differ from the policy).
        attention = getattr(self.accelerator.unwrap_model(model).config, "_attn_implementation", None) or "eager"
        per_token_logps, outputs = completion_logps(model, self._backbone(model), packed.labels,
                                                    **packed.model_kwargs(attention))
        chosen = (per_token_logps * packed.chosen_mask).sum(1)
        rejected = (per_token_logps * packed.rejected_mask).sum(1)
        return chosen, rejected, per_token_logps, outputs

    def _two_row_logps(self, model, inputs):
        """(chosen, rejected) summed log-probs, per-token log-probs and the model output, in TRL's two rows
        per pair."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        per_token_logps, outputs = completion_logps(model, self._backbone(model), labels, **model_kwargs)
        chosen, rejected = per_token_logps.sum(dim=1).chunk(2, dim=0)
        return chosen, rejected, per_token_logps, outputs

    # TRL's compute_ref_log_probs stays as it is: TRL calls it only to precompute the reference log-probs
    # into the cache every method of a sweep shares (SharedRefCache), so that cache holds exactly TRL's
    # two-row numbers whichever run wrote it (packed ones differ in the last float bits); it runs once a sweep.
    def _ref_logps(self, model, inputs, packed: PackedPairs | None):
        """The per-step reference pass, in the policy pass's layout."""
        with self._reference_pass():
            return (self._two_row_logps(model, inputs) if packed is None else self._pair_logps(model, packed))[:2]

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        packed = self._pack(inputs)
        if packed is not None:
            chosen_logps, rejected_logps, per_token_logps, outputs = self._pair_logps(model, packed)
            chosen_token_logps, chosen_token_mask = per_token_logps, packed.chosen_mask
        else:  # TRL's layout: rows [chosen..., rejected...]
            chosen_logps, rejected_logps, per_token_logps, outputs = self._two_row_logps(model, inputs)
            chosen_token_logps = per_token_logps.chunk(2)[0]
            chosen_token_mask = inputs["completion_mask"][:, 1:].chunk(2)[0]

        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # the reference pass: ref_model, or the PEFT model with its adapters disabled
            ref_chosen_logps, ref_rejected_logps = self._ref_logps(self.ref_model or self.model, inputs, packed)

        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        if self.args.aot_variant == "aot_paired":
            u, v = chosen_logps - rejected_logps, ref_chosen_logps - ref_rejected_logps
        else:
            u, v = chosen_logratios, rejected_logratios
        loss = self._aot_objective(u, v, mode)
        if self.args.aot_nll_weight:
            nll = mean_nll(chosen_token_logps, chosen_token_mask)
            self._metrics[mode]["nll"].append(nll.item())
            loss = loss + self.args.aot_nll_weight * nll
        self._log_rewards(mode, chosen_logratios, rejected_logratios, chosen_logps, rejected_logps)
        return (loss, outputs) if return_outputs else loss


class _NotForAOT(logging.Filter):
    """Drops KTOTrainer's advice on desirable_weight / undesirable_weight: AOT does not use those weights
    (each batch draws its share of positives by ``aot_positive_share`` instead)."""

    def filter(self, record):
        return "desirable_weight" not in record.getMessage()


class UnpairedAOTTrainer(_AOTObjective, SharedRefCache, KTOTrainer):
    """AOT on truly unpaired data (prompt, completion, label). ``args``: ``AOTUnpairedConfig``."""

    def __init__(self, *args, **kwargs):
        kto_logger, quiet = logging.getLogger(KTOTrainer.__module__), _NotForAOT()
        kto_logger.addFilter(quiet)
        try:
            super().__init__(*args, **kwargs)
        finally:
            kto_logger.removeFilter(quiet)

    def _balanced(self, dataset, batch_size, seed):
        return BalancedLabelSampler(dataset["label"], batch_size, self.args.aot_positive_share, seed)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return self._balanced(dataset, self.args.per_device_train_batch_size, self.args.seed)

    def _get_eval_sampler(self, eval_dataset):
        return self._balanced(eval_dataset, self.args.per_device_eval_batch_size, 0)

    def _unpaired_objective(self, logratios, positive, mode):
        """The loss of the batch's log-ratios: AOT of the positives over the negatives (multi_reward overrides)."""
        return self._aot_objective(logratios[positive], logratios[~positive], mode)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        # The LM head on completion positions only (packing.completion_logps), for the policy and the per-step
        # reference pass; TRL's compute_ref_log_probs stays as it is for the precomputed (shared) cache.
        per_token_logps, outputs = completion_logps(model, self._backbone(model), labels, **model_kwargs)
        logps = per_token_logps.sum(-1)
        if self.precompute_ref_logps:
            ref_logps = inputs["ref_logps"]
        else:
            ref_model = self.ref_model or self.model
            with self._reference_pass():
                ref_logps = completion_logps(ref_model, self._backbone(ref_model), labels, **model_kwargs)[0].sum(-1)

        positive = torch.as_tensor(inputs["label"], dtype=torch.bool, device=logps.device)
        logratios = logps - ref_logps
        loss = self._unpaired_objective(logratios, positive, mode)
        if self.args.aot_nll_weight:
            nll = mean_nll(per_token_logps[positive], inputs["completion_mask"][positive, 1:])
            self._metrics[mode]["nll"].append(nll.item())
            loss = loss + self.args.aot_nll_weight * nll
        self._log_rewards(mode, logratios[positive], logratios[~positive], logps[positive], logps[~positive])
        return (loss, outputs) if return_outputs else loss
