"""Check recipes, sweeps and accelerate configs offline, before any GPU time is spent.

No weights and no datasets are loaded; nothing is downloaded. What is checked:

- recipes: every key known to the method's config classes (``parse_recipe``), the method, the AOT
  penalty and sort, the ``dataset_mixture`` block (``DatasetMixture.from_dict``), ``requires`` files,
  the chat template (compiles and renders a conversation), and the LoRA target modules against the
  module names of the model's architecture family (MODEL_FAMILIES / LORA_MODULES below);
- sweeps (``*.sweep.yaml``): every run expanded and parsed as it will run (``aot_handbook.sweep``);
- accelerate configs (files under an ``accelerate_configs`` folder): YAML, top-level keys known to
  accelerate's ``ClusterConfig``, ``fsdp_config`` / ``deepspeed_config`` keys known to ``accelerate
  launch``, the config loads through accelerate's own loader, and an FSDP config builds accelerate's
  FSDP plugin as ``accelerate launch`` would;
- evaluation recipes (files under an ``eval`` folder): ``aot_handbook.evaluation``'s own loader.

A GPU recipe (bf16) is parsed with ``--use_cpu true`` on a machine without a GPU: transformers
otherwise refuses bf16 at parse time, and device choice is not what is being checked.

    python scripts/validate_recipes.py [PATHS...]     # default: recipes/
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

# Module names LoRA can target, per architecture family (transformers' modeling_llama / modeling_mistral).
LORA_MODULES: dict[str, set[str]] = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"},
    "mistral": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
                "lm_head"},
}
# Hub ids of the paper's models -> family (config.json's model_type). Local folders are read directly.
MODEL_FAMILIES: dict[str, str] = {
    "ibm/merlinite-7b": "mistral",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral",
    "mistralai/Mistral-7B-v0.1": "mistral",
    "teknium/OpenHermes-2.5-Mistral-7B": "mistral",
    "berkeley-nest/Starling-LM-7B-alpha": "mistral",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama",
    "meta-llama/Meta-Llama-3-8B": "llama",
}
PEFT_SPECIAL_TARGETS = {"all-linear"}
SAMPLE_CONVERSATION = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


class ValidationError(ValueError):
    """A bad recipe, sweep or accelerate config; the message names the file and the key."""


def _fail(path, key: str | None, why: str) -> ValidationError:
    return ValidationError(f"{path}: key '{key}': {why}" if key else f"{path}: {why}")


# ------------------------------------------------------------------ recipes


def model_family(name_or_path: str, recipe=None, _seen: frozenset = frozenset()) -> str | None:
    """Architecture family of a model without loading it: a local config.json, the table above, or the
    model a required recipe trains into this path (e.g. an SFT stage not run yet)."""
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    if name_or_path in MODEL_FAMILIES:
        return MODEL_FAMILIES[name_or_path]
    try:  # a hub model already in the local cache (never downloads)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name_or_path, local_files_only=True).model_type
    except Exception:
        pass
    from .configs import parse_recipe

    for required in (recipe.recipe.requires or []) if recipe is not None else []:
        if required in _seen or not Path(required).is_file():
            continue
        try:
            needed = parse_recipe(required, _cpu_overrides(required))
        except (ValueError, FileNotFoundError):
            continue
        if Path(needed.training.output_dir) == Path(name_or_path):
            return model_family(needed.model.model_name_or_path, needed, _seen | {required})
    return None


def _cpu_overrides(path: str) -> list[str]:
    import torch

    return [] if torch.cuda.is_available() else ["--use_cpu", "true"]


def _looks_unpaired(mixture: dict) -> bool:
    """Whether the data is (or may be) one-completion-per-row: then aot_unpaired runs on the KTO-based config."""
    if mixture.get("unpair"):
        return True
    for spec in mixture.get("datasets") or []:
        if not isinstance(spec, dict):
            continue
        if spec.get("binarize") or "label" in (spec.get("columns") or {}):
            return True
        for files in (spec.get("data_files") or {}).values():
            for f in [files] if isinstance(files, str) else files or []:
                if str(f).endswith(".jsonl") and Path(f).is_file():
                    with open(f) as fh:
                        first = fh.readline()
                    try:
                        row = json.loads(first)
                    except ValueError:
                        continue
                    if isinstance(row, dict) and "label" in row and "chosen" not in row:
                        return True
    return False


def _check_chat_template(path, template: str) -> None:
    from .chat_templates import render

    try:
        text = render(template, SAMPLE_CONVERSATION, bos_token="<s>", eos_token="</s>")
        prompt = render(template, SAMPLE_CONVERSATION[:1], add_generation_prompt=True, bos_token="<s>",
                        eos_token="</s>")
    except Exception as err:  # jinja2 syntax or a raise_exception in the template
        raise _fail(path, "chat_template", f"does not render a user/assistant conversation: {err}") from None
    if "What is 2+2?" not in text or "4" not in text.split("What is 2+2?", 1)[1]:
        raise _fail(path, "chat_template", f"renders without the messages' content: {text!r}")
    if not text.startswith(prompt.rstrip()):  # TRL takes the completion as the rest after the prompt
        raise _fail(path, "chat_template", "the generation prompt is not a prefix of the full conversation "
                                           f"({prompt!r} vs {text!r})")


def validate_recipe(path: str | Path, _seen: frozenset = frozenset()):
    """Parse and check one recipe; return the parsed Recipe. Raises ValidationError naming file and key."""
    from .configs import METHODS, AOTUnpairedConfig, parse_recipe
    from .loss import PENALTIES, SORTS

    path = str(path)
    overrides = _cpu_overrides(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise _fail(path, None, f"cannot read YAML: {err}") from None
    if isinstance(raw, dict) and raw.get("tiny_assets"):
        # The offline pipeline's data files are built on first use (as `train` does), not committed.
        from .tiny import ensure_tiny_assets

        ensure_tiny_assets(raw["tiny_assets"])
    try:
        recipe = parse_recipe(path, overrides)
    except (ValueError, FileNotFoundError) as err:
        raise ValidationError(str(err)) from None
    except SystemExit:  # argparse rejected a value (it has printed which)
        raise _fail(path, None, "a value was rejected by the argument parser (see above)") from None
    args = recipe.training
    if recipe.method.startswith("aot"):
        if args.aot_penalty not in PENALTIES:
            raise _fail(path, "aot_penalty", f"unknown penalty {args.aot_penalty!r}; expected one of {list(PENALTIES)}")
        if args.aot_sort not in SORTS:
            raise _fail(path, "aot_sort", f"unknown sort {args.aot_sort!r}; expected one of {list(SORTS)}")
    mixture = recipe.recipe.dataset_mixture
    if recipe.method == "aot_unpaired" and _looks_unpaired(mixture):
        try:
            parse_recipe(path, overrides, config_class=AOTUnpairedConfig)
        except (ValueError, FileNotFoundError) as err:
            raise ValidationError(f"{err} (unpaired data: the recipe also runs on the KTO-based "
                                  "AOTUnpairedConfig, so its keys must be valid there)") from None
    try:
        from .data import DatasetMixture
    except ImportError:  # data.py not there yet: nothing to check the block with
        DatasetMixture = None
    if DatasetMixture is not None:
        try:
            parsed = DatasetMixture.from_dict(mixture, source=path)
        except ValueError as err:
            raise ValidationError(str(err)) from None
        fmt = METHODS[recipe.method][1]
        if fmt == "paired" and parsed.unpair:
            raise _fail(path, "dataset_mixture.unpair", f"is true but method {recipe.method!r} needs paired data")
    for required in recipe.recipe.requires or []:
        if not Path(required).is_file():
            raise _fail(path, "requires", f"recipe not found: {required}")
        if required not in _seen:
            validate_recipe(required, _seen | {path})
    if recipe.recipe.chat_template:
        _check_chat_template(path, recipe.recipe.chat_template)
    if recipe.model.use_peft:
        targets = recipe.model.lora_target_modules
        targets = [targets] if isinstance(targets, str) else targets
        if targets and not set(targets) <= PEFT_SPECIAL_TARGETS:
            name = recipe.model.model_name_or_path
            family = model_family(name, recipe)
            if family not in LORA_MODULES:
                raise _fail(path, "model_name_or_path", f"cannot check lora_target_modules: unknown architecture "
                            f"family {family!r} of {name!r}; add it to aot_handbook.validate.MODEL_FAMILIES / LORA_MODULES")
            bad = [t for t in targets if t not in LORA_MODULES[family]]
            if bad:
                raise _fail(path, "lora_target_modules", f"{bad} are not modules of a {family} model "
                            f"(known: {sorted(LORA_MODULES[family])})")
    return recipe


# ------------------------------------------------------------------ accelerate configs


def _launch_option_names() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {action.dest for action in launch_command_parser()._actions}


def validate_accelerate_config(path: str | Path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    path = str(path)
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise _fail(path, None, f"cannot read YAML: {err}") from None
    if not isinstance(config, dict):
        raise _fail(path, None, "an accelerate config must be a YAML mapping")
    known = {f.name for f in dataclasses.fields(ClusterConfig)}
    for key in config:
        if key not in known:
            raise _fail(path, key, f"not an accelerate config key (known: {sorted(known)})")
    distributed = config.get("distributed_type")
    if distributed not in {t.value for t in DistributedType}:
        raise _fail(path, "distributed_type", f"{distributed!r} is not one of {[t.value for t in DistributedType]}")
    if config.get("mixed_precision") not in (None, "no", "fp16", "bf16", "fp8"):
        raise _fail(path, "mixed_precision", f"{config['mixed_precision']!r} is not one of no, fp16, bf16, fp8")
    options = _launch_option_names()
    for block in ("fsdp_config", "deepspeed_config"):
        for key in config.get(block) or {}:
            if key not in options:
                raise _fail(path, f"{block}.{key}", "not an option `accelerate launch` knows")
    try:
        cluster = ClusterConfig.from_yaml_file(path)
    except Exception as err:
        raise _fail(path, None, f"accelerate cannot load it: {err}") from None
    if distributed == "FSDP":
        _check_fsdp_plugin(path)
    return cluster


def _check_fsdp_plugin(path: str) -> None:
    """Build accelerate's FSDP plugin the way `accelerate launch` would (config -> launch args -> FSDP_*
    environment -> plugin), which catches combinations the key check cannot (e.g. FSDP1-only options with
    fsdp_version 2). FSDP1's plugin needs an accelerator device, so on a CPU-only machine it is skipped."""
    import os
    from unittest import mock

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    try:
        args = launch_command_parser().parse_args(["--config_file", path, "scripts/train.py"])
        args, _, _ = _validate_launch_command(args)
        env = prepare_multi_gpu_env(args)
        with mock.patch.dict(os.environ, env):
            FullyShardedDataParallelPlugin()
    except RuntimeError as err:
        if "no available devices" in str(err):
            return
        raise _fail(path, "fsdp_config", f"accelerate rejects it: {err}") from None
    except (ValueError, TypeError, KeyError) as err:
        raise _fail(path, "fsdp_config", f"accelerate rejects it: {err}") from None


# ------------------------------------------------------------------ files and folders


def kind_of(path: str | Path) -> str:
    """'accelerate', 'sweep', 'reproduce' (a make reproduce-tiny spec), 'recipe', or 'eval' (evaluation recipes under an `eval` folder: not training
    recipes; checked with the evaluation package's own loader when it is there)."""
    from .sweep import is_sweep_file

    path = Path(path)
    if "accelerate_configs" in path.parts:
        return "accelerate"
    if "eval" in path.parts[:-1]:
        return "eval"
    if path.name.endswith(".sweep.yaml") or is_sweep_file(path):
        return "sweep"
    try:
        if "sweeps" in (yaml.safe_load(path.read_text()) or {}):
            return "reproduce"
        if "scorer" in (yaml.safe_load(path.read_text()) or {}):
            return "pairs"  # a `make pairs` recipe (aot_handbook.pairs)
    except (OSError, yaml.YAMLError, TypeError):
        pass
    return "recipe"


def validate_file(path: str | Path) -> str:
    """Validate one file by its kind; return the kind. Raises ValidationError."""
    from .sweep import SweepError, expand

    kind = kind_of(path)
    if kind == "accelerate":
        validate_accelerate_config(path)
    elif kind == "eval":
        try:
            from .evaluation.common import load_eval_recipe
        except ImportError:
            return kind
        try:
            load_eval_recipe(path)
        except ValueError as err:
            raise ValidationError(str(err)) from None
    elif kind == "reproduce":
        from .reproduce import load

        try:
            load(str(path), check=True)
        except SweepError as err:
            raise ValidationError(str(err)) from None
    elif kind == "pairs":
        from .pairs import parse_pairs_recipe

        try:
            parse_pairs_recipe(str(path))
        except (ValueError, FileNotFoundError) as err:
            raise ValidationError(str(err)) from None
    elif kind == "sweep":
        try:
            expand(str(path), check=True)
        except SweepError as err:
            raise ValidationError(str(err)) from None
    else:
        validate_recipe(path)
    return kind


def collect(paths: list[str]) -> list[Path]:
    """YAML files under the given files/folders, sorted; folders are searched recursively."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise ValidationError(f"{p}: no such file or folder")
    return files


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Validate recipes, sweeps and accelerate configs offline.")
    parser.add_argument("paths", nargs="*", default=["recipes"], help="files or folders (default: recipes)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and the total")
    args = parser.parse_args(argv)
    try:
        files = collect(args.paths)
        for f in files:
            kind = validate_file(f)
            if not args.quiet:
                print(f"ok  {kind:11s} {f}")
    except ValidationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(files)} file(s) valid")
    return 0
