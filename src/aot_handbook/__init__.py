"""aot-handbook: recipes and trainers for Alignment via Optimal Transport (AOT)."""

from .loss import PENALTIES, SORTS, aot_loss, quantile_coupling

__version__ = "0.1.0"
__all__ = ["aot_loss", "quantile_coupling", "PENALTIES", "SORTS"]
