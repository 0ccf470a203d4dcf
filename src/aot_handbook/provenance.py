"""Provenance of what a stage writes: file hashes, package versions, the date.

Result files (``evaluation.results``), the data stage's ``provenance.json`` (``pairs``) and run folders record them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from importlib import metadata
from pathlib import Path

PACKAGES = ("aot-handbook", "torch", "transformers", "trl", "peft", "datasets", "alpaca-eval", "lm-eval", "vllm")


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
