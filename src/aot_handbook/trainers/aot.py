"""AOT trainers on TRL (pinned: trl 1.16; tests/unit/trainers/test_aot.py::test_trl_contract guards the hooks).

- ``AOTTrainer`` (TRL ``DPOTrainer``): paired-format data (prompt, chosen, rejected), with
  ``aot_paired`` (U = policy margins, V = reference margins) or ``aot_unpaired`` (U = chosen
  log-ratios, V = rejected log-ratios). TRL's tokenization, collator, PEFT reference and
  precomputed reference log-probs are used as they are; ``_compute_loss`` is ours, and so is the
  forward layout: each prompt once, several pairs per row, padding-free (``packing.py``), where the
  model allows it.
- ``UnpairedAOTTrainer`` (TRL ``KTOTrainer``): truly unpaired data (prompt, completion, label),
  one response per row. Each batch draws positives and negatives independently
  (``BalancedLabelSampler``), so n != m; ``aot_loss`` handles that exactly. TRL has no AOT here.

TRL's own ``aot``/``aot_unpaired`` losses sort per device and use the logistic penalty only;
these add the other penalties, soft sorts, unequal batch sizes, the global sort across
data-parallel ranks (docs/MATH.md sec. 6), the sort over the whole optimizer batch under gradient
accumulation (``optimizer_batch.py``, docs/MATH.md sec. 7) and FSD diagnostics in the logs.

Each trainer computes one micro-batch's per-sample log-probs in ``_micro_batch``, in its layout (``_pack``:
padding-free rows of several pairs or answers, one pair per row, or TRL's rows as they are), and the AOT loss
of a set of them in ``_batch_loss``; a step is one forward of both (``_compute_loss``), or, under accumulation,
the two passes of ``OptimizerBatchStep``, each pass through the same ``_micro_batch`` and so the same layout.
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
from ..packing import PackedRows, completion_logps, layout_for, pack_pairs, pack_sequences, use_segment_attention
from .baselines import mean_nll
from .distributed import _multi_process, all_reduce_sum, gather_with_grad, world_size
from .optimizer_batch import MicroBatch, OptimizerBatchStep
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
_UNPAIRED_PACKABLE_KEYS = {"input_ids", "attention_mask", "completion_mask", "label", "ref_logps"}


class _AOTObjective(OptimizerBatchStep):
    """The AOT part shared by both trainers: (u, v) -> loss, with optional global sort and logs; one step
    of a micro-batch (``_compute_loss``) or of the whole optimizer batch (``OptimizerBatchStep``)."""

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

    def _layout_plan(self, share_prompt: bool | None) -> dict:
        """The packed layout this trainer's models take (``off``: why none, then TRL's layout) and the sliding
        window a masked row must fit. ``share_prompt``: paired data's flag; None for one sequence per row."""
        pairs, padding_free = share_prompt is not None, self.args.aot_padding_free
        on = [key for key, flag in (("aot_share_prompt", share_prompt), ("aot_padding_free", padding_free)) if flag]
        if pairs and not share_prompt:  # paired data: aot_share_prompt off is TRL's two rows (the control)
            layout, off = None, "aot_share_prompt is off"
        elif not on:
            layout, off = None, "aot_padding_free is off"
        else:
            layout, off = layout_for((self.model, self.ref_model), padding_free=padding_free,
                                     share_prompt=bool(share_prompt), max_tokens=self.args.aot_row_tokens)
            if off:
                logger.warning("%s: %s (TRL's layout): %s", ", ".join(on),
                               "two rows per pair" if pairs else "one row per sequence", off)
            elif layout.segments:  # SDPA segment by segment on a row of segments, transformers' SDPA otherwise
                use_segment_attention(self.accelerator.unwrap_model(m) for m in (self.model, self.ref_model)
                                      if m is not None)
        config = self.model.config.get_text_config()
        use_window = getattr(config, "use_sliding_window", True)  # Qwen2 keeps a window it does not use
        return {"off": off, "layout": layout, "span": getattr(config, "sliding_window", None) if use_window else None}

    def _packed_logps(self, model, packed: PackedRows):
        """Per-token log-probs over the packed rows, and the model output; the mask in the form the attention of
        the model called takes (a reference may differ from the policy)."""
        attention = getattr(self.accelerator.unwrap_model(model).config, "_attn_implementation", None) or "eager"
        return completion_logps(model, self._backbone(model), packed.labels, **packed.model_kwargs(attention))

    def _log_layout(self, packed: PackedRows | None, inputs: dict, per_row: str) -> None:
        """Tokens through the backbone per forward pass, the padding share of its positions and the pairs (or
        sequences) per row, so the logs show what the layout saved."""
        if packed is not None:
            stats = packed.stats()
            tokens, positions, rows = stats["tokens"], stats["positions"], stats["rows"]
        else:  # TRL's rows
            tokens, positions, rows = int(inputs["attention_mask"].sum()), inputs["attention_mask"].numel(), \
                inputs["attention_mask"].size(0)
        units = inputs["attention_mask"].size(0) / (2 if per_row == "pairs" else 1)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["layout/tokens"].append(tokens)
        metrics["layout/padding"].append(1 - tokens / positions)
        metrics[f"layout/{per_row}_per_row"].append(units / rows)

    def _global_sort(self) -> bool:
        flag = self.args.aot_global_sort
        return _multi_process() if flag is None else (flag and _multi_process())

    def _compute_loss(self, model, inputs, return_outputs):
        if self._current is not None:  # pass 3 of an optimizer-batch step (optimizer_batch.py)
            return self._second_pass(model, inputs, return_outputs)
        mode = "train" if self.model.training else "eval"
        mb = self._micro_batch(model, inputs)
        loss = self._batch_loss(mb.params, mb.consts, mode)
        if self.args.aot_nll_weight:
            loss = loss + self.args.aot_nll_weight * self._nll(mb, mode)
        self._log_batch(mb.params, mb.consts, mode)
        return (loss, mb.outputs) if return_outputs else loss

    def _nll(self, mb: MicroBatch, mode: str) -> torch.Tensor:
        """The NLL term of one forward: the mean over its NLL tokens; with several ranks and the optimizer-batch
        scope, over every rank's tokens (each rank's share scaled by their number, as the global sort's)."""
        if self.args.aot_sort_scope == "optimizer_batch" and self._global_sort():
            tokens = max(int(all_reduce_sum(mb.nll_mask.bool().sum())), 1)
            nll, logged = mb.nll_sum() * world_size() / tokens, (all_reduce_sum(mb.nll_sum()) / tokens).item()
        else:
            nll = mean_nll(mb.nll_logps, mb.nll_mask)
            logged = nll.item()
        self._metrics[mode]["nll"].append(logged)
        return nll

    def _aot_objective(self, u: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
        if self._global_sort() and not self._gathered:
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

    With ``aot_share_prompt`` (default) the policy and the per-step reference pass run each pair's prompt once
    (``packing.py``), with ``aot_padding_free`` (default) several pairs per row and no compute on padding;
    batches or models that cannot take that layout use TRL's two rows per pair, with the same log-probs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packing = self._packing_plan()

    def _packing_plan(self) -> dict:
        """The layout this trainer packs pairs in (``off``: why it does not) and the attention window rows must
        fit: padding-free rows of several pairs (``aot_padding_free``), or one row per pair."""
        return self._layout_plan(self.args.aot_share_prompt)

    def _pack(self, inputs: dict, log: bool = True) -> PackedRows | None:
        packed = None
        if self._packing["layout"] is not None and not set(inputs) - _PACKABLE_KEYS:  # e.g. images: TRL's layout
            packed = pack_pairs(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"],
                                max_span=self._packing["span"], layout=self._packing["layout"])
            if packed is None and not getattr(self, "_told_unpacked", False):
                self._told_unpacked = True
                logger.warning("aot_share_prompt: a batch runs as TRL's two rows per pair (a pair's rows have "
                               "different prompts after truncation, an empty prompt, or a row longer than the "
                               "attention window %s); the log-probs are the same, only slower", self._packing["span"])
        if log:
            self._log_layout(packed, inputs, "pairs")
        return packed

    def _pair_logps(self, model, packed: PackedRows):
        """(chosen, rejected) summed log-probs, per-token log-probs and the model output, from packed rows."""
        per_token_logps, outputs = self._packed_logps(model, packed)
        chosen, rejected = packed.unpack(per_token_logps).sum(1).chunk(2)  # TRL's rows, TRL's sum
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
    def _ref_logps(self, model, inputs, packed: PackedRows | None):
        """The per-step reference pass, in the policy pass's layout."""
        with self._reference_pass():
            return (self._two_row_logps(model, inputs) if packed is None else self._pair_logps(model, packed))[:2]

    def _micro_batch(self, model, inputs, consts: dict | None = None) -> MicroBatch:
        """One micro-batch's per-pair policy log-probs, in this trainer's layout, and its reference log-probs
        (``consts``: those pass 1 of an optimizer-batch step computed)."""
        packed = self._pack(inputs, log=consts is None)  # (pass 3 of a two-pass step: logged in pass 1)
        if packed is not None:
            chosen_logps, rejected_logps, per_token_logps, outputs = self._pair_logps(model, packed)
            chosen_token_logps, chosen_token_mask = per_token_logps, packed.chosen_mask
        else:  # TRL's layout: rows [chosen..., rejected...]
            chosen_logps, rejected_logps, per_token_logps, outputs = self._two_row_logps(model, inputs)
            chosen_token_logps = per_token_logps.chunk(2)[0]
            chosen_token_mask = inputs["completion_mask"][:, 1:].chunk(2)[0]

        if consts is not None:
            ref_chosen_logps, ref_rejected_logps = consts["ref_chosen"], consts["ref_rejected"]
        elif self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # the reference pass: ref_model, or the PEFT model with its adapters disabled
            ref_chosen_logps, ref_rejected_logps = self._ref_logps(self.ref_model or self.model, inputs, packed)
        return MicroBatch({"chosen": chosen_logps, "rejected": rejected_logps},
                          {"ref_chosen": ref_chosen_logps, "ref_rejected": ref_rejected_logps},
                          chosen_token_logps, chosen_token_mask, outputs)

    def _batch_loss(self, params: dict, consts: dict, mode: str) -> torch.Tensor:
        """The AOT loss of a set of pairs (docs/MATH.md sec. 2): U and V from the policy and reference log-probs."""
        chosen_logps, rejected_logps = params["chosen"], params["rejected"]
        ref_chosen_logps, ref_rejected_logps = consts["ref_chosen"], consts["ref_rejected"]
        if self.args.aot_variant == "aot_paired":
            u, v = chosen_logps - rejected_logps, ref_chosen_logps - ref_rejected_logps
        else:
            u, v = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
        return self._aot_objective(u, v, mode)

    def _log_batch(self, params: dict, consts: dict, mode: str) -> None:
        chosen_logps, rejected_logps = params["chosen"], params["rejected"]
        self._log_rewards(mode, chosen_logps - consts["ref_chosen"], rejected_logps - consts["ref_rejected"],
                          chosen_logps, rejected_logps)


class _NotForAOT(logging.Filter):
    """Drops KTOTrainer's advice on desirable_weight / undesirable_weight: AOT does not use those weights
    (each batch draws its share of positives by ``aot_positive_share`` instead)."""

    def filter(self, record):
        return "desirable_weight" not in record.getMessage()


class UnpairedAOTTrainer(_AOTObjective, SharedRefCache, KTOTrainer):
    """AOT on truly unpaired data (prompt, completion, label). ``args``: ``AOTUnpairedConfig``.

    With ``aot_padding_free`` (default) the rows are packed several to a row (plain sequence packing,
    ``packing.pack_sequences``) in the policy and the per-step reference pass; TRL's reference precompute stays
    TRL's (the cache a sweep shares holds TRL's numbers)."""

    def __init__(self, *args, **kwargs):
        kto_logger, quiet = logging.getLogger(KTOTrainer.__module__), _NotForAOT()
        kto_logger.addFilter(quiet)
        try:
            super().__init__(*args, **kwargs)
        finally:
            kto_logger.removeFilter(quiet)
        self._packing = self._packing_plan()

    def _balanced(self, dataset, batch_size, seed, **window):
        return BalancedLabelSampler(dataset["label"], batch_size, self.args.aot_positive_share, seed, **window)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        window = {}  # balance the positives over the set each step sorts
        if self._two_pass():
            window = {"accumulation": self.args.gradient_accumulation_steps, "ranks": self.args.world_size}
        return self._balanced(dataset, self.args.per_device_train_batch_size, self.args.seed, **window)

    def _get_eval_sampler(self, eval_dataset):
        return self._balanced(eval_dataset, self.args.per_device_eval_batch_size, 0)

    def _packing_plan(self) -> dict:
        """The layout the rows are packed in (``aot_padding_free``: plain sequence packing, several sequences per
        row; ``off``: why not) and the attention window a masked row must fit."""
        return self._layout_plan(None)

    def _pack(self, inputs: dict, log: bool = True) -> PackedRows | None:
        packed = None
        if self._packing["layout"] is not None and not set(inputs) - _UNPAIRED_PACKABLE_KEYS:
            packed = pack_sequences(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"],
                                    max_span=self._packing["span"], layout=self._packing["layout"])
            if packed is None and not getattr(self, "_told_unpacked", False):
                self._told_unpacked = True
                logger.warning("aot_padding_free: a batch runs as TRL's rows (not prompt, completion, padding, or a "
                               "row longer than the attention window %s); the log-probs are the same, only slower",
                               self._packing["span"])
        if log:
            self._log_layout(packed, inputs, "sequences")
        return packed

    def _row_logps(self, model, inputs: dict, packed: PackedRows | None):
        """Per-token completion log-probs in TRL's rows ``(n, width - 1)`` (0 elsewhere), and the model output:
        from the packed rows, or from TRL's rows as they are. The LM head runs on completion positions only."""
        if packed is not None:
            per_token_logps, outputs = self._packed_logps(model, packed)
            return packed.unpack(per_token_logps), outputs
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        return completion_logps(model, self._backbone(model), labels, **model_kwargs)

    def _unpaired_objective(self, logratios, consts, mode):
        """The loss of a set's log-ratios: AOT of the positives over the negatives (trainers/multi.py overrides)."""
        positive = consts["positive"]
        return self._aot_objective(logratios[positive], logratios[~positive], mode)

    def _micro_batch(self, model, inputs, consts: dict | None = None) -> MicroBatch:
        """One micro-batch's per-answer policy log-probs and its reference log-probs and labels (``consts``:
        those pass 1 of an optimizer-batch step computed), the policy and the per-step reference pass in one
        layout; TRL's compute_ref_log_probs stays as it is for the precomputed (shared) cache."""
        packed = self._pack(inputs, log=consts is None)  # (pass 3 of a two-pass step: logged in pass 1)
        per_token_logps, outputs = self._row_logps(model, inputs, packed)
        logps = per_token_logps.sum(-1)
        if consts is not None:
            ref_logps = consts["ref"]
        elif self.precompute_ref_logps:
            ref_logps = inputs["ref_logps"]
        else:
            ref_model = self.ref_model or self.model
            with self._reference_pass():
                ref_logps = self._row_logps(ref_model, inputs, packed)[0].sum(-1)

        positive = torch.as_tensor(inputs["label"], dtype=torch.bool, device=logps.device)
        return MicroBatch({"logps": logps}, {"ref": ref_logps, "positive": positive},
                          per_token_logps[positive], inputs["completion_mask"][positive, 1:], outputs)

    def _batch_loss(self, params: dict, consts: dict, mode: str) -> torch.Tensor:
        return self._unpaired_objective(params["logps"] - consts["ref"], consts, mode)

    def _log_batch(self, params: dict, consts: dict, mode: str) -> None:
        logps, positive = params["logps"], consts["positive"]
        logratios = logps - consts["ref"]
        self._log_rewards(mode, logratios[positive], logratios[~positive], logps[positive], logps[~positive])
