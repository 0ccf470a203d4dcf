"""Evaluation: AlpacaEval generation + judging, lm-eval benchmarks, the registered tasks' own
(:mod:`aot_handbook.tasks`); results files.

See :mod:`.pipeline` (``make eval``), :mod:`.generation`, :mod:`.alpaca`, :mod:`.harness`,
:mod:`.judge_server` and :mod:`.common` (run info, provenance, atomic result files).
"""

from .common import RunInfo, load_eval_recipe, load_results, save_result, write_json
from .pipeline import evaluate

__all__ = ["RunInfo", "evaluate", "load_eval_recipe", "load_results", "save_result", "write_json"]
