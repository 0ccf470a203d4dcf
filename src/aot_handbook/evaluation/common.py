"""What every evaluation shares: the run being evaluated, provenance, atomic result files.

One result file per (run, evaluation): ``results/<run name>/<evaluation name>.json``. It holds
``scores`` (table column -> value in percent), ``details`` (the evaluation's own output) and
``provenance`` (model, adapter, recipe path + sha256 of ``recipe.json``, the run's fingerprint
(``aot_handbook.run.fingerprint``: a result whose run was retrained since is stale), judge,
package versions, date), and is written to a temporary name and renamed, so an interrupted evaluation
never leaves a file that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from ..io import read_jsonl, write_json, write_jsonl
from ..methods import METHODS
from ..models import BASE_MODELS, model_key
from ..tasks import task_of, tasks

RESULTS_DIR = Path("results")
PACKAGES = ("aot-handbook", "torch", "transformers", "trl", "peft", "datasets", "alpaca-eval", "lm-eval", "vllm")

DATASETS = (("ultrafeedback", "ultrafeedback"), ("helpsteer", "helpsteer"), ("beavertails", "pku-beavertails"),
            ("pku", "pku-beavertails"))


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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


def run_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of a run folder's weights as they are now (None: not a run, or trained before
    fingerprints were recorded)."""
    try:
        return json.loads((Path(path) / "fingerprint.json").read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class RunInfo:
    """A model to evaluate: a run folder of ``aot_handbook.run.train`` or a plain model (the base row)."""

    path: str  # as given: run folder, model folder or hub id
    name: str  # results/<name>/...
    method: str  # aot_paired, aot_unpaired, dpo, ipo, kto, sft, or "base" for a model that is not a run
    model: str  # what from_pretrained loads (the base model when ``adapter`` is set)
    adapter: str | None = None  # a PEFT (LoRA) adapter folder
    reference: str | None = None  # the model the run started from (SFT / base), for win rates and plots
    base_model: str = ""  # table row group: merlinite-7b, ..., tiny
    dataset: str | None = None  # ultrafeedback, helpsteer, pku-beavertails, tiny
    data_format: str | None = None  # what the run trained on: paired, unpaired, sft (run.data_format)
    sort: str | None = None  # AOT hard / soft sort
    penalty: str | None = None  # AOT penalty
    nll_weight: float = 0.0  # the added NLL term (aot_nll_weight, or nll_weight of the baselines)
    batch_size: int | None = None  # per device
    seed: int | None = None
    recipe_path: str | None = None
    recipe_name: str | None = None  # the recipe file's stem, e.g. sft, nll_control, aot_unpaired
    config_id: str | None = None  # the recipe and overrides without seed/output_dir: runs equal in it are seeds
    recipe_sha256: str | None = None
    fingerprint: str | None = None  # what determined the weights (run.py); results follow it
    complete: bool = True
    # the recipe's; for a base model, the one its recipes train with (None: the tokenizer's)
    chat_template: str | None = None
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
            dataset=_dataset_key(recipe), data_format=recipe.get("data_format"),
            sort=recipe.get("aot_sort", "hard") if aot else None,
            penalty=recipe.get("aot_penalty", "logistic") if aot else None,
            nll_weight=float(recipe.get(entry.nll_key, 0.0) or 0.0) if entry and entry.nll_key else 0.0,
            batch_size=recipe.get("per_device_train_batch_size"),
            seed=recipe.get("seed"),
            recipe_path=meta.get("path"), recipe_name=Path(meta["path"]).stem if meta.get("path") else None,
            config_id=_config_id(recipe), recipe_sha256=sha256(run / "recipe.json"),
            fingerprint=run_fingerprint(run), complete=(run / "run.json").is_file(),
            chat_template=recipe.get("chat_template"), recipe=recipe,
        )

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("recipe")
        return d


SEED_KEYS = {"seed", "data_seed", "output_dir", "run_name"}


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


def _config_id(recipe: dict) -> str:
    """What makes two runs the same configuration up to the seed (so a table may average them): the resolved
    config less ``SEED_KEYS``."""
    kept = {k: v for k, v in recipe.items() if k not in SEED_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_files(recipe: dict) -> list[str]:
    entries = (recipe.get("dataset_mixture") or {}).get("datasets") or []
    return [f for d in entries if isinstance(d, dict) for files in (d.get("data_files") or {}).values()
            for f in ([files] if isinstance(files, str) else files)]


def _dataset_key(recipe: dict) -> str | None:
    task = task_of(recipe)
    if task is not None and task.owns_data(recipe):
        return task.name  # only the task's own data: a copied task recipe on other data is not the task
    text = json.dumps(recipe.get("dataset_mixture") or {}).lower()
    for needle, key in DATASETS:
        if needle in text:
            return key
    sources = [d.get("path") for d in (recipe.get("dataset_mixture") or {}).get("datasets", []) if d.get("path")]
    return sources[0] if sources else (_data_files(recipe) or [None])[0]


def load_eval_recipe(path: str | Path) -> dict:
    """An evaluation recipe (``recipes/eval/*.yaml``): ``name``, ``kind`` and the kind's blocks."""
    path = Path(path)
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: an evaluation recipe is a mapping")
    recipe.setdefault("name", path.stem)
    kinds = ("alpaca_eval", "lm_eval", *(t.eval_kind for t in tasks()))
    if recipe.get("kind") not in kinds:
        raise ValueError(f"{path}: key 'kind' must be one of {kinds}, got {recipe.get('kind')!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(recipe["name"])):
        raise ValueError(f"{path}: key 'name' must be a file-name-safe string, got {recipe['name']!r}")
    recipe["_path"] = str(path)
    recipe["_sha256"] = sha256(path)
    return recipe


def result_path(run: RunInfo, eval_name: str, results_dir: str | Path = RESULTS_DIR) -> Path:
    return Path(results_dir) / run.name / f"{eval_name}.json"


def samples_path(result_file: str | Path) -> Path:
    """``results/<run>/<eval>.json`` -> ``results/<run>/<eval>.samples.jsonl`` (per-sample scores)."""
    result_file = Path(result_file)
    return result_file.with_name(result_file.name[: -len(".json")] + ".samples.jsonl")


def write_samples(result_file: str | Path, rows: list[dict]) -> dict:
    """Per-sample scores beside a result file, one JSON object a line: ``id`` (the prompt, or
    ``task/doc_id``) and the score columns of that sample (same names and units as the result's
    ``scores``, so their mean over the rows is the score), plus extras such as lengths.
    Written atomically; returns the link (file, rows, sha256) the result JSON records."""
    path = write_jsonl(samples_path(result_file), rows, default=str)
    return {"file": path.name, "rows": len(rows), "sha256": sha256(path)}


def read_samples(result: dict | str | Path) -> list[dict] | None:
    """The per-sample rows of a result (a loaded result dict or its file), or None for results
    written before per-sample scores were kept, or whose samples file changed since."""
    if isinstance(result, dict):
        link, file = result.get("samples"), result.get("_file")
    else:
        file = Path(result)
        link = json.loads(file.read_text()).get("samples")
    if not link or not file:
        return None
    path = Path(file).with_name(link["file"])
    if not path.is_file() or sha256(path) != link.get("sha256"):
        return None
    return read_jsonl(path)


def save_result(run: RunInfo, recipe: dict, scores: dict, details: dict, *, judge: dict | None = None,
                results_dir: str | Path = RESULTS_DIR) -> Path:
    """One result file, with the provenance every table cell can be traced back to.

    ``details["samples"]``, if given (a list of per-sample rows), is written first beside the
    result (``write_samples``) and the result records its name and sha256 instead."""
    details = dict(details)
    rows = details.pop("samples", None)
    link = write_samples(result_path(run, recipe["name"], results_dir), rows) if rows is not None else None
    result = {
        "evaluation": recipe["name"],
        "kind": recipe["kind"],
        "run": run.describe(),
        "scores": scores,
        "details": details,
        "samples": link,
        "provenance": {
            "model": run.model,
            "adapter": run.adapter,
            "run_recipe": run.recipe_path,
            "run_recipe_json_sha256": run.recipe_sha256,
            "run_fingerprint": run.fingerprint,
            "eval_recipe": recipe["_path"],
            "eval_recipe_sha256": recipe["_sha256"],
            "judge": judge,
            "packages": package_versions(),
            "date": utc_now(),
        },
    }
    return write_json(result_path(run, recipe["name"], results_dir), result)


def load_results(results_dir: str | Path = RESULTS_DIR) -> list[dict]:
    """Every complete result file under ``results_dir`` (temporary files are skipped)."""
    out = []
    for path in sorted(Path(results_dir).glob("*/*.json")):
        if path.name.startswith("."):
            continue
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "scores" in data and "run" in data:
            data["_file"] = str(path)
            out.append(data)
    return out


