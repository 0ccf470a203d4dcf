"""The method registry: what a recipe's ``method`` key selects, in one place.

Per method: the trainer config class and trainer class (by dotted path, imported on use, so this
module imports neither TRL nor torch), the data format it needs, the TRL ``loss_type`` it sets, its
table label, whether it is AOT, and the config key of its added NLL term. ``aot_unpaired`` runs on
paired-format data with the DPO-based classes and on truly unpaired data (one completion per row)
with the KTO-based ones: ``config_class(fmt)`` / ``trainer_class(fmt)`` pick them from the data
format the run decided once the data was loaded (``training.load_data``).

Data formats: ``paired`` (prompt, chosen, rejected), ``unpaired`` (prompt, completion, label),
``paired_or_unpaired`` (either, as loaded), ``sft`` (prompt/completion or messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

DATA_FORMATS = ("paired", "unpaired", "sft")  # what a loaded train split is (``data_format`` of a run)


def _load(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(import_module(module), name)


@dataclass(frozen=True)
class Method:
    name: str
    config: str  # dotted path of the trainer config class
    trainer: str  # dotted path of the trainer class
    data: str  # the data format it needs: paired, unpaired, paired_or_unpaired, sft
    loss_type: str | None  # the TRL loss_type it sets (None: the config has no choice of loss)
    label: str | None  # the row label in the paper's tables (None: not a table row)
    aot: bool = False
    nll_key: str | None = None  # the config key of the added NLL term on chosen/positive completions
    unpaired_config: str | None = None  # on truly unpaired data, when it differs from ``config``
    unpaired_trainer: str | None = None

    def config_class(self, data_format: str | None = None) -> type:
        """The trainer config class for data of ``data_format`` (None: the method's default)."""
        return _load(self.unpaired_config if data_format == "unpaired" and self.unpaired_config else self.config)

    def trainer_class(self, data_format: str | None = None) -> type:
        return _load(self.unpaired_trainer if data_format == "unpaired" and self.unpaired_trainer else self.trainer)

    def config_classes(self) -> list[type]:
        """Every config class a recipe of this method may be built with (its keys must be valid in each)."""
        return [self.config_class(), *([self.config_class("unpaired")] if self.unpaired_config else [])]


# The trainer classes, by dotted path (imported on use): aot_handbook.trainers.
_TRAINER = "aot_handbook.trainers"
_CONFIGS = "aot_handbook.configs"

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("aot_paired", f"{_CONFIGS}.AOTConfig", f"{_TRAINER}.AOTTrainer", "paired", "aot_paired", "AOT paired",
           aot=True, nll_key="aot_nll_weight"),
    Method("aot_unpaired", f"{_CONFIGS}.AOTConfig", f"{_TRAINER}.AOTTrainer", "paired_or_unpaired", "aot_unpaired",
           "AOT unpaired", aot=True, nll_key="aot_nll_weight", unpaired_config=f"{_CONFIGS}.AOTUnpairedConfig",
           unpaired_trainer=f"{_TRAINER}.UnpairedAOTTrainer"),
    # multi-attribute unpaired AOT (docs/MULTI_REWARD.md): unpaired rows with one label per attribute
    Method("aot_multi", f"{_CONFIGS}.AOTMultiConfig", f"{_TRAINER}.multi.MultiAttributeAOTTrainer", "unpaired",
           None, None, aot=True, nll_key="aot_nll_weight"),
    Method("dpo", f"{_CONFIGS}.HandbookDPOConfig", f"{_TRAINER}.HandbookDPOTrainer", "paired", "sigmoid", "DPO",
           nll_key="nll_weight"),
    Method("kto", f"{_CONFIGS}.HandbookKTOConfig", f"{_TRAINER}.HandbookKTOTrainer", "unpaired", "kto", "KTO",
           nll_key="nll_weight"),
    Method("ipo", f"{_CONFIGS}.HandbookDPOConfig", f"{_TRAINER}.HandbookDPOTrainer", "paired", "ipo", "IPO",
           nll_key="nll_weight"),
    Method("sft", "trl.SFTConfig", "trl.SFTTrainer", "sft", None, None),
)}


def get_method(name: str, source: str = "recipe") -> Method:
    """The registry entry of ``name``; an error naming the key and ``source`` (a file) if there is none."""
    if name not in METHODS:
        raise ValueError(f"{source}: key 'method' must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def table_methods() -> list[tuple[str, str]]:
    """(label, method) of the methods the paper's tables compare, in their row order."""
    return [(m.label, m.name) for m in METHODS.values() if m.label]
