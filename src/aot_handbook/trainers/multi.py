"""The multi-attribute AOT trainer (method ``aot_multi``; docs/MULTI_REWARD.md): dominance on every attribute.

Unpaired AOT on several attributes: each batch is partitioned once per attribute and the loss is
``multi_loss.multi_aot_loss`` (eq. 1 of docs/MULTI_REWARD.md); the attribute labels come from the data layer
(``data.attribute_labels``: one ``label_<name>`` column per attribute), the weights from ``AOTMultiConfig``.
The trainer counts how often an attribute is one-sided in a batch (``rewards/<attr>/empty``; its term is then 0).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

from ..data import attribute_columns
from ..diagnostics import fsd_diagnostics
from ..multi_loss import multi_aot_loss
from .aot import UnpairedAOTTrainer
from .distributed import _multi_process, gather_with_grad


def gather_batch(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of every data-parallel rank (docs/MATH.md sec. 6): x with autograd
    (``trainer.gather_with_grad``), the labels in the same order. Each rank then partitions the same
    global batch per attribute, so a rank holding no positive of some attribute is no special case."""
    x = gather_with_grad(x)
    if labels.shape[1] == 0:
        return x, labels.new_zeros((x.numel(), 0))
    return x, torch.stack([gather_with_grad(c.float().contiguous()) for c in labels.T], 1).bool()


class _AttributeCollator:
    """TRL's unpaired collator, plus ``attribute_labels`` (N, K) bool from the ``label_<name>`` columns."""

    def __init__(self, base: DataCollatorForUnpairedPreference, names: list[str]):
        self.base, self.columns = base, attribute_columns(names)

    def __call__(self, examples):
        batch = self.base(examples)
        batch["attribute_labels"] = torch.tensor([[bool(e[c]) for c in self.columns] for e in examples])
        return batch


class MultiAttributeAOTTrainer(UnpairedAOTTrainer):
    """Unpaired AOT on several attributes (``args``: ``AOTMultiConfig``): eq. 1 of docs/MULTI_REWARD.md.

    Batches are drawn by ``BalancedLabelSampler`` on the aggregate ``label`` column (every batch holds
    both of its classes; an attribute may still be one-sided in a batch: counted, contributes 0).
    With the global sort (several ranks) the log-ratios and labels of all ranks are gathered first,
    so each attribute's partition is of the global batch, as ``_aot_objective`` does for one.
    The NLL term (``aot_nll_weight``) stays on the aggregate label's positives.
    """

    DIAGNOSTICS = ("fsd_violation_share", "w1_violation", "min_quantile_gap", "loss", "positive_share")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attribute_names = list(self.args.aot_attributes)
        missing = [c for c in attribute_columns(self.attribute_names) if c not in self.train_dataset.column_names]
        if missing:
            raise ValueError(f"aot_attributes: the train data has no column(s) {missing} (dataset_mixture "
                             "'attributes' must list every weighted attribute)")
        self.data_collator = _AttributeCollator(self.data_collator, self.attribute_names)
        self.attribute_counts = defaultdict(lambda: {"batches": 0, "empty": 0})
        self.attribute_last = {}

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *attribute_columns(self.args.aot_attributes)]

    def _micro_batch(self, model, inputs, consts=None):
        labels = inputs.pop("attribute_labels")  # read by _unpaired_objective below
        mb = super()._micro_batch(model, inputs, consts)
        mb.consts["attribute_labels"] = labels.to(mb.consts["positive"].device)
        return mb

    def _unpaired_objective(self, logratios, consts, mode):
        labels = consts["attribute_labels"]
        if self._global_sort() and not self._gathered:  # (an optimizer-batch step gathered them already)
            logratios, labels = gather_batch(logratios, labels)
        if not torch.isfinite(logratios).all():
            raise FloatingPointError(f"non-finite log-ratios at global step {self.state.global_step}: "
                                     "lower the learning rate or check the data")
        weights = [self.args.aot_attributes[n] for n in self.attribute_names]
        loss, terms = multi_aot_loss(
            logratios, labels, weights, beta=self.args.beta, penalty=self.args.aot_penalty,
            sort=self.args.aot_sort, label_smoothing=getattr(self.args, "label_smoothing", 0.0),
            **self.args.sort_options)
        local = not self._global_sort() and _multi_process()  # each rank's own numbers: averaged over ranks
        for k, (name, term) in enumerate(zip(self.attribute_names, terms)):
            counts = self.attribute_counts[f"{mode}/{name}"]
            counts["batches"] += 1
            counts["empty"] += term is None
            diag = dict.fromkeys(self.DIAGNOSTICS, math.nan)  # the same keys on every rank (collectives)
            if term is not None:
                pos = labels[:, k]
                diag |= {**fsd_diagnostics(logratios[pos], logratios[~pos]), "loss": term.item(),
                         "positive_share": pos.float().mean().item()}
            diag["empty"] = float(term is None)
            if local:
                diag = {key: self.accelerator.gather_for_metrics(torch.tensor([val], device=loss.device))
                        .nanmean().item() for key, val in diag.items()}
            for key, value in diag.items():
                if math.isfinite(value):
                    self._metrics[mode][f"rewards/{name}/{key}"].append(value)
            if term is not None and mode == "train":
                self.attribute_last[name] = diag
        self._metrics[mode]["aot/loss"].append(loss.item())
        return loss

    def attribute_summary(self) -> dict:
        """Per attribute: its weight, the training batches and how many had no positive or no negative
        (``empty``), and the FSD diagnostics of the last training batch where its term was defined."""
        out = {}
        for name in self.attribute_names:
            counts = self.attribute_counts[f"train/{name}"]
            out[name] = {"weight": self.args.aot_attributes[name], **counts,
                         "empty_share": counts["empty"] / max(counts["batches"], 1),
                         "last_batch": self.attribute_last.get(name)}
        return out
