"""The results store: one result file per (run, evaluation), its per-sample scores beside it.

One result file per (run, evaluation): ``results/<run name>/<evaluation name>.json``. It holds
``scores`` (table column -> value in percent), ``details`` (the evaluation's own output) and
``provenance`` (model, adapter, recipe path + sha256 of ``recipe.json``, the run's fingerprint
(``aot_handbook.run_folder.fingerprint``: a result whose run was retrained since is stale), judge,
package versions, date), and is written to a temporary name and renamed, so an interrupted evaluation
never leaves a file that looks complete. The run being evaluated is a ``run_folder.RunInfo``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..io import read_jsonl, write_json, write_jsonl
from ..provenance import package_versions, sha256, utc_now
from ..run_folder import RunInfo

RESULTS_DIR = Path("results")


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
        link = read_result_file(file).get("samples")
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


def read_result_file(path: Path):
    """A result file's JSON; a ``UserError`` naming the file when it is not JSON (a copy cut short, a write that
    was not atomic), instead of a traceback from every command that reads results."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a valid result file ({err}): evaluate the run again, or move the file away") \
            from None


def load_results(results_dir: str | Path = RESULTS_DIR) -> list[dict]:
    """Every complete result file under ``results_dir`` (temporary files are skipped)."""
    out = []
    for path in sorted(Path(results_dir).glob("*/*.json")):
        if path.name.startswith("."):
            continue
        data = read_result_file(path)
        if isinstance(data, dict) and "scores" in data and "run" in data:
            data["_file"] = str(path)
            out.append(data)
    return out


