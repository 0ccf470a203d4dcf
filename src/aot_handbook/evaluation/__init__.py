"""Evaluation: AlpacaEval generation + judging, lm-eval benchmarks, the registered tasks' own
(:mod:`aot_handbook.tasks`); the results store.

See :mod:`.pipeline` (``make eval``: one run x one evaluation recipe), :mod:`.alpaca`, :mod:`.harness` (lm-eval),
:mod:`.judge_server` (a program judge behind an OpenAI-compatible endpoint) and :mod:`.results` (result files
with provenance, per-sample scores). The run being evaluated is ``aot_handbook.run_folder.RunInfo``; generation is
``aot_handbook.generation``.
"""

from .pipeline import evaluate, load_eval_recipe
from .results import load_results, save_result

__all__ = ["evaluate", "load_eval_recipe", "load_results", "save_result"]
