"""Recipes: one YAML holds model, LoRA, data and trainer arguments (alignment-handbook style).

Parsing leans on TRL's ``TrlParser`` (YAML values become defaults, ``--key value`` on the
command line overrides them). What this module adds: the ``method`` key that picks the
trainer and its config class, the AOT config fields, and errors that name the key and
the recipe file, raised before any model or dataset loads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import DPOConfig, KTOConfig, ModelConfig, SFTConfig, TrlParser

from .loss import PENALTIES, SORTS


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
    aot_positive_share: float = field(
        default=0.5,
        metadata={"help": "Unpaired data: share of positives in each batch (the sampler draws both classes)."},
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
        if not 0 < self.aot_positive_share < 1:
            raise ValueError(f"aot_positive_share must be in (0, 1), got {self.aot_positive_share}")

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
    """Multi-attribute unpaired AOT (method ``aot_multi``; ``multi_reward.py``, docs/MULTI_REWARD.md):
    ``sum_k w_k OT_h(U_k, V_k)`` over the attributes the dataset block lists, with these weights."""

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
    """Recipe keys that are neither model nor trainer arguments."""

    method: str = field(
        default="",
        metadata={"help": f"One of {sorted(['aot_multi', 'aot_paired', 'aot_unpaired', 'dpo', 'ipo', 'kto', 'sft'])}"})
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
    tiny_multi_assets: str | None = field(
        default=None, metadata={"help": "Build the tiny multi-attribute task (aot_handbook.tiny_multi) into this "
                                        "folder if missing (its base model: the tiny one, under .cache/tiny)."}
    )
    tiny_assets: str | None = field(
        default=None, metadata={"help": "Build the offline tiny model and task into this folder if missing."}
    )
    summary: bool = field(
        default=True, metadata={"help": "Evaluate on the test split and print a summary at the end."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train from scratch into output_dir even if it holds a finished run or checkpoints of "
                          "another configuration (they are deleted). The flag transformers < 5 had, kept here."},
    )


# method -> (trainer config class, data format it needs, TRL loss_type it sets)
METHODS: dict[str, tuple[type, str, str | None]] = {
    "aot_paired": (AOTConfig, "paired", "aot_paired"),
    "aot_unpaired": (AOTConfig, "paired_or_unpaired", "aot_unpaired"),
    "aot_multi": (AOTMultiConfig, "unpaired", None),  # multi-attribute unpaired AOT (multi_reward.py)
    "dpo": (HandbookDPOConfig, "paired", "sigmoid"),
    "ipo": (HandbookDPOConfig, "paired", "ipo"),
    "kto": (HandbookKTOConfig, "unpaired", "kto"),
    "sft": (SFTConfig, "sft", None),
}


@dataclass
class Recipe:
    path: str
    method: str
    recipe: RecipeArguments
    model: ModelConfig
    training: typing.Any  # the method's trainer config (AOTConfig, DPOConfig, ...)
    raw: dict  # the YAML mapping with the defaults filled in (provenance, re-parsing)
    overrides: list[str]  # the command-line overrides applied on top of it


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe file not found: {path}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: a recipe must be UTF-8 text (byte {err.start} is not): is this the right file?") \
            from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of keys to values")
    return config


def _method_from(args: list[str], config: dict, path: str) -> str:
    method = config.get("method")
    if "--method" in args:
        method = args[args.index("--method") + 1]
    if method not in METHODS:
        raise ValueError(f"{path}: key 'method' must be one of {sorted(METHODS)}, got {method!r}")
    return method


def _check_overrides(overrides: list[str], path: str) -> None:
    """``--key value`` pairs: a key given twice is a mistake (argparse would silently keep the last)."""
    keys = [o[2:].split("=", 1)[0] for o in overrides if o.startswith("--")]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"{path}: override(s) given more than once: {['--' + k for k in twice]}")


def _check_values(method: str, args, path: str) -> None:
    """Ranges the trainer configs do not check (or check only once training has started)."""
    lr = args.learning_rate
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{path}: key 'learning_rate' must be a finite number > 0, got {lr}")
    # unpaired AOT needs a positive and a negative in every batch; TRL's KTO estimates its KL term from the batch
    least = 2 if method in ("aot_unpaired", "aot_multi", "kto") else 1
    for key, low in (("per_device_train_batch_size", least), ("per_device_eval_batch_size", 1),
                     ("gradient_accumulation_steps", 1)):
        if getattr(args, key) < low:
            why = f" for method {method!r}" if low > 1 else ""
            raise ValueError(f"{path}: key {key!r} must be >= {low}{why}, got {getattr(args, key)}")
    if method != "sft" and not (math.isfinite(args.beta) and args.beta > 0):
        raise ValueError(f"{path}: key 'beta' must be a finite number > 0, got {args.beta}")


def _check_types(classes: list[type], values: dict, path: str) -> None:
    """YAML values bypass argparse's type conversion, so check them against the annotations here."""
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value, hint = values[f.name], hints[f.name]
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            allowed = {typing.get_origin(a) or a for a in (typing.get_args(hint) if union else (hint,))}
            if typing.Any in allowed or typing.Literal in allowed or any(not isinstance(a, type) for a in allowed):
                continue
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                continue
            if value is None and type(None) in allowed:
                continue
            if not isinstance(value, tuple(allowed)) or (isinstance(value, bool) and bool not in allowed):
                raise ValueError(f"{path}: key {f.name!r} expects {hint}, got {value!r} ({type(value).__name__})")


def parse_recipe(path: str, overrides: list[str] | None = None, *, config_class: type | None = None) -> Recipe:
    """Parse a recipe YAML plus ``--key value`` overrides; raise naming the key and the file."""
    overrides = list(overrides or [])
    raw = _read_yaml(path)
    _check_overrides(overrides, path)
    method = _method_from(overrides, raw, path)
    config_class = config_class or METHODS[method][0]
    loss_type = METHODS[method][2]
    other_loss = "loss_type" in raw and raw["loss_type"] not in (loss_type, [loss_type])
    if other_loss and config_class is not AOTUnpairedConfig:
        raise ValueError(f"{path}: key 'loss_type' is set by 'method: {method}'; remove it")
    defaults = {"output_dir": str(Path("runs") / f"{Path(path).parent.name}-{Path(path).stem}")}
    if loss_type and config_class is not AOTUnpairedConfig:
        is_list = typing.get_origin(typing.get_type_hints(config_class)["loss_type"]) is list
        defaults["loss_type"] = [loss_type] if is_list else loss_type
        if raw.get("loss_type") in ([loss_type], loss_type):
            raw = {k: v for k, v in raw.items() if k != "loss_type"}
    merged = {**defaults, **raw}
    parser = TrlParser([RecipeArguments, ModelConfig, config_class])
    _check_types([RecipeArguments, ModelConfig, config_class], merged, path)
    # TrlParser reads the YAML from a file; hand it the merged mapping through a temporary one.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump(merged, tmp)
    try:
        recipe_args, model_args, training_args = parser.parse_args_and_config(
            ["--config", tmp.name, *overrides], fail_with_unknown_args=True
        )
    except ValueError as err:
        message = str(err)
        if "Unknown arguments from config file" in message:
            unknown = [s.lstrip("-") for s in message.split("[", 1)[1].split("]", 1)[0].replace("'", "").split(", ")]
            keys = [k for k in unknown if k in raw or k.split("=")[0] in raw]
            raise ValueError(f"{path}: unknown key(s) {keys or unknown} for method {method!r}") from None
        if "not used by the HfArgumentParser" in message:
            raise ValueError(f"{path}: unknown command-line override(s) {message.split(': ', 1)[1]}") from None
        raise ValueError(f"{path}: {message}") from err
    finally:
        os.unlink(tmp.name)
    if isinstance(recipe_args.dataset_mixture, str):  # a command-line override arrives as text
        try:
            recipe_args.dataset_mixture = yaml.safe_load(recipe_args.dataset_mixture)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: override --dataset_mixture is not valid JSON: {err}") from None
        if not isinstance(recipe_args.dataset_mixture, dict):
            raise ValueError(f"{path}: override --dataset_mixture must be a JSON object")
    if not recipe_args.dataset_mixture:
        raise ValueError(f"{path}: key 'dataset_mixture' is required")
    if not model_args.model_name_or_path:
        raise ValueError(f"{path}: key 'model_name_or_path' is required")
    _check_values(method, training_args, path)
    return Recipe(path, method, recipe_args, model_args, training_args, merged, overrides)
