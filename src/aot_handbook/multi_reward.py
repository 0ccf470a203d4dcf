"""Multi-attribute unpaired AOT (issue 19; docs/MULTI_REWARD.md): dominance on every attribute.

Each answer of a batch carries one label per attribute k (helpfulness, correctness, ..., or the
sum and the format of the tiny multi task). The batch is partitioned once per attribute: U_k are
the implicit rewards of the answers positive on k, V_k those of the answers negative on k, and

    L = sum_k w_k * OT_h(mu_{U_k}, mu_{V_k})                      (docs/MULTI_REWARD.md, eq. 1)

where OT_h is the exact one-dimensional transport cost of single-attribute AOT
(``loss.aot_loss``, docs/MATH.md sec. 3): n_k != m_k is handled exactly, with the same penalties
and sorts. An attribute whose batch holds no positive or no negative contributes 0 (its term is
undefined, not small); the trainer counts how often that happens (``rewards/<attr>/empty``). With
one attribute of weight 1 this is ``aot_loss`` itself.

Here: the loss (pure tensors), the attribute labels of the data (``attribute_labels``, used by
``data.load_mixture``), the recipe's weights (``check_weights``), and the trainer subclass.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

from .diagnostics import fsd_diagnostics
from .loss import aot_loss
from .trainers import UnpairedAOTTrainer, gather_with_grad
from .trainers.distributed import _multi_process

LABEL_PREFIX = "label_"  # training rows carry one bool column per attribute: label_<attribute>
DIRECTIONS = ("higher", "lower")


# ---------------------------------------------------------------- the loss


def multi_aot_loss(x: torch.Tensor, labels: torch.Tensor, weights, **aot_kwargs) -> tuple[torch.Tensor, list]:
    """``sum_k w_k OT_h(mu_{U_k}, mu_{V_k})`` with ``U_k = x[labels[:, k]]``, ``V_k = x[~labels[:, k]]``.

    Args:
        x: (N,) the batch's log-ratios (``aot_loss`` scales them by ``beta`` inside ``h``).
        labels: (N, K) bool, one column per attribute.
        weights: K non-negative attribute weights (not renormalized).
        **aot_kwargs: ``aot_loss``'s options (beta, penalty, sort, label_smoothing, sort options).

    Returns ``(loss, terms)``: ``terms[k]`` is attribute k's unweighted ``OT_h`` (a 0-dim tensor), or
    None when the batch holds no positive or no negative on k (it then contributes 0).
    """
    labels = torch.as_tensor(labels, device=x.device)
    if x.dim() != 1 or labels.dim() != 2 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"x must be (N,) and labels (N, K), got {tuple(x.shape)} and {tuple(labels.shape)}")
    if labels.dtype != torch.bool:
        raise ValueError(f"labels must be bool, got {labels.dtype}")
    weights = [float(w) for w in weights]
    if len(weights) != labels.shape[1] or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be {labels.shape[1]} finite numbers >= 0, got {weights}")
    loss, terms = x.sum() * 0.0, []  # keeps the graph (and the dtype) when every attribute is empty
    for k, w in enumerate(weights):
        positive = labels[:, k]
        if positive.all() or not positive.any():
            terms.append(None)
            continue
        term = aot_loss(x[positive], x[~positive], **aot_kwargs)
        terms.append(term)
        loss = loss + w * term
    return loss, terms


def gather_batch(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of every data-parallel rank (docs/MATH.md sec. 6): x with autograd
    (``trainer.gather_with_grad``), the labels in the same order. Each rank then partitions the same
    global batch per attribute, so a rank holding no positive of some attribute is no special case."""
    x = gather_with_grad(x)
    if labels.shape[1] == 0:
        return x, labels.new_zeros((x.numel(), 0))
    return x, torch.stack([gather_with_grad(c.float().contiguous()) for c in labels.T], 1).bool()


# ---------------------------------------------------------------- data: one label per attribute


def parse_attributes(block, where: str) -> dict[str, dict]:
    """A dataset entry's ``attributes`` block -> {name: {score, direction, threshold}} (errors name the key).

        attributes:
          helpfulness: {}                                   # score column = the name, higher is better, median
          verbosity: {direction: lower}                     # lower is better
          animal_abuse: {score: category.animal_abuse, direction: lower, threshold: 0.5}  # a nested flag
    """
    if not isinstance(block, dict) or not block:
        raise ValueError(f"'{where}' must map attribute names to {{score, direction, threshold}}, got {block!r}")
    out = {}
    for name, spec in block.items():
        at = f"{where}.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"'{where}': attribute name {name!r} must be an identifier (it names a column)")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict) or set(spec) - {"score", "direction", "threshold"}:
            raise ValueError(f"'{at}' takes 'score' (a column), 'direction' (higher or lower) and 'threshold' "
                             f"(\"median\" or a number), got {spec!r}")
        spec = {"score": name, "direction": "higher", "threshold": "median", **spec}
        if not isinstance(spec["score"], str):
            raise ValueError(f"'{at}.score' must be a column name, got {spec['score']!r}")
        if spec["direction"] not in DIRECTIONS:
            raise ValueError(f"'{at}.direction' must be one of {DIRECTIONS}, got {spec['direction']!r}")
        t = spec["threshold"]
        if t != "median" and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise ValueError(f"'{at}.threshold' must be \"median\" or a number, got {t!r}")
        out[name] = spec
    return out


def attribute_labels(ds, attributes: dict[str, dict], cuts: dict | None, at: str):
    """Add one bool column ``label_<name>`` per attribute; returns ``(ds, cuts)``.

    The aggregate ``label`` (what the batch sampler balances) is the data's own (a ``label`` column or
    the ``binarize`` block), else the majority vote of the attribute labels (ties negative).

    ``label = score > cut`` (higher is better) or ``score < cut`` (lower); at the median, ties go
    negative either way. ``cuts`` from the train split are reused for the test split. Raises, naming the
    column, when a score column is missing, not numeric or has missing values, and, on the train split,
    when every answer falls on one side of some attribute.
    """
    from .data import score_threshold

    if {"chosen", "rejected"} <= set(ds.column_names):
        raise ValueError(f"{at}: 'attributes' need unpaired rows (one answer with its scores); this data is paired")
    if any("." in s["score"] and s["score"] not in ds.column_names for s in attributes.values()):
        ds = ds.flatten()  # nested flags (BeaverTails' category struct) -> 'category.animal_abuse' columns
    present = f"columns present: {sorted(ds.column_names)}"
    train, cuts = cuts is None, dict(cuts or {})
    for name, spec in attributes.items():
        col = spec["score"]
        dtype = getattr(ds.features.get(col), "dtype", "")
        if not dtype.startswith(("int", "uint", "float", "double", "bool")):
            what = f"not numeric ({ds.features[col]})" if col in ds.column_names else "missing"
            raise ValueError(f"{at}: attribute '{name}': score column '{col}' is {what}; {present}")
        scores = np.array(list(ds[col]), dtype=float)
        if np.isnan(scores).any():
            raise ValueError(f"{at}: attribute '{name}': score column '{col}' has missing values")
        if train:
            cuts[name] = score_threshold(scores, spec["threshold"])
        label = scores > cuts[name] if spec["direction"] == "higher" else scores < cuts[name]
        if train and (label.all() or not label.any()):
            raise ValueError(f"{at}: attribute '{name}': every answer is {'positive' if label.all() else 'negative'} "
                             f"(column '{col}', {spec['direction']} is better, cut {cuts[name]:g}): nothing to learn")
        ds = ds.remove_columns([c for c in [LABEL_PREFIX + name] if c in ds.column_names])
        ds = ds.add_column(LABEL_PREFIX + name, [bool(b) for b in label])
    if "label" not in ds.column_names:  # no label column nor binarize block: the majority of the attributes
        votes = np.mean([ds[c] for c in attribute_columns(attributes)], axis=0)
        ds = ds.add_column("label", [bool(v > 0.5) for v in votes])
    return ds, cuts


def attribute_columns(names) -> list[str]:
    return [LABEL_PREFIX + n for n in names]


def check_weights(weights, mixture, source: str) -> dict[str, float]:
    """The recipe's ``aot_attributes`` against the attributes every dataset of the mixture lists."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{source}: key 'aot_attributes' must map attribute names to weights, got {weights!r}")
    listed = None
    for i, spec in enumerate(mixture.datasets):
        names = set(spec.attributes or {})
        if not names:
            raise ValueError(f"{source}: 'dataset_mixture.datasets[{i}]' lists no 'attributes' (method aot_multi)")
        if listed is not None and names != listed:
            raise ValueError(f"{source}: 'dataset_mixture.datasets[{i}].attributes' {sorted(names)} differ from "
                             f"those of datasets[0] {sorted(listed)}")
        listed = names
    for name, w in weights.items():
        if name not in listed:
            raise ValueError(f"{source}: 'aot_attributes' has a weight for attribute '{name}', which the "
                             f"dataset_mixture does not list (listed: {sorted(listed)})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
            raise ValueError(f"{source}: 'aot_attributes.{name}' must be a number >= 0, got {w!r}")
    if not any(weights.values()):
        raise ValueError(f"{source}: 'aot_attributes' weights are all 0")
    return {k: float(v) for k, v in weights.items()}


# ---------------------------------------------------------------- trainer


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

    def _compute_loss(self, model, inputs, return_outputs):
        self._attribute_batch = inputs.pop("attribute_labels")  # read by _unpaired_objective below
        return super()._compute_loss(model, inputs, return_outputs)

    def _unpaired_objective(self, logratios, positive, mode):
        labels = self._attribute_batch.to(logratios.device)
        if self._global_sort():
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
