"""Files written whole or not at all, and JSON Lines read with errors that name the file and the line.

Every write goes to a temporary file beside the target (same folder, so the rename cannot cross file
systems) and is renamed over it with ``os.replace``: a killed process leaves the old file or the new one,
never half of one, and a reader never sees a partial file. Parent folders are created.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary name beside ``path``, renamed to ``path`` when the block succeeds and removed when it fails.
    It keeps the suffix (``.x.png.<id>.tmp.png``), so writers that infer the format from it (``savefig``) work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data, *, indent: int = 2) -> Path:
    """Atomic JSON write: ``indent`` spaces, keys in their order, anything else as ``str``, a final newline
    (run.json, results, provenance)."""
    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def write_jsonl(path: str | Path, rows, *, sort_keys: bool = False, default=None) -> Path:
    """Atomic JSON Lines write: one ``json.dumps(row, sort_keys=..., default=...)`` a line."""
    return write_text(path, "".join(json.dumps(r, sort_keys=sort_keys, default=default) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON Lines file (blank lines skipped); a bad line is a ValueError naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err})") from None
    return rows
