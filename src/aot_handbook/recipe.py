"""Recipes: the YAML files a user writes, each of one kind, read by one reader.

A file's kind is in its name (:data:`KINDS`): ``x.yaml`` is a training recipe, ``x.pairs.yaml`` a data-stage recipe
(``aot_handbook.pairs``; ``rounds: N`` alternates it with training), ``x.sweep.yaml`` a sweep, ``x.grid.yaml`` a
reproduction grid (``aot-reproduce``), ``x.eval.yaml`` an evaluation recipe; a file under an ``accelerate_configs``
folder is an accelerate config (accelerate's own format). :func:`read_recipe` reads any of them (through
``io.read_yaml``) and refuses a file of another kind than the caller expects, naming both.

A training recipe is parsed once into typed objects (``Recipe``): the YAML's keys are checked against the
fields of the classes its ``method`` uses (``aot_handbook.methods``) and the assets keys of the registered tasks
(``aot_handbook.tasks``), its values become the defaults of a ``transformers.HfArgumentParser`` over those classes,
and ``--key value`` overrides on the command line are parsed on top (bare boolean flags such as ``--use_peft``
mean true). Errors name the key and the recipe file, and come before any model or dataset loads.

``Recipe.resolved()`` is every key with the value the run used; the run folder keeps it
(``recipe.json``), and tables, evaluation and sweeps read it instead of re-parsing command lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import UserError
from .io import read_yaml
from .methods import DATA_FORMATS, METHODS, get_method
from .tasks import asset_keys, task_of

# A file's kind from the end of its name (first match); any other .yaml/.yml file is a training recipe, and a file
# under an ``accelerate_configs`` folder is an accelerate config.
KINDS = {".pairs.yaml": "pairs", ".sweep.yaml": "sweep", ".grid.yaml": "grid", ".eval.yaml": "eval"}
NOUNS = {"train": "training recipe", "pairs": "pairs recipe", "sweep": "sweep", "grid": "reproduction grid",
         "eval": "evaluation recipe", "accelerate": "accelerate config"}


def recipe_kind(path: str | Path) -> str:
    """``train``, ``pairs``, ``sweep``, ``grid``, ``eval`` or ``accelerate``: from the file's name (:data:`KINDS`)."""
    path = Path(path)
    if "accelerate_configs" in path.parts[:-1]:
        return "accelerate"
    name = path.name.replace(".yml", ".yaml")
    return next((kind for suffix, kind in KINDS.items() if name.endswith(suffix)), "train")


def read_recipe(path: str | Path, kind: str | None = None) -> dict:
    """The mapping a recipe file holds, read by ``io.read_yaml``; with ``kind``, a ``UserError`` when the file's
    name says it is of another kind (a training recipe given to ``aot-pairs``, ...)."""
    found = recipe_kind(path)
    if kind is not None and found != kind:
        suffix = next((s for s, k in KINDS.items() if k == kind), ".yaml")
        raise UserError(f"{path}: this is a {NOUNS[found]} (by its file name), not a {NOUNS[kind]} "
                        f"(a {NOUNS[kind]}'s file name ends in {suffix})")
    return read_yaml(path, "recipe" if found == "train" else NOUNS[found])


@dataclass
class Recipe:
    path: str
    method: str
    recipe: typing.Any  # configs.RecipeArguments: the recipe's own keys
    model: typing.Any  # trl.ModelConfig
    training: typing.Any  # the method's trainer config (AOTConfig, DPOConfig, ...)
    raw: dict  # the YAML mapping with the defaults filled in (provenance)
    overrides: list[str]  # the command-line overrides applied on top of it
    # what the loaded train split is (paired, unpaired, sft): None until the data is loaded (training.load_data)
    data_format: str | None = None
    assets: dict = dataclasses.field(default_factory=dict)  # each registered task's assets key -> its folder or None

    def settings(self) -> dict:
        """The recipe's own keys (``RecipeArguments`` and the tasks' assets keys), as a task reads them."""
        return {**dataclasses.asdict(self.recipe), **self.assets}

    def resolved(self) -> dict:
        """Every recipe key (recipe, model and trainer arguments) with the value the run used, after
        defaults and overrides, JSON-safe, sorted by key; plus ``data_format`` once the data is loaded.
        Secrets stay masked (``hub_token``); other ``*_token`` values are kept (``pad_token`` is no secret)."""
        training = self.training.to_dict()  # values of *_token keys come masked
        training.update({k: getattr(self.training, k) for k, v in training.items()
                         if v == f"<{k.upper()}>" and not k.startswith("hub_")})
        training.pop("local_rank", None)  # the process's rank, set by the launcher: not a setting of the run
        config = {**self.settings(), **dataclasses.asdict(self.model), **training, "data_format": self.data_format}
        return json.loads(json.dumps(dict(sorted(config.items())), default=str))


def _method_from(args: list[str], config: dict) -> str:
    method = config.get("method")
    for i, arg in enumerate(args):
        if arg == "--method" and i + 1 < len(args):
            method = args[i + 1]
        elif arg.startswith("--method="):
            method = arg.split("=", 1)[1]
    return method


def _check_overrides(overrides: list[str], path: str) -> None:
    """``--key value`` pairs: a key given twice is a mistake (argparse would silently keep the last)."""
    keys = [o[2:].split("=", 1)[0] for o in overrides if o.startswith("--")]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"{path}: override(s) given more than once: {['--' + k for k in twice]}")


def _task_assets(overrides: list[str], raw: dict, path: str) -> tuple[list[str], dict]:
    """The registered tasks' assets keys (``aot_handbook.tasks``: e.g. the folder a task's model and data are
    built in) from the recipe and its ``--key value`` overrides: (the other overrides, key -> folder or None)."""
    keys, rest = asset_keys(), []
    assets = {k: raw.get(k) for k in sorted(keys)}
    i = 0
    while i < len(overrides):
        key, eq, value = overrides[i][2:].partition("=") if overrides[i].startswith("--") else ("", "", "")
        if key in keys:
            if not eq:
                if i + 1 >= len(overrides):
                    raise ValueError(f"{path}: override --{key} has no value")
                value, i = overrides[i + 1], i + 1
            assets[key] = value
        else:
            rest.append(overrides[i])
        i += 1
    for key, value in assets.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path}: key {key!r} expects a folder (str), got {value!r} ({type(value).__name__})")
    return rest, assets


def _check_aot_keys(keys: list[str], known: set[str], method, path: str) -> None:
    """An AOT key in the recipe of a method that is not AOT (dpo, ipo, kto, sft) cannot be honoured: say why."""
    from .configs import AOTArguments

    aot = [k for k in keys if k not in known and k in {f.name for f in dataclasses.fields(AOTArguments)}]
    if not aot:
        return
    why = ""
    if "aot_sort_scope" in aot:
        why = (f" ({method.name}'s loss is a mean of per-sample terms, so its micro-batches' gradients already add "
               "up to the optimizer batch's: aot_sort_scope, the batch AOT sorts, means nothing there)")
    raise ValueError(f"{path}: key(s) {sorted(aot)} apply to the AOT methods only, not to method "
                     f"{method.name!r}{why}; remove them")


def _check_values(method: str, args, path: str) -> None:
    """Ranges the trainer configs do not check (or check only once training has started)."""
    lr = args.learning_rate
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{path}: key 'learning_rate' must be a finite number > 0, got {lr}")
    # unpaired AOT needs a positive and a negative in every sorted batch (one micro-batch, or the optimizer batch
    # under aot_sort_scope: optimizer_batch); TRL's KTO estimates its KL term from the batch
    least = 2 if METHODS[method].data in ("unpaired", "paired_or_unpaired") else 1
    if METHODS[method].aot and args.aot_sort_scope == "optimizer_batch" and args.gradient_accumulation_steps > 1:
        least = 1
    for key, low in (("per_device_train_batch_size", least), ("per_device_eval_batch_size", 1),
                     ("gradient_accumulation_steps", 1)):
        if getattr(args, key) < low:
            why = f" for method {method!r}" if low > 1 else ""
            raise ValueError(f"{path}: key {key!r} must be >= {low}{why}, got {getattr(args, key)}")
    # transformers reads max_steps <= 0 as "use num_train_epochs" (3 by default): max_steps 0 trained three epochs
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"{path}: key 'max_steps' must be >= 1 (or -1: train num_train_epochs), "
                         f"got {args.max_steps}")
    if args.max_steps == -1 and not (math.isfinite(args.num_train_epochs) and args.num_train_epochs > 0):
        raise ValueError(f"{path}: key 'num_train_epochs' must be a finite number > 0 when max_steps is -1, "
                         f"got {args.num_train_epochs}")
    if method != "sft" and not (math.isfinite(args.beta) and args.beta > 0):
        raise ValueError(f"{path}: key 'beta' must be a finite number > 0, got {args.beta}")


def check_types(classes: list[type], values: dict, path: str) -> None:
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


def _set_env(env, path: str) -> None:
    """A recipe's ``env:`` block sets environment variables (as TRL's TrlParser does)."""
    if not isinstance(env, dict):
        raise ValueError(f"{path}: key 'env' must be a mapping of variable names to values")
    for key, value in env.items():
        os.environ[str(key)] = str(value)


def parse_recipe(path: str, overrides: list[str] | None = None, *, data_format: str | None = None) -> Recipe:
    """Parse a recipe YAML plus ``--key value`` overrides; raise naming the key and the file.

    ``data_format``: what the train data is (``aot_handbook.methods.DATA_FORMATS``), once known; it picks
    the config class where a method has one per format (aot_unpaired on truly unpaired rows).
    The trainer configs (TRL, transformers) load here, on first use, not when this module is imported."""
    from transformers import HfArgumentParser
    from trl import ModelConfig

    from .configs import RecipeArguments

    overrides = list(overrides or [])
    if data_format is not None and data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    raw = read_recipe(path, "train")
    _check_overrides(overrides, path)
    rest, assets = _task_assets(overrides, raw, path)
    method = get_method(_method_from(rest, raw), path)
    config_class = method.config_class(data_format)
    # the method sets TRL's loss_type, except on a config class that fixes its own (AOTUnpairedConfig)
    loss_type = method.loss_type if config_class is method.config_class() else None
    if "loss_type" in raw and loss_type and raw["loss_type"] not in (loss_type, [loss_type]):
        raise ValueError(f"{path}: key 'loss_type' is set by 'method: {method.name}'; remove it")
    defaults = {"output_dir": str(Path("runs") / f"{Path(path).parent.name}-{Path(path).stem}")}
    if loss_type:
        is_list = typing.get_origin(typing.get_type_hints(config_class)["loss_type"]) is list
        defaults["loss_type"] = [loss_type] if is_list else loss_type
        if raw.get("loss_type") in ([loss_type], loss_type):
            raw = {k: v for k, v in raw.items() if k != "loss_type"}
    merged = {**defaults, **raw}
    classes = [RecipeArguments, ModelConfig, config_class]
    known = {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in merged if k not in known and k != "env" and k not in assets]
    _check_aot_keys(unknown + [o[2:].split("=", 1)[0] for o in overrides if o.startswith("--")], known, method, path)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} for method {method.name!r}")
    check_types(classes, merged, path)
    if "env" in merged:
        _set_env(merged["env"], path)
    # No prefix matching of overrides (--learning 1e-5 is a mistake, not --learning_rate); a bad value is an
    # error to raise, not a SystemExit.
    parser = HfArgumentParser(classes, allow_abbrev=False, exit_on_error=False)
    parser.set_defaults(**{k: v for k, v in merged.items() if k != "env" and k not in assets})
    try:
        recipe_args, model_args, training_args, rest = parser.parse_args_into_dataclasses(
            rest, return_remaining_strings=True)
    except argparse.ArgumentError as err:
        raise ValueError(f"{path}: command-line override: {err}") from None
    except ValueError as err:  # a config's own check (__post_init__)
        raise ValueError(f"{path}: {err}") from err
    if rest:
        raise ValueError(f"{path}: unknown command-line override(s) {rest}")
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
    _check_values(method.name, training_args, path)
    if hasattr(training_args, "aot_attributes"):  # aot_multi: every weight names an attribute the data lists
        from .data import DatasetMixture, check_weights  # datasets loads on first use, not with this module

        task = task_of(assets)  # its data files are built with the task's assets, before training
        pending = tuple(f.resolve() for f in task.asset_folders(assets)) if task else ()
        mixture = DatasetMixture.from_dict(recipe_args.dataset_mixture, source=path, pending=pending)
        check_weights(training_args.aot_attributes, mixture, path)
    return Recipe(path, method.name, recipe_args, model_args, training_args, merged, overrides, data_format, assets)
