"""One training run from one recipe: recipe -> data + model -> trainer -> run folder -> summary.

``train`` trains exactly the recipe it is given; what must exist first (a recipe's ``requires``: the SFT stage,
the data a pairs recipe builds) is planned and run by ``aot_handbook.plan``, which ``aot-train`` calls. The run
folder's format (``fingerprint.json``, ``recipe.json``, ``run.json``, resuming) is ``aot_handbook.run_folder``.
Errors in the recipe, its overrides or its data are ``UserError``s raised before training starts; an error
raised while training keeps its own type and traceback (``aot_handbook.errors``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import TrainerCallback
from trl import get_peft_config

from .data import DatasetMixture, load_mixture
from .errors import user_errors
from .heldout import paired_statistics
from .io import write_json
from .methods import METHODS
from .model_utils import check_model_path, load_model, load_tokenizer, weight_files
from .plots import quantile_plot
from .recipe import Recipe, parse_recipe
from .run_folder import close_run, fingerprint, open_run, resume_decision, start_model_identity
from .runlock import main_process_lock
from .tasks import get_task, task_of
from .truncation import KEEP_START, check_truncation, count_truncation


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


# Below this many parameters a CPU run uses one intra-op thread, whatever OMP_NUM_THREADS says: a 1M-parameter
# model's matrix products take microseconds, so torch's threads gain little and, with any other job on the machine,
# stall on each other (the offline task's SFT stage: ~2.4 min idle, ~19 min beside one other job with 2 threads;
# README "Threads on CPU"); and the thread count changes the order in which a product's partial sums add up, so the
# weights, and the summary `make train` prints, would depend on the environment (one thread: reference 0.685 /
# aligned 0.958; OMP_NUM_THREADS=2: 0.665 / 0.923; tests/e2e/test_threads.py).
ONE_THREAD_BELOW_PARAMS = 20_000_000


def set_cpu_threads(model, *, on_cpu: bool) -> int:
    """torch's intra-op threads for training ``model`` on CPU: one thread for a small model (even where
    OMP_NUM_THREADS says otherwise), else OMP_NUM_THREADS when set (accelerate sets it per process), else torch's
    default (one per core). Returns the count."""
    if on_cpu and model.num_parameters() < ONE_THREAD_BELOW_PARAMS:
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


def build_trainer(recipe: Recipe, data=None, *, check_lengths: bool = True):
    """Data, model, reference and the method's TRL-based trainer, all from the recipe. With ``check_lengths``, what
    ``max_length`` cuts from the rows the trainer tokenized is counted, printed and refused above a share
    (:func:`check_lengths_trained_on`)."""
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
    if check_lengths:
        check_lengths_trained_on(recipe, data, trainer)
    return recipe, data, trainer


def check_lengths_trained_on(recipe: Recipe, data, trainer) -> None:
    """Count, per split, the preference rows ``max_length`` drops or cuts, on the tokens TRL tokenized (the
    trainer's datasets), print one line per split, and refuse (``truncation.TruncationError``, naming
    ``max_length``) when too many rows are dropped or cut or train on chosen == rejected (issue 30: with prompts
    that fill max_length the answers were cut away without a word). SFT rows are not counted."""
    args, reports = recipe.training, []
    for split, tokenized in (("train", trainer.train_dataset), ("test", trainer.eval_dataset)):
        names = getattr(tokenized, "column_names", None) or []
        if "prompt_ids" not in names or split not in data:
            continue
        mode = getattr(args, "truncation_mode", KEEP_START) if "chosen_ids" in names else KEEP_START  # KTO: one
        reports.append(count_truncation(tokenized, max_length=args.max_length, truncation_mode=mode, split=split,
                                        rows_before=len(data[split])))
    if reports:
        for line in check_truncation(reports, source=recipe.path):
            say(f"[aot-handbook] {line}")


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
    test, rows, task = data.get("test"), None, task_of(recipe.settings())
    if test is not None and "chosen" in test.column_names:
        rows = list(test.select(range(min(len(test), 512))))
    elif task is not None:
        rows = task.heldout_pairs(recipe.settings())[:512]
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
        summary["task_accuracy"] = task.summarize(model, trainer.processing_class, reference, recipe.settings())
    return summary


def check_paths(recipe: Recipe, pending: tuple[Path, ...] = ()) -> None:
    """Before anything loads: the model and tokenizer paths name a model, and output_dir would overwrite neither.
    ``pending``: folders built before this run trains (its task's assets, the outputs of the stages a plan runs
    first, ``aot_handbook.plan``): a model inside one of them is not there yet and is not checked."""
    out = Path(recipe.training.output_dir).resolve()
    task = task_of(recipe.settings())
    if task is not None:
        pending = (*pending, *task.asset_folders(recipe.settings()))
    pending = tuple(Path(p).resolve() for p in pending)
    inputs = {"model_name_or_path": recipe.model.model_name_or_path,
              "tokenizer_name_or_path": recipe.recipe.tokenizer_name_or_path}
    for key, name in inputs.items():
        if name and Path(name).exists():
            source = Path(name).resolve()
            if out == source or source in out.parents:
                raise ValueError(f"{recipe.path}: output_dir '{recipe.training.output_dir}' is {key} '{name}' or "
                                 "inside it: training would overwrite the model it starts from")
    if out.is_dir() and not recipe.recipe.overwrite_output_dir and not (out / "fingerprint.json").is_file() \
            and not (out / "recipe.json").is_file() and ((out / "config.json").is_file() or weight_files(out)):
        raise ValueError(f"{recipe.path}: output_dir '{recipe.training.output_dir}' holds a model that is not a run "
                         "of aot-handbook (no fingerprint.json or recipe.json): training would overwrite it. Choose "
                         "another output_dir, or pass --overwrite_output_dir true to replace it")
    for key, name in inputs.items():  # a model built first (a required run, task assets) is not there yet
        source = Path(name).resolve() if name else None
        if name and not any(source == p or p in source.parents for p in pending):
            try:
                check_model_path(name, key)
            except ValueError as err:
                raise ValueError(f"{recipe.path}: {err}") from None


def say(message: str) -> None:
    """print, once per run: on the main process of a multi-process launch (torchrun/accelerate set RANK)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message)


def _sharded(trainer) -> bool:
    """Whether the weights are split over the ranks (FSDP, ZeRO-3), so no rank can run the model alone."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3))


def train(recipe_path: str, overrides: list[str] | None = None) -> Path:
    """Train one recipe into its run folder (``output_dir``); what it ``requires`` must exist already (``aot-train``
    and ``aot_handbook.plan.train`` build it first). A finished run of the same fingerprint is not retrained."""
    with user_errors():
        recipe = parse_recipe(recipe_path, overrides)  # every key checked before anything loads
        check_paths(recipe)
    task = task_of(recipe.settings())
    if task is not None:
        # Main process first: with several ranks transformers saves a model on rank 0 only, so a rank
        # building the assets too would publish a base model folder without weights.
        with recipe.training.main_process_first(desc=f"{task.name} assets"):
            task.ensure_assets(task.assets_root(recipe.settings()))
    out = Path(recipe.training.output_dir)
    # One process writes a run folder at a time: a second training (or an evaluation, a data stage) into it stops
    # at once, naming the holder, before it reads or writes anything there (issue 30).
    with main_process_lock(out, "training"):
        started = time.time()
        with user_errors():  # data files and columns, the folder's own run, model path, the trainers' own checks
            recipe, data = load_data(recipe)
            identity = fingerprint(recipe, data)
            checkpoint = resume_decision(out, identity, recipe.recipe.overwrite_output_dir)
            if checkpoint == "done":
                say(f"[aot-handbook] {out} is a finished run of this configuration: nothing to do "
                      "(--overwrite_output_dir true retrains it)")
                return out
            recipe, data, trainer = build_trainer(recipe, data)
        # what it starts from, by content, for run.json: an evaluation then tells its reference from another one
        main = trainer.accelerator.is_main_process
        start_model = start_model_identity(recipe.model.model_name_or_path) if main else None
        open_run(out, identity, recipe, checkpoint)
        if checkpoint:
            say(f"[aot-handbook] resuming from {checkpoint}")
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
            trainer.save_model(str(out))  # every rank: FSDP/ZeRO-3 gather the weights; the main process writes
        except (OSError, SafetensorError) as err:  # a full disk, a quota: one line naming the run folder (cli)
            raise OSError(f"{out}: writing the run failed: {err}") from err
        # The rest once, on the main process; the other ranks wait, so run.json exists when any rank returns.
        # Sharded weights need every rank in each forward of the summary (the main process alone would hang).
        summary = {}
        if recipe.recipe.summary and (main or _sharded(trainer)):
            summary = summarize(recipe, trainer, data, out)
        if main:
            write_json(out / "log_history.json", trainer.state.log_history)
            summary["loss"] = describe_loss(recipe.method, recipe.training)
            summary["train_seconds"] = round(time.time() - started, 1)
            summary["run_dir"] = str(out)
            write_json(out / "metrics.json", summary)
            close_run(out, recipe, identity, start_model)
            print_summary(summary)
        trainer.accelerator.wait_for_everyone()
        return out


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
