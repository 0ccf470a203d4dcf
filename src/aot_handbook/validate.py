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
- evaluation recipes (files under an ``eval`` folder): ``aot_handbook.evaluation``'s own loader, and every
  lm-eval task / metric / filter an lm_eval recipe names against lm-eval's task registry (offline);
- packages and launchers: a recipe's optimizer (``optim``) and quantization (``load_in_4bit/8bit``) and a
  DeepSpeed accelerate config need only packages installed or named in setup.cfg (install_requires or an
  extra); each recipe and sweep is checked against the accelerate configs validated with it (and a sweep
  against its ``launch.accelerate_config``): bitsandbytes optimizers only with one process or DDP.

A GPU recipe (bf16) is parsed with ``--use_cpu true`` on a machine without a GPU: transformers
otherwise refuses bf16 at parse time, and device choice is not what is being checked.

    aot-validate [PATHS...] [--launcher ACCELERATE_CONFIG]    # default: recipes/ (in the working directory)
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import yaml

from .models import BASE_MODELS

# Module names LoRA can target, per architecture family (transformers' modeling_llama / modeling_mistral).
LORA_MODULES: dict[str, set[str]] = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"},
    "mistral": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
                "lm_head"},
}
# Hub ids -> family (config.json's model_type): the base-model registry's, and the models they were tuned
# from. Local folders are read directly.
MODEL_FAMILIES: dict[str, str] = {
    **{m.hub_id: m.family for m in BASE_MODELS.values()},
    "mistralai/Mistral-7B-v0.1": "mistral",
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
    from .recipe import parse_recipe

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
    """Whether the data is (or may be) one-completion-per-row: then aot_unpaired runs on the KTO-based config.
    A guess from the recipe alone, for validation; a run decides from its loaded rows (run.data_format)."""
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


def validate_recipe(path: str | Path, _seen: frozenset = frozenset(), launchers: list | tuple = ()):
    """Parse and check one recipe; return the parsed Recipe. Raises ValidationError naming file and key.
    ``launchers``: accelerate configs the recipe is checked to run under (optimizer/launcher pair)."""
    from .loss import PENALTIES, SORTS
    from .methods import METHODS
    from .recipe import parse_recipe
    from .tasks import task_of

    path = str(path)
    overrides = _cpu_overrides(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise _fail(path, None, f"cannot read YAML: {err}") from None
    task = task_of(raw) if isinstance(raw, dict) else None
    if task is not None:  # a task's data files are built on first use (as `train` does), not committed
        task.ensure_assets(task.assets_root(raw))
    try:
        recipe = parse_recipe(path, overrides)
    except (ValueError, FileNotFoundError) as err:
        raise ValidationError(str(err)) from None
    args = recipe.training
    if METHODS[recipe.method].aot:
        if args.aot_penalty not in PENALTIES:
            raise _fail(path, "aot_penalty",
                        f"unknown penalty {args.aot_penalty!r}; expected one of {list(PENALTIES)}")
        if args.aot_sort not in SORTS:
            raise _fail(path, "aot_sort", f"unknown sort {args.aot_sort!r}; expected one of {list(SORTS)}")
    mixture = recipe.recipe.dataset_mixture
    # The run decides the data format once its rows are loaded; here, without loading them, a method whose
    # config class depends on it is checked with the unpaired one too where the data may be unpaired.
    if METHODS[recipe.method].unpaired_config and _looks_unpaired(mixture):
        try:
            parse_recipe(path, overrides, data_format="unpaired")
        except (ValueError, FileNotFoundError) as err:
            raise ValidationError(f"{err} (unpaired data: the recipe also runs on the KTO-based "
                                  "AOTUnpairedConfig, so its keys must be valid there)") from None
    try:
        from .data import DatasetMixture
    except ImportError:  # data.py not there yet: nothing to check the block with
        DatasetMixture = None
    if DatasetMixture is not None:
        try:
            from .pairs import pairs_output

            pending = tuple(out.resolve() for r in recipe.recipe.requires or [] if Path(r).is_file()
                            for out in [pairs_output(r)] if out is not None)
            parsed = DatasetMixture.from_dict(mixture, source=path, pending=pending)
        except ValueError as err:
            raise ValidationError(str(err)) from None
        fmt = METHODS[recipe.method].data
        if fmt == "paired" and parsed.unpair:
            raise _fail(path, "dataset_mixture.unpair", f"is true but method {recipe.method!r} needs paired data")
    for launcher in launchers or [None]:
        check_optimizer(path, args.optim, launcher)
    for key in ("load_in_4bit", "load_in_8bit"):
        if getattr(recipe.model, key, False):
            _require_package(path, key, "bitsandbytes", f"{key} (QLoRA)")
    for required in recipe.recipe.requires or []:
        if not Path(required).is_file():
            raise _fail(path, "requires", f"recipe not found: {required}")
        if required not in _seen:
            if kind_of(required) == "pairs":
                validate_file(required)
            else:
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
                            f"family {family!r} of {name!r}; "
                            "add it to aot_handbook.validate.MODEL_FAMILIES / LORA_MODULES")
            bad = [t for t in targets if t not in LORA_MODULES[family]]
            if bad:
                raise _fail(path, "lora_target_modules", f"{bad} are not modules of a {family} model "
                            f"(known: {sorted(LORA_MODULES[family])})")
    return recipe


# ------------------------------------------------------------------ packages, optimizers and launchers

SETUP_CFG = Path(__file__).resolve().parents[2] / "setup.cfg"
# bitsandbytes #1633 ("illegal memory access with FSDP2"), torchtune #1856: paged optimizers on sharded
# (DTensor) parameters. Known to work: one process or plain DDP (each rank holds whole parameters).
BNB_LAUNCHERS = {"NO", "MULTI_GPU"}


def declared_packages(setup_cfg: str | Path | None = None) -> dict[str, str]:
    """Distribution name -> where the project declares it ('install_requires' or the extra's name)."""
    import configparser
    import re

    setup_cfg = Path(setup_cfg or SETUP_CFG)
    where: dict[str, str] = {}
    if setup_cfg.is_file():
        cfg = configparser.ConfigParser()
        cfg.read(setup_cfg)
        where["install_requires"] = cfg.get("options", "install_requires", fallback="")
        if cfg.has_section("options.extras_require"):
            where.update(cfg.items("options.extras_require"))
    else:  # an installed (not editable) package: its metadata lists the same requirements
        from importlib import metadata

        try:
            requires = metadata.requires("aot-handbook") or []
        except metadata.PackageNotFoundError:
            requires = []
        for req in requires:
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", req)
            place = extra.group(1) if extra else "install_requires"
            where[place] = where.get(place, "") + "\n" + req.split(";")[0]
    out: dict[str, str] = {}
    for place, block in where.items():
        for line in block.splitlines():
            name = re.match(r"\s*([A-Za-z0-9_.-]+)", line.split("#", 1)[0])
            if name:
                out.setdefault(re.sub(r"[-_.]+", "-", name.group(1)).lower(), place)
    return out


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def _require_package(path, key: str, dist: str, what: str) -> None:
    """``dist`` must be installed here or declared by the project (install_requires or an extra)."""
    if _installed(dist) or dist in declared_packages():
        return
    raise _fail(path, key, f"{what} needs the `{dist}` package, which is neither installed nor named in "
                           f"setup.cfg (install_requires or an extra)")


def optimizer_package(optim: str) -> str | None:
    """The package transformers' Trainer imports for optimizer ``optim`` (None: torch's own)."""
    from transformers import trainer_optimizer as opt

    groups = {"bitsandbytes": opt._BITSANDBYTES_OPTIMIZERS, "galore-torch": opt._GALORE_OPTIMIZERS,
              "apollo-torch": opt._APOLLO_OPTIMIZERS, "torchao": opt._TORCHAO_OPTIMIZERS,
              "schedulefree": opt._SCHEDULE_FREE_OPTIMIZERS}
    return next((dist for dist, names in groups.items() if optim in {n.value for n in names}), None)


def launcher_kind(accelerate_config: str | Path) -> str:
    """'NO', 'MULTI_GPU', 'FSDP1', 'FSDP2', 'DEEPSPEED', ... of an accelerate config file."""
    config = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    kind = str(config.get("distributed_type", "NO"))
    if kind == "FSDP":
        kind += str((config.get("fsdp_config") or {}).get("fsdp_version", 1))
    return kind


def check_optimizer(path, optim: str, launcher: str | Path | None = None) -> None:
    """The optimizer's package is installed or declared; with ``launcher`` (an accelerate config), the pair is
    one known to work."""
    optim = getattr(optim, "value", optim)
    dist = optimizer_package(optim)
    if dist:
        _require_package(path, "optim", dist, f"optimizer {optim!r}")
    if dist == "bitsandbytes" and launcher is not None and launcher_kind(launcher) not in BNB_LAUNCHERS:
        kind = launcher_kind(launcher)
        why = (" (paged bitsandbytes optimizers fail on FSDP2's sharded parameters: bitsandbytes #1633, "
               "torchtune #1856)" if kind == "FSDP2" and optim.startswith("paged") else "")
        raise _fail(path, "optim", f"{optim!r} is not known to work with {launcher} ({kind}){why}; use "
                                   "adamw_torch there, or a bitsandbytes optimizer with one process or DDP "
                                   "(recipes/accelerate_configs/ddp.yaml)")


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
    if distributed == "DEEPSPEED":
        _require_package(path, "distributed_type", "deepspeed", "DeepSpeed")
        _check_deepspeed_config(path)
    return cluster


def _check_deepspeed_config(path: str) -> None:
    """With DeepSpeed installed (``pip install -e ".[deepspeed]"``): build the DeepSpeed config the way
    `accelerate launch` + the trainer would (config -> launch args -> ACCELERATE_DEEPSPEED_* environment ->
    accelerate's DeepSpeedPlugin) and parse it with DeepSpeed's own ``DeepSpeedConfig`` (its pydantic checks
    of the ZeRO stage, offload devices, ...). The trainer fills the "auto" batch sizes; 1 stands in here."""
    import importlib.util
    import json
    import os
    from unittest import mock

    if importlib.util.find_spec("deepspeed") is None:
        return
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    try:
        args = launch_command_parser().parse_args(["--config_file", path, "-m", "aot_handbook.cli", "train"])
        args, defaults, mixed_precision_from_config = _validate_launch_command(args)
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as accelerate's launch_command sets it
        _, env = prepare_deepspeed_cmd_env(args)
        with mock.patch.dict(os.environ, env):
            plugin = DeepSpeedPlugin()
        from deepspeed.runtime.config import DeepSpeedConfig

        DeepSpeedConfig(json.loads(json.dumps(plugin.deepspeed_config).replace('"auto"', "1")))
    except Exception as err:  # accelerate's ValueErrors, DeepSpeed's pydantic ValidationError, ...
        raise _fail(path, "deepspeed_config", f"DeepSpeed rejects it: {err}") from None


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
        args = launch_command_parser().parse_args(["--config_file", path, "-m", "aot_handbook.cli", "train"])
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


# ------------------------------------------------------------------ evaluation recipes: lm-eval tasks


@functools.cache
def _lm_eval_registry() -> dict[str, tuple[str, set | None, set]] | None:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        return None
    return {name: _task_entry(e.kind.name, e.cfg or {}) for name, e in TaskManager().task_index.items()}


def lm_eval_tasks(include_path: str | None = None) -> dict[str, tuple[str, set | None, set]] | None:
    """lm-eval's task registry, offline: name -> (kind, metric names or None if unknown, filter names).
    Built once per process (the index takes 7-9 s); None when lm-eval is not installed."""
    registry = _lm_eval_registry()
    if registry is None:
        return None
    out = dict(registry)
    if include_path:  # local task YAMLs (e.g. the tiny tasks): read directly, no second index
        for f in Path(include_path).glob("*.yaml"):
            cfg = yaml.load(f.read_text(), Loader=_AnyTagLoader) or {}
            if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
                out[cfg["task"]] = _task_entry("TASK", cfg)
    return out


class _AnyTagLoader(yaml.SafeLoader):
    """lm-eval task YAMLs use tags such as !function; their values do not matter here."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _task_entry(kind: str, cfg: dict) -> tuple[str, set | None, set]:
    listed = cfg.get("metric_list") or cfg.get("aggregate_metric_list")
    metrics = {m["metric"] for m in listed if isinstance(m, dict) and "metric" in m} if listed else None
    return kind, metrics, {f["name"] for f in cfg.get("filter_list") or [] if isinstance(f, dict)} or {"none"}


def check_lm_eval_recipe(path, recipe: dict) -> None:
    """Every task and every ``columns`` entry (``task/metric,filter``, or a list of them averaged) of an
    lm_eval recipe names a task lm-eval knows, and a metric and filter that task reports."""
    import tempfile

    cfg = recipe.get("lm_eval") or {}
    include = cfg.get("include_path")
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.get("tiny_tasks"):  # written at evaluation time: write them once to read their names
            from .evaluation.harness import write_tiny_tasks

            include = str(write_tiny_tasks(tmp, [{"prompt": "47+38="}]))
        registry = lm_eval_tasks(include)
    if registry is None:
        return
    for name in cfg.get("tasks") or []:
        if name not in registry:
            raise _fail(path, "lm_eval.tasks", f"{name!r} is not a task lm-eval knows ({_near(name, registry)})")
    for column, specs in (cfg.get("columns") or {}).items():
        for spec in [specs] if isinstance(specs, str) else specs or []:
            key = f"lm_eval.columns.{column}"
            task, _, metric = str(spec).partition("/")
            name, _, filt = metric.partition(",")
            if task not in registry:
                raise _fail(path, key, f"{task!r} is not a task lm-eval knows ({_near(task, registry)})")
            kind, metrics, filters = registry[task]
            if kind not in ("TASK", "GROUP"):
                raise _fail(path, key, f"{task!r} is an lm-eval {kind.lower()}, which reports no score of its own; "
                                       "name one of its tasks")
            if not filt or (metrics is not None and name not in metrics) or (kind == "TASK" and filt not in filters):
                raise _fail(path, key, f"{spec!r}: task {task!r} reports "
                                       f"{sorted(f'{m},{f}' for m in metrics or [] for f in filters)}")


def _near(name: str, registry: dict) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6)
    return f"did you mean {close}?" if close else "see `lm-eval ls tasks`"


# ------------------------------------------------------------------ files and folders


def kind_of(path: str | Path) -> str:
    """'accelerate', 'sweep', 'reproduce' (a make reproduce-tiny spec), 'pairs' (a make pairs recipe), 'recipe',
    or 'eval' (evaluation recipes under an `eval` folder: not training recipes; checked with the evaluation
    package's own loader when it is there)."""
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


def validate_file(path: str | Path, launchers: list | tuple = ()) -> str:
    """Validate one file by its kind; return the kind. Raises ValidationError. A recipe or sweep is checked to
    run under each accelerate config in ``launchers`` (a sweep also under its own ``launch.accelerate_config``)."""
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
            recipe = load_eval_recipe(path)
        except ValueError as err:
            raise ValidationError(str(err)) from None
        if recipe.get("kind") == "lm_eval":
            check_lm_eval_recipe(path, recipe)
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
            runs = expand(str(path), check=True)
        except SweepError as err:
            raise ValidationError(str(err)) from None
        for run in runs:
            optim = run.overrides.get("optim") or (yaml.safe_load(Path(run.base).read_text()) or {}).get("optim")
            for launcher in [*launchers, *([run.launch["accelerate_config"]] if run.launch.get("accelerate_config")
                                           else [])]:
                check_optimizer(f"{path}: run {run.name}", optim or "adamw_torch", launcher)
    else:
        validate_recipe(path, launchers=launchers)
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

    parser = argparse.ArgumentParser(
        description="Validate recipes, sweeps and accelerate configs offline: loads no weights and no data, "
                    "downloads nothing; stops at the first bad file with an error naming the file and the key "
                    "(exit 1).", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  aot-validate recipes/tiny recipes/accelerate_configs")
    parser.add_argument("paths", nargs="*", default=["recipes"],
                        help="files or folders (default: recipes, relative to the working directory)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and the total")
    parser.add_argument("--launcher", action="append", default=None, metavar="ACCELERATE_CONFIG",
                        help="check recipes and sweeps against this accelerate config (repeatable; default: "
                             "every accelerate config among the files validated)")
    args = parser.parse_args(argv)
    try:
        files = collect(args.paths)
        launchers = args.launcher if args.launcher is not None else [f for f in files if kind_of(f) == "accelerate"]
        for f in files:
            kind = validate_file(f, launchers)
            if not args.quiet:
                print(f"ok  {kind:11s} {f}")
    except ValidationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(files)} file(s) valid")
    return 0
