"""One training run from a recipe: recipe -> data + model -> trainer -> run folder -> summary.

A run folder holds the weights (or LoRA adapter) and tokenizer, ``recipe.json`` (the recipe file's
path, its YAML, the command-line overrides and ``resolved``: every key with the value the run used,
``Recipe.resolved``, which is what tables and evaluation read), ``fingerprint.json`` (what
determines the weights, see ``fingerprint``),
``log_history.json``, ``metrics.json`` with the held-out summary, quantile plots, and last
``run.json``: a run without ``run.json`` is not complete.

A folder is never reused for other weights without being asked: resuming from its checkpoints,
or retraining a finished run, needs the same fingerprint, or ``--overwrite_output_dir true``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import get_peft_config

from .data import DatasetMixture, load_mixture
from .heldout import paired_statistics
from .io import write_json
from .methods import METHODS
from .model_utils import check_model_path, load_model, load_tokenizer, weight_files
from .plots import quantile_plot
from .recipe import Recipe, parse_recipe
from .tasks import asset_keys, get_task, task_of


class RecipeError(ValueError):
    """The recipe, its overrides or its data are wrong (the message names the key, column or file).
    Raised before training starts; an error during training keeps its own type and traceback."""


@contextlib.contextmanager
def recipe_errors():
    try:
        yield
    except RecipeError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise RecipeError(str(err)) from err


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint a kill did not cut short.

    transformers writes a checkpoint in place with ``trainer_state.json`` last, so a process
    killed mid-save leaves a newest ``checkpoint-N`` without a readable state: skip it.
    """
    found = sorted(output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for checkpoint in reversed(found):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return str(checkpoint)
        except (OSError, ValueError):
            print(f"[aot-handbook] skipping incomplete {checkpoint}")
    return None


def is_complete(output_dir: str | Path) -> bool:
    return (Path(output_dir) / "run.json").is_file()


class StopOnNonFinite(TrainerCallback):
    """Stop with an error instead of training on NaN (AOT trainers also check U and V every step)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise FloatingPointError(f"non-finite {key} ({value}) at global step {state.global_step}")


def data_format(dataset, method: str) -> str:
    """What a loaded train split is: ``paired`` (chosen/rejected), ``unpaired`` (one completion and a label
    per row) or ``sft``. Decided here once, recorded on the Recipe and in the run folder."""
    if METHODS[method].data == "sft":
        return "sft"
    return "unpaired" if "label" in dataset.column_names and "chosen" not in dataset.column_names else "paired"


# Below this many parameters a CPU run uses one intra-op thread: a 1M-parameter model's matrix products take
# microseconds, so torch's threads gain little and, with any other job on the machine, stall on each other
# (the offline task's SFT stage: ~2.4 min idle, ~19 min beside one other job with 2 threads; README "Threads on
# CPU").
ONE_THREAD_BELOW_PARAMS = 20_000_000


def set_cpu_threads(model, *, on_cpu: bool) -> int:
    """torch's intra-op threads for training ``model`` on CPU: OMP_NUM_THREADS when set (accelerate sets it
    per process), else one thread for a small model, else torch's default (one per core). Returns the count."""
    if on_cpu and "OMP_NUM_THREADS" not in os.environ and model.num_parameters() < ONE_THREAD_BELOW_PARAMS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def load_data(recipe: Recipe):
    """The recipe's data in its method's format, and the recipe with its ``data_format`` decided from the
    loaded rows (re-parsed once where the format picks the config class: aot_unpaired on truly unpaired rows
    runs on the KTO-based one); refused when the train split is smaller than one batch."""
    mixture = DatasetMixture.from_dict(recipe.recipe.dataset_mixture, source=recipe.path)
    method = METHODS[recipe.method]
    data = load_mixture(mixture, target=method.data)
    fmt = data_format(data["train"], recipe.method)
    if method.config_class(fmt) is not type(recipe.training):
        recipe = parse_recipe(recipe.path, recipe.overrides, data_format=fmt)
    recipe = dataclasses.replace(recipe, data_format=fmt)
    batch = recipe.training.per_device_train_batch_size * recipe.training.world_size
    if len(data["train"]) < batch:
        raise ValueError(f"dataset_mixture: the train split has {len(data['train'])} row(s), fewer than one batch "
                         f"({batch} = per_device_train_batch_size x processes): it would train on repeats")
    return recipe, data


def build_trainer(recipe: Recipe, data=None):
    """Data, model, reference and the method's TRL-based trainer, all from the recipe."""
    if data is None:
        recipe, data = load_data(recipe)
    elif recipe.data_format is None:  # the trainer class may depend on it (aot_unpaired)
        raise ValueError("build_trainer(recipe, data): pass the recipe load_data returned with the data")
    method, args = recipe.method, recipe.training
    tokenizer = load_tokenizer(recipe.model, recipe.recipe)
    model = load_model(recipe.model)
    set_cpu_threads(model, on_cpu=args.use_cpu or not torch.cuda.is_available())
    peft = get_peft_config(recipe.model)
    kwargs = dict(model=model, args=args, train_dataset=data["train"], processing_class=tokenizer, peft_config=peft)
    if "test" in data and args.eval_strategy != "no":
        kwargs["eval_dataset"] = data["test"]
    if method != "sft" and peft is None and not args.precompute_ref_log_probs:
        kwargs["ref_model"] = load_model(recipe.model, for_reference=True)
    trainer = METHODS[method].trainer_class(recipe.data_format)(**kwargs)
    trainer.add_callback(StopOnNonFinite())
    return recipe, data, trainer


def summarize(recipe: Recipe, trainer, data, out: Path) -> dict:
    """Held-out summary: margins/rewards FSD (paper Fig. 1) and, for a registered task, its own block.

    Called on the main process only (``train``), unless the weights are sharded: then every rank
    takes part in each forward (FSDP/ZeRO-3 gather the layers collectively) and the main one writes."""
    args, summary = recipe.training, {}
    model = trainer.accelerator.unwrap_model(trainer.model)
    reference = None
    if hasattr(model, "disable_adapter"):
        reference = model.disable_adapter  # PEFT: adapters off is the reference
    elif getattr(trainer, "ref_model", None) is not None:  # the trainer's own reference: no second copy
        reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    elif recipe.method != "sft":
        reference = load_model(recipe.model, for_reference=True)
        if not _sharded(trainer):  # beside the policy (it would stay on the CPU); ZeRO-3 places its own partitions
            reference = reference.to(trainer.accelerator.device)
    # Held-out pairs for the Fig. 1 statistics: the test split if paired, else the task's held-out pairs.
    test, rows, task = data.get("test"), None, task_of(recipe)
    if test is not None and "chosen" in test.column_names:
        rows = list(test.select(range(min(len(test), 512))))
    elif task is not None:
        rows = task.heldout_pairs(vars(recipe.recipe))[:512]
    if reference is not None and rows:
        stats = paired_statistics(model, reference, trainer.processing_class, rows, beta=getattr(args, "beta", 0.1))
        summary["heldout"] = {k: v for k, v in stats.items() if not isinstance(v, torch.Tensor)}
        if trainer.accelerator.is_main_process:
            summary["plots"] = {
                "rewards": str(quantile_plot(
                    {recipe.method: (stats["chosen_rewards"], stats["rejected_rewards"], "chosen", "rejected")},
                    out / "quantiles_rewards.png", title="Held-out rewards (paper Fig. 1a)")),
                "margins": str(quantile_plot(
                    {recipe.method: (stats["policy_margins"], stats["reference_margins"], "policy", "reference")},
                    out / "quantiles_margins.png", title="Held-out chosen-rejected margins (paper Fig. 1b)")),
            }
    if hasattr(trainer, "attribute_summary"):  # aot_multi: per-attribute FSD diagnostics and empty batches
        summary["attributes"] = trainer.attribute_summary()
    if task is not None:
        summary["task"] = task.name
        summary["task_accuracy"] = task.summarize(model, trainer.processing_class, reference, vars(recipe.recipe))
    return summary


# Keys that change what a run writes or prints, not its weights: left out of the fingerprint, so a run may
# resume or be recognised as done with other values of them. (Prefixes end with "_".)
OUTPUT_ONLY_KEYS = ("output_dir", "overwrite_output_dir", "logging_", "save_", "report_to", "run_name", "summary",
                    "disable_tqdm", "push_to_hub", "hub_", "resume_from_checkpoint", "log_level", "log_on_each_node",
                    "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor",
                    "local_rank", "requires", "trackio_", "project", "skip_memory_metrics")


def _output_only(key: str) -> bool:
    """Also a task's assets folder (``aot_handbook.tasks``): where inputs are built, not what they are."""
    return key in asset_keys() or any(key.startswith(k) if k.endswith("_") else key == k for k in OUTPUT_ONLY_KEYS)


def data_fingerprint(dataset) -> str:
    """sha256 of the train rows as the trainer gets them (content and order, after every mapping and shuffle)."""
    digest = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=4096):
        digest.update(json.dumps(batch.to_pylist(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def model_identity(name: str, revision: str | None = None) -> str:
    """The base model: a run of ours by its fingerprint; another local folder by its config and the names,
    sizes and modification times of its weight files; a hub id by id and revision."""
    path = Path(name)
    if (path / "fingerprint.json").is_file() and is_complete(path):
        return "run:" + json.loads((path / "fingerprint.json").read_text())["sha256"]
    if path.is_dir():
        config = path / ("adapter_config.json" if (path / "adapter_config.json").is_file() else "config.json")
        files = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in weight_files(path)]
        blob = json.dumps([config.read_text() if config.is_file() else None, files])
        return "folder:" + hashlib.sha256(blob.encode()).hexdigest()
    return f"hub:{name}@{revision or 'main'}"


def fingerprint(recipe: Recipe, data) -> dict:
    """What determines a run's weights: the resolved config (every recipe, model and trainer argument, less
    OUTPUT_ONLY_KEYS), the train rows, and the base model. ``sha256`` over the three."""
    # data_format is left out: the config class's keys and the train rows already say it
    config = {k: v for k, v in recipe.resolved().items() if not _output_only(k) and k != "data_format"}
    identity = {"config": config, "data": data_fingerprint(data["train"]),
                "model": model_identity(recipe.model.model_name_or_path, recipe.model.model_revision)}
    blob = json.dumps(identity, sort_keys=True).encode()
    return {"sha256": hashlib.sha256(blob).hexdigest(), **identity}


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs, for the error message: config keys (old -> new), the data, the base model."""
    keys = sorted(set(old.get("config", {})) | set(new["config"]))
    changes = [f"{k}: {old.get('config', {}).get(k)!r} -> {new['config'].get(k)!r}"
               for k in keys if old.get("config", {}).get(k) != new["config"].get(k)]
    if old.get("data") != new["data"]:
        changes.append("the train data (dataset_mixture rows)")
    if old.get("model") != new["model"]:
        changes.append(f"the base model ({old.get('model')} -> {new['model']})")
    return changes


def _read_fingerprint(out: Path) -> dict | None:
    try:
        return json.loads((out / "fingerprint.json").read_text())
    except (OSError, ValueError):
        return None


def check_paths(recipe: Recipe) -> None:
    """Before anything loads: the model path names a model, and output_dir would overwrite no input
    (the model, the tokenizer, a ``requires`` run)."""
    out = Path(recipe.training.output_dir).resolve()
    from .pairs import pairs_output

    required = {}
    for r in recipe.recipe.requires or []:
        data_dir = pairs_output(r)  # a make pairs recipe: its output folder is an input too
        required[(data_dir or Path(parse_recipe(r).training.output_dir)).resolve()] = r
    task = task_of(recipe)
    assets = Path(task.assets_root(vars(recipe.recipe))).resolve() if task else None
    inputs = {"model_name_or_path": recipe.model.model_name_or_path,
              "tokenizer_name_or_path": recipe.recipe.tokenizer_name_or_path}
    for key, name in inputs.items():
        if name and Path(name).exists():
            source = Path(name).resolve()
            if out == source or source in out.parents:
                raise ValueError(f"{recipe.path}: output_dir '{recipe.training.output_dir}' is {key} '{name}' or "
                                 "inside it: training would overwrite the model it starts from")
    for source, r in required.items():
        if out == source or source in out.parents:
            raise ValueError(f"{recipe.path}: output_dir '{recipe.training.output_dir}' is the output of the "
                             f"required run {r} or inside it")
    for key, name in inputs.items():  # a model this call builds first (requires, task assets) is not there yet
        source = Path(name).resolve() if name else None
        pending = source in required or (assets is not None and source is not None and assets in source.parents)
        if name and not pending:
            try:
                check_model_path(name, key)
            except ValueError as err:
                raise ValueError(f"{recipe.path}: {err}") from None


def resume_decision(out: Path, identity: dict, overwrite: bool) -> str | None:
    """``"done"`` (a finished run of this fingerprint), a checkpoint to resume from, or None (from scratch).
    Refuses, naming what changed, to resume or replace another configuration's run unless ``overwrite``."""
    finished, checkpoint = is_complete(out), last_complete_checkpoint(out) if out.is_dir() else None
    if overwrite or not (finished or checkpoint):
        return None
    old = _read_fingerprint(out)
    if old is not None and old.get("sha256") == identity["sha256"]:
        return "done" if finished else checkpoint
    what = "a finished run" if finished else f"checkpoint {Path(checkpoint).name}"
    changes = fingerprint_changes(old, identity) if old else ["no fingerprint.json (written by an older version)"]
    raise ValueError(f"output_dir '{out}' holds {what} of another configuration; changed: {'; '.join(changes)}. "
                     "Choose another output_dir, or pass --overwrite_output_dir true to train from scratch "
                     "(the folder's checkpoints and run.json are deleted)")


def _say(message: str) -> None:
    """print, once per run: on the main process of a multi-process launch (torchrun/accelerate set RANK)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message)


def _sharded(trainer) -> bool:
    """Whether the weights are split over the ranks (FSDP, ZeRO-3), so no rank can run the model alone."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3))


def train(recipe_path: str, overrides: list[str] | None = None) -> Path:
    """Train one recipe (and, first, any recipe it ``requires`` whose run is missing)."""
    with recipe_errors():
        recipe = parse_recipe(recipe_path, overrides)  # every key checked before anything loads
        check_paths(recipe)
    task = task_of(recipe)
    if task is not None:
        # Main process first: with several ranks transformers saves a model on rank 0 only, so a rank
        # building the assets too would publish a base model folder without weights.
        with recipe.training.main_process_first(desc=f"{task.name} assets"):
            task.ensure_assets(task.assets_root(vars(recipe.recipe)))
    for required in recipe.recipe.requires or []:
        from .pairs import main as build_data
        from .pairs import pairs_output

        with recipe_errors():
            data_dir = pairs_output(required)
        if data_dir is not None:  # a make pairs recipe: the data this recipe trains on
            if not (data_dir / "provenance.json").is_file():
                _say(f"[aot-handbook] {recipe_path} requires {required}: building its data first")
                with recipe.training.main_process_first(desc="pairs"):
                    build_data(required)
            continue
        with recipe_errors():
            needed = parse_recipe(required)
        if not is_complete(needed.training.output_dir):
            _say(f"[aot-handbook] {recipe_path} requires {required}: training it first")
            train(required)
    out = Path(recipe.training.output_dir)
    started = time.time()
    with recipe_errors():  # data files and columns, the folder's own run, model path, the trainers' own checks
        recipe, data = load_data(recipe)
        identity = fingerprint(recipe, data)
        checkpoint = resume_decision(out, identity, recipe.recipe.overwrite_output_dir)
        if checkpoint == "done":
            _say(f"[aot-handbook] {out} is a finished run of this configuration: nothing to do "
                  "(--overwrite_output_dir true retrains it)")
            return out
        recipe, data, trainer = build_trainer(recipe, data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").unlink(missing_ok=True)  # this folder is being rewritten
    if checkpoint is None:  # from scratch: no checkpoint of an earlier configuration may be resumed later
        for stale in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # every rank may try: the first one wins
    write_json(out / "fingerprint.json", identity)
    write_json(out / "recipe.json", {"path": recipe.path, "overrides": recipe.overrides,
                                     "recipe": _redacted(recipe.raw), "resolved": recipe.resolved()})
    if checkpoint:
        _say(f"[aot-handbook] resuming from {checkpoint}")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))  # every rank: FSDP/ZeRO-3 gather the weights; the main process writes
    # The rest once, on the main process; the other ranks wait, so run.json exists when any rank returns.
    # Sharded weights need every rank in each forward of the summary (the main process alone would hang).
    main = trainer.accelerator.is_main_process
    summary = {}
    if recipe.recipe.summary and (main or _sharded(trainer)):
        summary = summarize(recipe, trainer, data, out)
    if main:
        write_json(out / "log_history.json", trainer.state.log_history)
        summary["loss"] = describe_loss(recipe.method, recipe.training)
        summary["train_seconds"] = round(time.time() - started, 1)
        summary["run_dir"] = str(out)
        write_json(out / "metrics.json", summary)
        write_json(out / "run.json", {"method": recipe.method, "recipe": recipe.path, "completed": time.time(),
                                      "fingerprint": identity["sha256"], "data_format": recipe.data_format})
        print_summary(summary)
    trainer.accelerator.wait_for_everyone()
    return out


def _redacted(raw: dict) -> dict:
    """The recipe for provenance, without the values of its ``env:`` block (keys, tokens)."""
    if "env" not in raw:
        return raw
    return {**raw, "env": {k: "<redacted>" for k in raw["env"] or {}}}


def describe_loss(method: str, args) -> str:
    if METHODS[method].aot:
        text = f"{args.aot_variant} (AOT, penalty={args.aot_penalty}, sort={args.aot_sort}, beta={args.beta})"
        if getattr(args, "aot_attributes", None):
            text += f" on attributes {args.aot_attributes}"
        if args.aot_nll_weight:
            text += f" + {args.aot_nll_weight} x NLL(chosen)"
        return text
    if method == "sft":
        return "sft (NLL of completions)"
    text = f"{method} (TRL loss_type={getattr(args, 'loss_type', method)}, beta={args.beta})"
    if getattr(args, "nll_weight", 0.0):
        text += f" + {args.nll_weight} x NLL(chosen)"  # for DPO/IPO it is TRL's "sft" term in loss_type
    return text


def print_summary(summary: dict) -> None:
    lines = ["", "=" * 72, "Summary (held-out data)", f"  loss used: {summary['loss']}"]
    acc = summary.get("task_accuracy")
    if acc:
        lines += get_task(summary["task"]).summary_lines(acc)
    h = summary.get("heldout")
    if h:
        lines += [
            f"  reward accuracy (chosen > rejected): {h['reward_accuracy']:.3f}",
            f"  FSD violation share, chosen over rejected rewards: {h['rewards_fsd']['fsd_violation_share']:.3f}",
            f"  chosen-rejected margin > 0: reference {h['reference_margin_accuracy']:.3f}, "
            f"aligned {h['policy_margin_accuracy']:.3f}",
            f"  share of quantile levels where aligned margins fail to dominate reference margins: "
            f"{h['margins_fsd']['fsd_violation_share']:.3f}",
        ]
    for name, path in summary.get("plots", {}).items():
        lines.append(f"  plot ({name}): {path}")
    lines += [f"  run folder: {summary['run_dir']} ({summary['train_seconds']} s)", "=" * 72]
    print("\n".join(lines))
