"""Files written whole or not at all; JSON Lines and YAML read with errors that name the file and the line.

Every write goes to a temporary file beside the target (same folder, so the rename cannot cross file
systems) and is renamed over it with ``os.replace``: a killed process leaves the old file or the new one,
never half of one, and a reader never sees a partial file. Parent folders are created.

:func:`read_yaml` is the one reader of the YAML files a user writes (training, pairs, sweep, grid and evaluation
recipes, accelerate configs); :func:`aot_handbook.recipe.read_recipe` adds the file's kind on top of it. It reads
through :func:`load_yaml`, which refuses a key given twice in one mapping (YAML alone keeps the last, silently).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import yaml

from .errors import UserError


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


class DuplicateKeyError(UserError):
    """A YAML mapping names one key twice (YAML itself keeps the last one silently)."""


class _NoDuplicatesLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping. Merge keys (``<<: *defaults``) may still
    be overridden by an explicit key: that is what they are for."""

    source = "<string>"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if first is not key_node:
                    raise DuplicateKeyError(
                        f"{self.source}: key {key!r} is given twice, on line {first.start_mark.line + 1} and line "
                        f"{key_node.start_mark.line + 1} (YAML would keep only the last): remove one")
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, what: str = "YAML"):
    """A YAML file's content, refusing what YAML would silently accept: a key given twice in one mapping
    (:class:`DuplicateKeyError`, naming the key, the file and both lines). A ``UserError`` naming the file (and
    ``what`` it should be) when the file is missing, not UTF-8 text or not valid YAML."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: a {what} must be UTF-8 text (byte {err.start} is not): is this the right file?") \
            from None
    loader = _NoDuplicatesLoader(text)
    loader.source = str(path)
    try:
        return loader.get_single_data()
    except DuplicateKeyError:
        raise
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str = "recipe") -> dict:
    """The mapping a YAML file holds (read by :func:`load_yaml`: a key given twice is an error); a ``UserError``
    naming the file (and ``what`` it should be) when it is missing, not UTF-8 text, not valid YAML, or not a
    mapping of keys to values."""
    data = load_yaml(path, what)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a {what} must be a YAML mapping of keys to values")
    return data
