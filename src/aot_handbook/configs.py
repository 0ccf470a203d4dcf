"""The config dataclasses a recipe is built into: the AOT trainer configs (on TRL's DPOConfig and
KTOConfig), the baselines' configs with an added NLL term, and the recipe's own keys.

Reading a recipe (YAML + ``--key value`` overrides) into them is ``aot_handbook.recipe``; which
class a ``method`` uses is ``aot_handbook.methods``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import yaml
from trl import DPOConfig, KTOConfig

from .loss import PENALTIES, SORTS
from .methods import METHODS

SORT_SCOPES = ("optimizer_batch", "micro_batch")


def sort_batch(per_device: int, accumulation: int, scope: str | None, global_sort: bool | None, ranks: int = 1) -> int:
    """The effective batch one AOT sort sees: (ranks, when sorted globally: aot_global_sort true, or unset with
    several ranks) x per-device batch x (accumulation steps, with aot_sort_scope optimizer_batch)."""
    across = ranks if global_sort or (global_sort is None and ranks > 1) else 1
    return across * per_device * (accumulation if (scope or "optimizer_batch") == "optimizer_batch" else 1)


@dataclass
class AOTArguments:
    """The AOT-specific knobs shared by the paired-format and the unpaired-format trainer."""

    aot_penalty: str = field(default="logistic", metadata={"help": f"Convex penalty h: {list(PENALTIES)}."})
    aot_sort: str = field(default="hard", metadata={"help": f"Sorting: {list(SORTS)}."})
    aot_sort_regularization: float | None = field(
        default=None, metadata={"help": "Soft sort strength (soft, soft_pav); None = the sort's default."}
    )
    aot_sort_iterations: int | None = field(
        default=None, metadata={"help": "Sinkhorn iterations of sort=soft; None = its default."}
    )
    aot_nll_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an added NLL term on the chosen/positive completions (mean per token)."},
    )
    aot_global_sort: bool | None = field(
        default=None,
        metadata={
            "help": "Sort u and v over every data-parallel rank (docs/MATH.md sec. 6). None = on when world size > 1."
        },
    )
    aot_sort_scope: str = field(
        default="optimizer_batch",
        metadata={"help": "The batch AOT sorts under gradient accumulation: optimizer_batch (every micro-batch of "
                          "the accumulation window, and every rank's unless aot_global_sort is false: exact, in two "
                          "passes, docs/MATH.md sec. 7) or micro_batch (each micro-batch alone, as TRL does)."},
    )
    aot_positive_share: float = field(
        default=0.5,
        metadata={"help": "Unpaired data: share of positives in each sorted batch (the sampler draws both classes)."},
    )
    aot_padding_free: bool = field(
        default=True,
        metadata={"help": "Pack a batch's pairs (or unpaired rows) several to a row, no compute on padding, the same "
                          "log-probs (aot_handbook.packing); SDPA runs them as one row, attention segment by "
                          "segment, flash-attention as one varlen row, eager/flex as masked rows. Models "
                          "that cannot take it fall back with a warning. (TRL's own padding_free is off in 1.16.)"},
    )
    aot_row_tokens: int = field(
        default=4096,
        metadata={"help": "aot_padding_free with eager/SDPA/flex attention: the most tokens one masked row holds "
                          "(the mask is rows x L x L); within it the row count is chosen by a cost model (with "
                          "SDPA, packing where it chooses several segments a row, then one row of segments)."},
    )

    def validate_aot(self) -> None:
        if self.aot_penalty not in PENALTIES:
            raise ValueError(f"aot_penalty: unknown penalty {self.aot_penalty!r}; expected one of {list(PENALTIES)}")
        if self.aot_sort not in SORTS:
            raise ValueError(f"aot_sort: unknown sort {self.aot_sort!r}; expected one of {list(SORTS)}")
        if self.aot_sort == "hard" and (self.aot_sort_regularization or self.aot_sort_iterations):
            raise ValueError("aot_sort_regularization / aot_sort_iterations apply to soft sorts only")
        if self.aot_sort_iterations is not None and self.aot_sort != "soft":
            raise ValueError("aot_sort_iterations applies to aot_sort: soft (Sinkhorn) only")
        reg = self.aot_sort_regularization
        if reg is not None and not (math.isfinite(reg) and reg > 0):
            raise ValueError(f"aot_sort_regularization must be a finite number > 0, got {reg}")
        if self.aot_sort_iterations is not None and self.aot_sort_iterations < 1:
            raise ValueError(f"aot_sort_iterations must be >= 1, got {self.aot_sort_iterations}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        smoothing = getattr(self, "label_smoothing", 0.0)
        if not 0 <= smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {smoothing}")
        if smoothing and self.aot_penalty != "logistic":
            raise ValueError(f"label_smoothing applies to aot_penalty: logistic only, not {self.aot_penalty!r}")
        if not (math.isfinite(self.aot_nll_weight) and self.aot_nll_weight >= 0):
            raise ValueError(f"aot_nll_weight must be >= 0 and finite, got {self.aot_nll_weight}")
        if self.aot_sort_scope not in SORT_SCOPES:
            raise ValueError(f"aot_sort_scope must be one of {list(SORT_SCOPES)}, got {self.aot_sort_scope!r}")
        if not 0 < self.aot_positive_share < 1:
            raise ValueError(f"aot_positive_share must be in (0, 1), got {self.aot_positive_share}")
        if not (isinstance(self.aot_row_tokens, int) and self.aot_row_tokens >= 1):
            raise ValueError(f"aot_row_tokens must be an integer >= 1, got {self.aot_row_tokens!r}")
        if getattr(self, "padding_free", False):
            raise ValueError("padding_free is TRL's switch, disabled in TRL 1.16 (it warns and pads); the AOT "
                             "trainers' padding-free layout is aot_padding_free (default on)")

    def sort_batch(self, ranks: int = 1) -> int:
        """How many samples (pairs, or answers of truly unpaired data) one AOT sort sees per step with
        ``ranks`` data-parallel processes: ranks (under the global sort) x per device x accumulation
        (optimizer_batch scope)."""
        return sort_batch(self.per_device_train_batch_size, self.gradient_accumulation_steps, self.aot_sort_scope,
                          self.aot_global_sort, ranks)

    @property
    def sort_options(self) -> dict:
        options = {"regularization": self.aot_sort_regularization, "n_iter": self.aot_sort_iterations}
        return {k: v for k, v in options.items() if v is not None}


@dataclass
class AOTConfig(AOTArguments, DPOConfig):
    """AOT on paired-format data (prompt, chosen, rejected), on top of TRL's DPOConfig.

    ``loss_type``: ``aot_paired`` (U = policy margins, V = reference margins) or
    ``aot_unpaired`` (U = chosen log-ratios, V = rejected log-ratios), docs/MATH.md sec. 2.
    """

    loss_type: str = field(default="aot_unpaired", metadata={"help": "aot_paired or aot_unpaired."})
    beta: float = field(default=0.01, metadata={"help": "The paper's beta for 7B models is 0.01."})
    aot_share_prompt: bool = field(
        default=True,
        metadata={"help": "One row per pair, its prompt computed once (same log-probs, fewer tokens); models or "
                          "batches that cannot take it (see aot_handbook.packing) use TRL's two rows per pair."},
    )

    def __post_init__(self):
        one = isinstance(self.loss_type, list) and len(self.loss_type) == 1
        variant = self.loss_type[0] if one else self.loss_type
        if variant not in ("aot_paired", "aot_unpaired"):
            raise ValueError(f"loss_type must be 'aot_paired' or 'aot_unpaired', got {self.loss_type!r}")
        self.loss_type = variant
        self.validate_aot()
        if self.ld_alpha is not None or self.use_weighting or self.f_divergence_type != "reverse_kl":
            raise ValueError("ld_alpha, use_weighting and f_divergence_type are DPO options AOT does not use")
        super().__post_init__()  # TRL keeps loss_type as a one-element list from here on

    @property
    def aot_variant(self) -> str:
        return self.loss_type[0]


@dataclass
class AOTUnpairedConfig(AOTArguments, KTOConfig):
    """AOT on truly unpaired data (prompt, completion, label), on top of TRL's KTOConfig.

    TRL's ``loss_type`` is fixed to ``apo_zero_unpaired`` only because that is KTOTrainer's
    switch for not building mismatched KL completions, which AOT does not use; the loss itself
    is ``aot_loss`` on chosen vs rejected log-ratios (the paper's unpaired AOT).
    """

    loss_type: str = field(default="apo_zero_unpaired", metadata={"help": "Fixed; see the class docstring."})
    beta: float = field(default=0.01, metadata={"help": "The paper's beta for 7B models is 0.01."})

    def __post_init__(self):
        if self.loss_type != "apo_zero_unpaired":
            raise ValueError("AOTUnpairedConfig.loss_type is fixed; choose the method with the recipe's `method` key")
        self.validate_aot()
        super().__post_init__()

    @property
    def aot_variant(self) -> str:
        return "aot_unpaired"


@dataclass
class AOTMultiConfig(AOTUnpairedConfig):
    """Multi-attribute unpaired AOT (method ``aot_multi``; ``trainers/multi.py``, ``multi_loss.py``,
    docs/MULTI_REWARD.md): ``sum_k w_k OT_h(U_k, V_k)`` over the attributes the dataset block lists, with these
    weights."""

    aot_attributes: dict | str | None = field(
        default=None,
        metadata={"help": "Attribute -> weight, e.g. {helpfulness: 1.0, verbosity: 0.5}; each attribute must be "
                          "listed in the dataset block's `attributes`. On the command line: JSON."},
    )

    def __post_init__(self):
        if isinstance(self.aot_attributes, str):  # a command-line override arrives as text
            self.aot_attributes = yaml.safe_load(self.aot_attributes)
        if not isinstance(self.aot_attributes, dict) or not self.aot_attributes:
            raise ValueError(f"aot_attributes must map attribute names to weights, got {self.aot_attributes!r}")
        for name, w in self.aot_attributes.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
                raise ValueError(f"aot_attributes.{name} must be a number >= 0, got {w!r}")
        if not any(self.aot_attributes.values()):
            raise ValueError("aot_attributes: every weight is 0")
        super().__post_init__()


_NLL_HELP = ("Weight of an added NLL term on the chosen/positive completions (mean per token), as AOT's "
             "aot_nll_weight; 0 = off.")


def _check_nll_weight(weight: float) -> None:
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"nll_weight must be >= 0 and finite, got {weight}")


@dataclass
class HandbookDPOConfig(DPOConfig):
    """TRL's DPOConfig (methods dpo, ipo) plus ``nll_weight``: TRL's own ``sft`` loss term (the mean
    per-token NLL of the chosen completions) added to the method's loss with that weight."""

    nll_weight: float = field(default=0.0, metadata={"help": _NLL_HELP})

    def __post_init__(self):
        _check_nll_weight(self.nll_weight)
        super().__post_init__()
        if self.nll_weight and "sft" not in self.loss_type:  # idempotent: configs are sometimes rebuilt
            self.loss_weights = [*(self.loss_weights or [1.0] * len(self.loss_type)), self.nll_weight]
            self.loss_type = [*self.loss_type, "sft"]


@dataclass
class HandbookKTOConfig(KTOConfig):
    """TRL's KTOConfig plus ``nll_weight`` (TRL's KTO has no NLL term; HandbookKTOTrainer adds it)."""

    nll_weight: float = field(default=0.0, metadata={"help": _NLL_HELP})

    def __post_init__(self):
        _check_nll_weight(self.nll_weight)
        super().__post_init__()


@dataclass
class RecipeArguments:
    """Recipe keys that are neither model nor trainer arguments. (A registered task adds its assets key,
    ``aot_handbook.tasks``; ``recipe.parse_recipe`` reads it beside these.)"""

    method: str = field(
        default="", metadata={"help": f"One of {sorted(METHODS)}."})
    dataset_mixture: dict | str | None = field(
        default=None, metadata={"help": "Datasets block; see data.py. On the command line: JSON (or YAML flow)."}
    )
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Defaults to the model's."})
    chat_template: str | None = field(
        default=None, metadata={"help": "A Jinja chat template to set on the tokenizer."})
    requires: list[str] | None = field(
        default=None,
        metadata={"help": "Recipes whose runs must exist first (trained if missing), e.g. the SFT stage."}
    )
    summary: bool = field(
        default=True, metadata={"help": "Evaluate on the test split and print a summary at the end."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train from scratch into output_dir even if it holds a finished run or checkpoints of "
                          "another configuration (they are deleted). The flag transformers < 5 had, kept here."},
    )
