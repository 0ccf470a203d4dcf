"""Tasks: a checkable problem with its own offline assets, judge, tables and figures, registered by name.

Nothing outside a task's own package names it: the run driver, the data stage, the evaluation pipeline, the
judge server, the tables, the plots and the reproduction grid ask :func:`task_of` (or ``task_for_*``) which task
a recipe, run, evaluation kind, table or figure belongs to and call the :class:`Task` methods. The built-in tasks
are the tiny ones (:mod:`aot_handbook.tasks.tiny`). A new task subclasses :class:`Task`, sets ``name``,
``assets_key`` and ``eval_kind`` and calls :func:`register_task` with an instance::

    class Reversed(Task):
        name, assets_key, eval_kind = "reversed", "reversed_assets", "reversed_task"
        ...
    register_task(Reversed())

What each part of the repository asks of a task:

- recipes (:mod:`aot_handbook.recipe`): ``assets_key`` is a recipe key (the folder the task's assets are built
  in) of training and pairs recipes;
- ``aot-train`` (:mod:`aot_handbook.training`): :meth:`Task.ensure_assets` before training; its held-out
  pairs (:meth:`Task.heldout_pairs`) for the Fig. 1 summary when the training data has no paired test
  split; :meth:`Task.summarize` for the task's own block of the end-of-run summary;
- the data stage (:mod:`aot_handbook.scorers`) and the judge server: :meth:`Task.judge`, the task's program judge,
  is the scorer named ``scorer`` (e.g. ``scorer: tiny_judge`` in a pairs recipe);
- the evaluation pipeline: an evaluation recipe of ``kind: <eval_kind>`` runs :meth:`Task.evaluate`;
  an ``lm_eval`` one asks every task for its lm-eval task files (:meth:`Task.lm_eval_include`);
- ``RunInfo`` (the results' run fields): ``base_model`` and ``dataset`` are the task's name when the
  run trained on the task's own data only (:meth:`Task.owns_data`);
- the tables and plots: :meth:`Task.table` for each name in ``table_names`` (``aot-table <name>``),
  :meth:`Task.figure` for each name in ``figure_names`` (``aot-plot --figure <name>``);
- the reproduction grid (``aot-reproduce``): :meth:`Task.report` writes the tables, figures and judged claims of
  a grid whose evaluation recipe is of the task's ``eval_kind``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

# Built-in tasks: name -> the package that registers it on import (imported when first asked for).
BUILTIN = {"tiny": "aot_handbook.tasks.tiny", "tiny_multi": "aot_handbook.tasks.tiny",
           "tiny_graded": "aot_handbook.tasks.tiny"}
_REGISTRY: dict[str, Task] = {}


class Task:
    """One task. Subclasses set the three names and implement the methods their recipes use."""

    name: str = ""  # results' base_model / dataset value, and the registry key
    assets_key: str = ""  # the recipe key holding the folder the task's assets are built in
    eval_kind: str = ""  # an evaluation recipe's ``kind`` (its options live under the same key)
    table_names: tuple[str, ...] = ()  # ``make table TABLE=<name>`` layouts this task provides
    figure_names: tuple[str, ...] = ()  # ``aot-plot --figure <name>`` figures this task draws from results
    scorer: str = ""  # a pairs recipe's ``scorer`` value that judges answers with :meth:`judge` ("": none)

    # ---- assets and data
    def ensure_assets(self, root: str | Path) -> dict[str, Path]:
        """Build whatever is missing under ``root`` (idempotent, atomic); return name -> path of each asset
        (at least the held-out splits the other methods read)."""
        raise NotImplementedError

    def assets_root(self, recipe: dict) -> str | None:
        """The assets folder a recipe names (``recipe[assets_key]``), or None."""
        return recipe.get(self.assets_key) or None

    def asset_folders(self, recipe: dict) -> list[Path]:
        """The folders :meth:`ensure_assets` writes for a recipe (a model or data file inside one of them is built
        before training, so it need not exist when the recipe is checked)."""
        root = self.assets_root(recipe)
        return [Path(root)] if root else []

    def owns(self, recipe: dict) -> bool:
        """Whether a recipe uses this task (builds its assets)."""
        return bool(self.assets_root(recipe))

    def owns_data(self, recipe: dict) -> bool:
        """Whether the recipe trains on the task's own data only: every data file of its dataset_mixture lies in
        the assets folder and no entry is a hub dataset (a copied task recipe on other data is not the task)."""
        assets = self.assets_root(recipe)
        entries = (recipe.get("dataset_mixture") or {}).get("datasets") or []
        files = [f for d in entries if isinstance(d, dict) for fs in (d.get("data_files") or {}).values()
                 for f in ([fs] if isinstance(fs, str) else fs)]
        inside = lambda f: Path(os.path.normpath(f)).is_relative_to(os.path.normpath(assets))  # noqa: E731
        return bool(assets) and all(isinstance(d, dict) and not d.get("path") for d in entries) \
            and all(inside(f) for f in files)

    def heldout_pairs(self, recipe: dict) -> list[dict]:
        """Held-out paired rows (prompt, chosen, rejected) for the Fig. 1 statistics."""
        raise NotImplementedError

    def judge(self, prompt: str, completion: str) -> float:
        """The task's program judge: one answer's score in [0, 1] (1: right). Used by the data stage (the scorer
        named :attr:`scorer`) and by the OpenAI-compatible judge server (``evaluation.judge_server``)."""
        raise NotImplementedError(f"task {self.name!r} has no program judge")

    # ---- what the run driver, the evaluation pipeline and the tables call
    def summarize(self, model, tokenizer, reference, recipe: dict) -> dict:
        """The task's block of the end-of-run summary (``summary["task_accuracy"]``): ``{"aligned": ...}`` and,
        when ``reference`` is a model, ``"reference"``."""
        raise NotImplementedError

    def summary_lines(self, block: dict) -> list[str]:
        """The printed lines of the summary block :meth:`summarize` returned (one per model, every number)."""
        return [f"  task accuracy, {who:9s}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in block[who].items())
                for who in ("reference", "aligned") if who in block]

    def evaluate(self, run, recipe: dict, work: Path) -> tuple[dict, dict, dict | None]:
        """An evaluation of ``kind: eval_kind``: ``(scores, details, judge)`` for ``save_result``; options are
        ``recipe[eval_kind]``; ``work`` is the resumable working folder."""
        raise NotImplementedError

    def lm_eval_include(self, cfg: dict, work: Path) -> str | None:
        """An ``lm_eval`` evaluation: pop this task's options from the recipe's ``lm_eval`` block ``cfg`` and, if
        they ask for it, write the task's lm-eval task files under ``work`` and return their folder."""
        return None

    def table(self, name: str):
        """The :class:`aot_handbook.tables.Table` layout ``name`` (one of ``table_names``)."""
        raise ValueError(f"task {self.name!r} has no table {name!r}")

    def figure(self, name: str, results: list[dict], path: Path) -> Path:
        """Draw figure ``name`` (one of ``figure_names``) from result files' contents into ``path``."""
        raise ValueError(f"task {self.name!r} has no figure {name!r}")

    def report(self, regime: str, results: list[dict], out_dir: Path, **context) -> dict[str, Path]:
        """The reproduction grid's report (``aot-reproduce``) for ``regime`` (``offline`` or ``onpolicy``): its
        tables, figures and judged claims under ``out_dir``, from the grid's results; returns what it wrote."""
        raise ValueError(f"task {self.name!r} has no reproduction report")


def register_task(task: Task) -> Task:
    """Add ``task`` under ``task.name`` (replacing a task of that name); returns it."""
    if not task.name or not task.assets_key or not task.eval_kind:
        raise ValueError(f"{type(task).__name__}: a task needs a name, an assets_key and an eval_kind")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> None:
    _REGISTRY.pop(name, None)


def tasks() -> list[Task]:
    """Every registered task (the built-in ones imported first), in registration order."""
    for module in BUILTIN.values():
        importlib.import_module(module)
    return list(_REGISTRY.values())


def get_task(name: str) -> Task:
    task = next((t for t in tasks() if t.name == name), None)
    if task is None:
        raise ValueError(f"no task {name!r} (registered: {[t.name for t in tasks()]})")
    return task


def task_of(recipe: dict) -> Task | None:
    """The task a recipe uses (it names the task's assets folder), or None. ``recipe``: its keys as a mapping
    (a recipe file's YAML, ``Recipe.settings()``, or a run's resolved config, ``RunInfo.recipe``)."""
    values = getattr(recipe, "recipe", recipe)  # a RunInfo: its resolved config
    found = [t for t in tasks() if t.owns(values)]
    if len(found) > 1:
        raise ValueError(f"a recipe belongs to one task; this one names the assets of {[t.name for t in found]}")
    return found[0] if found else None


def task_for_kind(kind: str) -> Task | None:
    """The task whose evaluation recipes have ``kind: <kind>``."""
    return next((t for t in tasks() if t.eval_kind == kind), None)


def task_for_table(name: str) -> Task | None:
    return next((t for t in tasks() if name in t.table_names), None)


def task_for_figure(name: str) -> Task | None:
    return next((t for t in tasks() if name in t.figure_names), None)


def task_for_scorer(name: str) -> Task | None:
    """The task whose program judge is the data stage's scorer ``name``."""
    return next((t for t in tasks() if name and t.scorer == name), None)


def asset_keys() -> set[str]:
    """Recipe keys that name a task's assets folder (where a run's inputs are built, not what its weights are)."""
    return {t.assets_key for t in tasks()}
