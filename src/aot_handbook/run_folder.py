"""A run folder: what ``aot-train`` writes, and what evaluation, tables and the planner read back.

A run folder holds the weights (or LoRA adapter) and tokenizer, and, written by :func:`open_run` before
training and :func:`close_run` after it:

- ``fingerprint.json``: what determines the weights (:func:`fingerprint`): the resolved config less
  :data:`OUTPUT_ONLY_KEYS`, a hash of the train rows, the base model's identity;
- ``recipe.json``: the recipe file's path, its YAML (the ``env:`` values redacted), the command-line overrides
  and ``resolved``: every key with the value the run used (``Recipe.resolved``), which is what evaluation and
  tables read (:class:`RunInfo`);
- ``log_history.json``, ``metrics.json`` (the held-out summary), quantile plots;
- last ``run.json``: a folder without it is not complete (:func:`is_complete`).

A folder is never reused for other weights without being asked: resuming from its checkpoints, or retraining a
finished run, needs the same fingerprint, or ``--overwrite_output_dir true`` (:func:`resume_decision`).
:class:`RunInfo` reads a run folder (or a plain model, the tables' base row) for evaluation and tables.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .content_hash import model_content_hash
from .errors import UserError
from .io import write_json
from .methods import METHODS
from .model_utils import weight_files
from .models import BASE_MODELS, model_key
from .provenance import sha256
from .tasks import asset_keys, task_of

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR: checkpoint-<step> folders

def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint a kill did not cut short.

    transformers writes a checkpoint in place with ``trainer_state.json`` last, so a process
    killed mid-save leaves a newest ``checkpoint-N`` without a readable state: skip it.
    """
    found = sorted(output_dir.glob(f"{CHECKPOINT_PREFIX}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for checkpoint in reversed(found):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return str(checkpoint)
        except (OSError, ValueError):
            print(f"[aot-handbook] skipping incomplete {checkpoint}")
    return None


def is_complete(output_dir: str | Path) -> bool:
    return (Path(output_dir) / "run.json").is_file()


# Keys that change what a run writes or prints, not its weights: left out of the fingerprint, so a run may
# resume or be recognised as done with other values of them. (Prefixes end with "_".)
OUTPUT_ONLY_KEYS = ("output_dir", "overwrite_output_dir", "logging_", "save_", "report_to", "run_name", "summary",
                    "disable_tqdm", "push_to_hub", "hub_", "resume_from_checkpoint", "log_level", "log_on_each_node",
                    "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor",
                    "local_rank", "requires", "trackio_", "project", "skip_memory_metrics")


def output_only(key: str) -> bool:
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


def fingerprint(recipe, data) -> dict:
    """What determines a run's weights (``recipe``: a parsed ``Recipe``): the resolved config (every recipe, model
    and trainer argument, less OUTPUT_ONLY_KEYS), the train rows, and the base model. ``sha256`` over the three."""
    identity = {**config_identity(recipe), "data": data_fingerprint(data["train"])}
    blob = json.dumps(identity, sort_keys=True).encode()
    return {"sha256": hashlib.sha256(blob).hexdigest(), **identity}


def config_identity(recipe) -> dict:
    """The fingerprint's parts known before any data loads: the resolved config and the base model."""
    # data_format is left out: the config class's keys and the train rows already say it
    config = {k: v for k, v in recipe.resolved().items() if not output_only(k) and k != "data_format"}
    return {"config": config, "model": model_identity(recipe.model.model_name_or_path, recipe.model.model_revision)}


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


def read_fingerprint(out: Path) -> dict | None:
    try:
        return json.loads((out / "fingerprint.json").read_text())
    except (OSError, ValueError):
        return None


def resume_decision(out: Path, identity: dict, overwrite: bool) -> str | None:
    """``"done"`` (a finished run of this fingerprint), a checkpoint to resume from, or None (from scratch).
    Refuses, naming what changed, to resume or replace another configuration's run unless ``overwrite``."""
    finished, checkpoint = is_complete(out), last_complete_checkpoint(out) if out.is_dir() else None
    if overwrite or not (finished or checkpoint):
        return None
    old = read_fingerprint(out)
    if old is not None and old.get("sha256") == identity["sha256"]:
        return "done" if finished else checkpoint
    what = "a finished run" if finished else f"checkpoint {Path(checkpoint).name}"
    changes = fingerprint_changes(old, identity) if old else ["no fingerprint.json (written by an older version)"]
    raise ValueError(f"output_dir '{out}' holds {what} of another configuration; changed: {'; '.join(changes)}. "
                     "Choose another output_dir, or pass --overwrite_output_dir true to train from scratch "
                     "(the folder's checkpoints and run.json are deleted)")


def _redacted(raw: dict) -> dict:
    """The recipe for provenance, without the values of its ``env:`` block (keys, tokens)."""
    if "env" not in raw:
        return raw
    return {**raw, "env": {k: "<redacted>" for k in raw["env"] or {}}}


def open_run(out: Path, identity: dict, recipe, checkpoint: str | None) -> None:
    """Before training: the folder is being (re)written, so ``run.json`` goes first; from scratch, no checkpoint of
    an earlier configuration may be resumed later; then ``fingerprint.json`` and ``recipe.json``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").unlink(missing_ok=True)  # this folder is being rewritten
    if checkpoint is None:  # from scratch: no checkpoint of an earlier configuration may be resumed later
        for stale in out.glob(f"{CHECKPOINT_PREFIX}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # every rank may try: the first one wins
    write_json(out / "fingerprint.json", identity)
    write_json(out / "recipe.json", {"path": recipe.path, "overrides": recipe.overrides,
                                     "recipe": _redacted(recipe.raw), "resolved": recipe.resolved()})


def close_run(out: Path, recipe, identity: dict, start_model: dict | None = None) -> None:
    """After training and the summary: ``run.json``, written last, marks the run complete. ``start_model``: the
    identity of the model the run started from (:func:`start_model_identity`)."""
    write_json(out / "run.json", {"method": recipe.method, "recipe": recipe.path, "completed": time.time(),
                                  "fingerprint": identity["sha256"], "data_format": recipe.data_format,
                                  "start_model": start_model})


def start_model_identity(name: str) -> dict | None:
    """What a run starts from, as its ``run.json`` records it, so that an evaluation can tell the reference it
    trained against from another one at the same path: for a local model folder, whether it is a finished run, its
    fingerprint, and the hash of its weight files (``content_hash.model_content_hash``: a byte-identical restored
    copy is the same model, a retrained one is not). None for a hub model."""
    path = Path(name)
    if not path.is_dir():
        return None
    return {"path": name, "run": (path / "run.json").is_file(), "fingerprint": run_fingerprint(path),
            "content_sha256": model_content_hash(path)}


DATASETS = (("ultrafeedback", "ultrafeedback"), ("helpsteer", "helpsteer"), ("beavertails", "pku-beavertails"),
            ("pku", "pku-beavertails"))


def base_model_key(name: str) -> str:
    """``ibm/merlinite-7b`` -> ``merlinite-7b`` (the base-model registry); a local run folder -> its own base
    model's key."""
    path = Path(name)
    if (path / "recipe.json").is_file():
        return RunInfo.from_path(path).base_model
    return model_key(name)


def recipe_chat_template(base_model: str) -> str | None:
    """The chat template the recipes of base model ``base_model`` (e.g. ``merlinite-7b``) set, None where they
    use the tokenizer's own: a base row is evaluated in the format its aligned runs were."""
    model = BASE_MODELS.get(base_model)
    return model.recipe_template if model else None


def _run_json(run: Path) -> dict:
    try:
        return json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def run_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of a run folder's weights as they are now (None: not a run, or trained before
    fingerprints were recorded)."""
    try:
        return json.loads((Path(path) / "fingerprint.json").read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class RunInfo:
    """A model to evaluate: a run folder (:func:`aot_handbook.training.train`) or a plain model (the base row)."""

    path: str  # as given: run folder, model folder or hub id
    name: str  # results/<name>/...
    method: str  # aot_paired, aot_unpaired, dpo, ipo, kto, sft, or "base" for a model that is not a run
    model: str  # what from_pretrained loads (the base model when ``adapter`` is set)
    adapter: str | None = None  # a PEFT (LoRA) adapter folder
    reference: str | None = None  # the model the run started from (SFT / base), for win rates and plots
    base_model: str = ""  # table row group: a base model's key (merlinite-7b, ...) or a task's name
    dataset: str | None = None  # ultrafeedback, helpsteer, pku-beavertails, or a task's name
    data_format: str | None = None  # what the run trained on: paired, unpaired, sft (training.data_format)
    sort: str | None = None  # AOT hard / soft sort
    penalty: str | None = None  # AOT penalty
    nll_weight: float = 0.0  # the added NLL term (aot_nll_weight, or nll_weight of the baselines)
    batch_size: int | None = None  # per rank and optimizer step: per device x gradient accumulation steps
    sort_scope: str | None = None  # AOT: what it sorts under accumulation (aot_sort_scope; docs/MATH.md sec. 7)
    seed: int | None = None
    recipe_path: str | None = None
    recipe_name: str | None = None  # the recipe file's stem, e.g. sft, nll_control, aot_unpaired
    config_id: str | None = None  # the recipe and overrides without seed/output_dir: runs equal in it are seeds
    recipe_sha256: str | None = None
    fingerprint: str | None = None  # what determined the weights (fingerprint); results follow it
    complete: bool = True
    # the recipe's; for a base model, the one its recipes train with (None: the tokenizer's)
    chat_template: str | None = None
    # what the run started from when it trained (start_model_identity; None: a hub model, or an older run)
    start_model: dict | None = None
    recipe: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_path(cls, path: str | Path) -> "RunInfo":
        path_s = str(path).rstrip("/")
        run = Path(path_s)
        if not (run / "recipe.json").is_file():  # a base model (local folder or hub id): the paper's last row
            key = base_model_key(path_s)
            return cls(path=path_s, name=run.name or path_s.replace("/", "--"), method="base", model=path_s,
                       base_model=key, chat_template=recipe_chat_template(key))
        meta = json.loads((run / "recipe.json").read_text())
        recipe = resolved_config(meta, run)
        start = recipe.get("model_name_or_path") or ""
        adapter, model = None, path_s
        if (run / "adapter_config.json").is_file():
            adapter = path_s
            model = json.loads((run / "adapter_config.json").read_text()).get("base_model_name_or_path") or start
        method = recipe.get("method", "unknown")
        entry = METHODS.get(method)
        task = task_of(recipe)
        aot = bool(entry and entry.aot)
        return cls(
            path=path_s, name=run.name, method=method, model=model, adapter=adapter,
            reference=start or None,
            base_model=task.name if task else base_model_key(start) if start else "unknown",
            dataset=dataset_key(recipe), data_format=recipe.get("data_format"),
            sort=recipe.get("aot_sort", "hard") if aot else None,
            penalty=recipe.get("aot_penalty", "logistic") if aot else None,
            nll_weight=float(recipe.get(entry.nll_key, 0.0) or 0.0) if entry and entry.nll_key else 0.0,
            batch_size=_step_batch(recipe),
            sort_scope=recipe.get("aot_sort_scope", "optimizer_batch") if aot else None,
            seed=recipe.get("seed"),
            recipe_path=meta.get("path"), recipe_name=Path(meta["path"]).stem if meta.get("path") else None,
            config_id=config_id_of(recipe), recipe_sha256=sha256(run / "recipe.json"),
            fingerprint=run_fingerprint(run), complete=(run / "run.json").is_file(),
            chat_template=recipe.get("chat_template"), start_model=_run_json(run).get("start_model"), recipe=recipe,
        )

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("recipe")
        return d

    def parent_run(self) -> str:
        """The run this one started from when that is itself a finished run (the SFT stage of an AOT, DPO, ...
        run); the SFT stage itself, started from an untrained base model, and a base model are their own. A
        ``UserError`` when the run it trained from is gone or changed (:meth:`check_reference`)."""
        self.check_reference()
        if self.method == "base" or not self.reference or not (Path(self.reference) / "run.json").is_file():
            return self.path
        return self.reference

    def check_reference(self) -> None:
        """When this run started from another run (its ``run.json`` says so), that run must still be there, finished
        and with the same weights (by content: a byte-identical copy put back is fine); else a ``UserError`` naming
        both, instead of comparing the run with itself or with a model it never trained against."""
        start = self.start_model or {}
        if self.method == "base" or not self.reference or not start.get("run"):
            return
        ref, what = Path(self.reference), f"{self.path}: the run it trained from, {self.reference},"
        if not ref.is_dir():
            raise UserError(f"{what} is gone (moved or deleted): put it back (a byte-identical copy is the same "
                            "model) to evaluate against it")
        if not (ref / "run.json").is_file():
            raise UserError(f"{what} is not a finished run now (no run.json: being retrained, or interrupted)")
        if model_content_hash(ref) != start.get("content_sha256"):
            raise UserError(f"{what} holds other weights than the ones this run trained against (retrained or "
                            "changed since): restore them, or retrain this run on the new one")


SEED_KEYS = {"seed", "data_seed", "output_dir", "run_name"}


def _step_batch(recipe: dict) -> int | None:
    """Samples per rank and optimizer step (what AOT sorts under aot_sort_scope optimizer_batch)."""
    per_device = recipe.get("per_device_train_batch_size")
    return per_device * (recipe.get("gradient_accumulation_steps") or 1) if per_device else per_device


def resolved_config(meta: dict, run: Path) -> dict:
    """The config a run used, from its ``recipe.json``: ``resolved`` (every key after defaults and overrides,
    ``aot_handbook.recipe.Recipe.resolved``). A folder written before ``resolved`` was saved: its YAML block
    when it had no command-line overrides (the keys it sets are then exactly what ran; the others keep their
    defaults here), else an error: its overrides cannot be read back faithfully (bare flags, lists)."""
    if "resolved" in meta:
        return meta["resolved"]
    if meta.get("overrides"):
        raise ValueError(f"{run}/recipe.json: written by an older version (no 'resolved' config) with "
                         f"command-line overrides {meta['overrides']}: retrain the run to evaluate or tabulate it")
    return meta.get("recipe", {})


def config_id_of(recipe: dict) -> str:
    """What makes two runs the same configuration up to the seed (so a table may average them): the resolved
    config less ``SEED_KEYS``."""
    kept = {k: v for k, v in recipe.items() if k not in SEED_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_files(recipe: dict) -> list[str]:
    entries = (recipe.get("dataset_mixture") or {}).get("datasets") or []
    return [f for d in entries if isinstance(d, dict) for files in (d.get("data_files") or {}).values()
            for f in ([files] if isinstance(files, str) else files)]


def dataset_key(recipe: dict) -> str | None:
    task = task_of(recipe)
    if task is not None and task.owns_data(recipe):
        return task.name  # only the task's own data: a copied task recipe on other data is not the task
    text = json.dumps(recipe.get("dataset_mixture") or {}).lower()
    for needle, key in DATASETS:
        if needle in text:
            return key
    sources = [d.get("path") for d in (recipe.get("dataset_mixture") or {}).get("datasets", []) if d.get("path")]
    return sources[0] if sources else (_data_files(recipe) or [None])[0]
