"""Recipes: one YAML holds model, LoRA, data and trainer arguments (alignment-handbook style).

A recipe is parsed once into typed objects (``Recipe``): the YAML's keys are checked against the
fields of the classes its ``method`` uses (``aot_handbook.methods``), its values become the
defaults of a ``transformers.HfArgumentParser`` over those classes, and ``--key value`` overrides
on the command line are parsed on top (bare boolean flags such as ``--use_peft`` mean true). Errors
name the key and the recipe file, and come before any model or dataset loads.

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
from transformers import HfArgumentParser
from trl import ModelConfig

from .configs import RecipeArguments
from .methods import DATA_FORMATS, METHODS, get_method


@dataclass
class Recipe:
    path: str
    method: str
    recipe: RecipeArguments
    model: ModelConfig
    training: typing.Any  # the method's trainer config (AOTConfig, DPOConfig, ...)
    raw: dict  # the YAML mapping with the defaults filled in (provenance)
    overrides: list[str]  # the command-line overrides applied on top of it
    # what the loaded train split is (paired, unpaired, sft): None until the data is loaded (run.load_data)
    data_format: str | None = None

    def resolved(self) -> dict:
        """Every recipe key (recipe, model and trainer arguments) with the value the run used, after
        defaults and overrides, JSON-safe, sorted by key; plus ``data_format`` once the data is loaded.
        Secrets stay masked (``hub_token``); other ``*_token`` values are kept (``pad_token`` is no secret)."""
        training = self.training.to_dict()  # values of *_token keys come masked
        training.update({k: getattr(self.training, k) for k, v in training.items()
                         if v == f"<{k.upper()}>" and not k.startswith("hub_")})
        training.pop("local_rank", None)  # the process's rank, set by the launcher: not a setting of the run
        config = {**dataclasses.asdict(self.recipe), **dataclasses.asdict(self.model), **training,
                  "data_format": self.data_format}
        return json.loads(json.dumps(dict(sorted(config.items())), default=str))


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


def _check_values(method: str, args, path: str) -> None:
    """Ranges the trainer configs do not check (or check only once training has started)."""
    lr = args.learning_rate
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{path}: key 'learning_rate' must be a finite number > 0, got {lr}")
    # unpaired AOT needs a positive and a negative in every batch; TRL's KTO estimates its KL term from the batch
    least = 2 if METHODS[method].data in ("unpaired", "paired_or_unpaired") else 1
    for key, low in (("per_device_train_batch_size", least), ("per_device_eval_batch_size", 1),
                     ("gradient_accumulation_steps", 1)):
        if getattr(args, key) < low:
            why = f" for method {method!r}" if low > 1 else ""
            raise ValueError(f"{path}: key {key!r} must be >= {low}{why}, got {getattr(args, key)}")
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
    the config class where a method has one per format (aot_unpaired on truly unpaired rows)."""
    overrides = list(overrides or [])
    if data_format is not None and data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    raw = _read_yaml(path)
    _check_overrides(overrides, path)
    method = get_method(_method_from(overrides, raw), path)
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
    unknown = [k for k in merged if k not in known and k != "env"]
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} for method {method.name!r}")
    check_types(classes, merged, path)
    if "env" in merged:
        _set_env(merged["env"], path)
    # No prefix matching of overrides (--learning 1e-5 is a mistake, not --learning_rate); a bad value is an
    # error to raise, not a SystemExit.
    parser = HfArgumentParser(classes, allow_abbrev=False, exit_on_error=False)
    parser.set_defaults(**{k: v for k, v in merged.items() if k != "env"})
    try:
        recipe_args, model_args, training_args, rest = parser.parse_args_into_dataclasses(
            overrides, return_remaining_strings=True)
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
        from .data import DatasetMixture
        from .multi_reward import check_weights

        check_weights(training_args.aot_attributes, DatasetMixture.from_dict(recipe_args.dataset_mixture, source=path),
                      path)
    return Recipe(path, method.name, recipe_args, model_args, training_args, merged, overrides, data_format)
