"""aot-handbook: recipes and trainers for Alignment via Optimal Transport (AOT).

The public classes import from the top, as TRL's do::

    from aot_handbook import AOTConfig, AOTTrainer, aot_loss

The loss and its helpers load at once (torch only); the trainers and configs import TRL, so they
load on first use (PEP 562), and ``import aot_handbook.loss`` stays light.
"""

from importlib import import_module

from .loss import PENALTIES, SORTS, aot_loss, quantile_coupling

__version__ = "0.1.0"

_LAZY = {
    "AOTConfig": "configs",
    "AOTUnpairedConfig": "configs",
    "HandbookDPOConfig": "configs",
    "HandbookKTOConfig": "configs",
    "AOTTrainer": "trainers",
    "UnpairedAOTTrainer": "trainers",
    "HandbookDPOTrainer": "trainers",
    "HandbookKTOTrainer": "trainers",
    "fsd_diagnostics": "diagnostics",
    "quantile_curves": "diagnostics",
    "parse_recipe": "recipe",
    "train": "plan",
}
__all__ = ["aot_loss", "quantile_coupling", "PENALTIES", "SORTS", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
