"""``aot-validate``: check recipes, sweeps, grids, evaluation recipes and accelerate configs offline, before any GPU
time is spent.

No weights and no datasets are loaded; nothing is downloaded. Each file is checked by its kind, which its name says
(``aot_handbook.recipe.recipe_kind``):

- training recipes: every recipe of the plan that builds it (``aot_handbook.plan``: its ``requires``, each once)
  parsed with its method's config classes; the ``dataset_mixture`` block (``DatasetMixture.from_dict``; files a
  required stage writes need not exist yet); the chat template (compiles and renders a conversation); the LoRA
  target modules against the module names of the model's architecture family (MODEL_FAMILIES / LORA_MODULES
  below); the optimizer and quantization packages, and the optimizer under each accelerate config validated
  with it (:mod:`.launchers`);
- pairs recipes (``*.pairs.yaml``): their plan (requires, rounds and the rounds' training recipe);
- sweeps (``*.sweep.yaml``): every run expanded and parsed as it will run (:mod:`.sweep`), and its optimizer
  under the launchers (its own ``launch.accelerate_config`` too);
- reproduction grids (``*.grid.yaml``): every run of the grid parsed (:mod:`.reproduce`);
- evaluation recipes (``*.eval.yaml``): ``aot_handbook.evaluation``'s own loader, and every lm-eval task / metric /
  filter an lm_eval recipe names against lm-eval's task registry (offline);
- accelerate configs (files under an ``accelerate_configs`` folder): :func:`.launchers.validate_accelerate_config`.

A GPU recipe (bf16) is parsed with ``--use_cpu true`` on a machine without a GPU: transformers
otherwise refuses bf16 at parse time, and device choice is not what is being checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..chat_templates import render
from ..data import DatasetMixture
from ..errors import UserError
from ..evaluation.harness import check_lm_eval_recipe
from ..evaluation.pipeline import load_eval_recipe
from ..methods import METHODS
from ..models import BASE_MODELS
from ..plan import plan
from ..recipe import parse_recipe, read_recipe, recipe_kind
from ..tasks import task_of
from . import ValidationError, fail
from .launchers import check_optimizer, require_package, validate_accelerate_config
from .reproduce import load as load_grid
from .sweep import expand

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




# ------------------------------------------------------------------ training recipes


def model_family(name_or_path: str, stages=()) -> str | None:
    """Architecture family of a model without loading it: a local config.json, the table above, a hub model in
    the local cache, or the model the plan's training stage writing this path starts from (e.g. an SFT stage
    not run yet; ``stages``: a plan, ``aot_handbook.plan``)."""
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
    for stage in stages:
        if stage.kind == "train" and Path(stage.output) == Path(name_or_path):
            needed = parse_recipe(stage.recipe, [*stage.overrides, *cpu_overrides()])
            return model_family(needed.model.model_name_or_path, stages)
    return None


def cpu_overrides() -> list[str]:
    """What a GPU recipe needs to parse on a machine without a GPU (bf16 is refused at parse time otherwise)."""
    import torch

    return [] if torch.cuda.is_available() else ["--use_cpu", "true"]


def _looks_unpaired(mixture: dict) -> bool:
    """Whether the data is (or may be) one-completion-per-row: then aot_unpaired runs on the KTO-based config.
    A guess from the recipe alone, for validation; a run decides from its loaded rows (training.data_format)."""
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
    try:
        text = render(template, SAMPLE_CONVERSATION, bos_token="<s>", eos_token="</s>")
        prompt = render(template, SAMPLE_CONVERSATION[:1], add_generation_prompt=True, bos_token="<s>",
                        eos_token="</s>")
    except Exception as err:  # jinja2 syntax or a raise_exception in the template
        raise fail(path, "chat_template", f"does not render a user/assistant conversation: {err}") from None
    if "What is 2+2?" not in text or "4" not in text.split("What is 2+2?", 1)[1]:
        raise fail(path, "chat_template", f"renders without the messages' content: {text!r}")
    if not text.startswith(prompt.rstrip()):  # TRL takes the completion as the rest after the prompt
        raise fail(path, "chat_template", "the generation prompt is not a prefix of the full conversation "
                                           f"({prompt!r} vs {text!r})")


def validate_recipe(path: str | Path, launchers: list | tuple = ()):
    """Check one training recipe and every recipe of the plan that builds it; return the parsed Recipe. Raises
    ValidationError naming the file and key. ``launchers``: accelerate configs the recipes are checked to run
    under (optimizer/launcher pair)."""
    path = str(path)
    try:
        stages = plan(path, parse_with=cpu_overrides(), check_inputs=False)  # its requires, each once, then itself
        for i, stage in enumerate(stages):
            if stage.kind == "train":
                pending = tuple(s.output.resolve() for s in stages[:i])
                recipe = _check_training(stage.recipe, stages, pending, launchers)
    except ValidationError:
        raise
    except (UserError, ValueError, OSError) as err:
        raise ValidationError(str(err)) from None
    return recipe


def _check_training(path: str, stages, pending: tuple[Path, ...], launchers) -> object:
    """The checks of one training recipe beyond parsing it (``plan`` parsed it)."""
    raw = read_recipe(path, "train")
    task = task_of(raw)
    if task is not None:  # a task's data files are built on first use (as `train` does), not committed
        task.ensure_assets(task.assets_root(raw))
    overrides = cpu_overrides()
    recipe = parse_recipe(path, overrides)
    args, mixture = recipe.training, recipe.recipe.dataset_mixture
    # The run decides the data format once its rows are loaded; here, without loading them, a method whose
    # config class depends on it is checked with the unpaired one too where the data may be unpaired.
    if METHODS[recipe.method].unpaired_config and _looks_unpaired(mixture):
        try:
            parse_recipe(path, overrides, data_format="unpaired")
        except ValueError as err:
            raise ValidationError(f"{err} (unpaired data: the recipe also runs on the KTO-based "
                                  "AOTUnpairedConfig, so its keys must be valid there)") from None
    parsed = DatasetMixture.from_dict(mixture, source=path, pending=pending)
    if METHODS[recipe.method].data == "paired" and parsed.unpair:
        raise fail(path, "dataset_mixture.unpair", f"is true but method {recipe.method!r} needs paired data")
    for launcher in launchers or [None]:
        check_optimizer(path, args.optim, launcher)
    for key in ("load_in_4bit", "load_in_8bit"):
        if getattr(recipe.model, key, False):
            require_package(path, key, "bitsandbytes", f"{key} (QLoRA)")
    if recipe.recipe.chat_template:
        _check_chat_template(path, recipe.recipe.chat_template)
    if recipe.model.use_peft:
        targets = recipe.model.lora_target_modules
        targets = [targets] if isinstance(targets, str) else targets
        if targets and not set(targets) <= PEFT_SPECIAL_TARGETS:
            name = recipe.model.model_name_or_path
            family = model_family(name, stages)
            if family not in LORA_MODULES:
                raise fail(path, "model_name_or_path", f"cannot check lora_target_modules: unknown architecture "
                           f"family {family!r} of {name!r}; "
                           "add it to aot_handbook.tooling.validate.MODEL_FAMILIES / LORA_MODULES")
            bad = [t for t in targets if t not in LORA_MODULES[family]]
            if bad:
                raise fail(path, "lora_target_modules", f"{bad} are not modules of a {family} model "
                           f"(known: {sorted(LORA_MODULES[family])})")
    return recipe


def sort_batch_note(recipe) -> tuple[str, str | None]:
    """What one AOT sort of the recipe sees per optimizer step, as ranks x per-device x accumulation (R: the
    data-parallel processes launched), and a warning where accumulation does not enlarge it (``micro_batch``
    scope). ("", None) for a method that does not sort."""
    from ..configs import sort_batch  # (the trainer configs load TRL: only when a recipe is checked)

    if not METHODS[recipe.method].aot:
        return "", None
    args = recipe.training
    per_device, accumulation, scope = args.per_device_train_batch_size, args.gradient_accumulation_steps, \
        args.aot_sort_scope
    steps = accumulation if scope == "optimizer_batch" else 1
    factors = f"{per_device} x {steps}"
    one_rank = sort_batch(per_device, accumulation, scope, False)
    if args.aot_global_sort is False:
        note = f"sort batch: {factors} = {one_rank} per rank, each rank alone"
    else:
        note = f"sort batch: R x {factors} = {one_rank} x R, R ranks together"
    warning = None
    if scope == "micro_batch" and accumulation > 1:
        warning = (f"aot_sort_scope: micro_batch with gradient_accumulation_steps {accumulation}: each step "
                   f"sorts {per_device}-sample micro-batches alone, not the {per_device * accumulation} samples "
                   "per rank it steps on; optimizer_batch sorts them all (docs/MATH.md sec. 7)")
    return note, warning


# ------------------------------------------------------------------ files and folders


def validate_file(path: str | Path, launchers: list | tuple = ()) -> str:
    """Validate one file by its kind (its name, ``recipe_kind``); return the kind. Raises ValidationError naming
    the file and key. A recipe or sweep is checked to run under each accelerate config in ``launchers`` (a sweep
    also under its own ``launch.accelerate_config``)."""
    kind = recipe_kind(path)
    try:
        if kind == "accelerate":
            validate_accelerate_config(path)
        elif kind == "eval":
            recipe = load_eval_recipe(path)
            if recipe.get("kind") == "lm_eval":
                check_lm_eval_recipe(path, recipe)
        elif kind == "grid":
            load_grid(str(path), check=True)
        elif kind == "pairs":
            plan(str(path), parse_with=cpu_overrides(), check_inputs=False)
        elif kind == "sweep":
            for run in expand(str(path), check=True):
                optim = run.overrides.get("optim") or read_recipe(run.base, "train").get("optim")
                own = [run.launch["accelerate_config"]] if run.launch.get("accelerate_config") else []
                for launcher in [*launchers, *own]:
                    check_optimizer(f"{path}: run {run.name}", optim or "adamw_torch", launcher)
        else:
            validate_recipe(path, launchers=launchers)
    except ValidationError:
        raise
    except (UserError, ValueError, OSError) as err:
        raise ValidationError(str(err)) from None
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


def validate_paths(paths: list[str], launchers: list[str] | None = None, *, say=print) -> list[tuple[str, Path]]:
    """``aot-validate``: every YAML file under ``paths``, each by its kind, checked against the ``launchers``
    (default: every accelerate config among the files); stops at the first bad file (ValidationError).
    Returns (kind, file) of each; ``say`` reports each file as it passes, with the batch an AOT recipe sorts
    (:func:`sort_batch_note`; its warning goes to stderr)."""
    files = collect(paths)
    launchers = launchers if launchers is not None else [f for f in files if recipe_kind(f) == "accelerate"]
    checked = []
    for f in files:
        kind = validate_file(f, launchers)
        note, warning = sort_batch_note(parse_recipe(str(f), cpu_overrides())) if kind == "train" else ("", None)
        say(f"ok  {kind:11s} {f}" + (f"  [{note}]" if note else ""))
        if warning:
            print(f"warning: {f}: {warning}", file=sys.stderr)
        checked.append((kind, f))
    return checked
