"""A model folder's identity by content: a hash of its weight files, so a byte-identical copy (restored,
moved, copied to another disk) is the same model and a retrained or edited one is not.

The identity is sha256 over the folder's weight files (``model_utils.weight_files``: safetensors, bin, pt,
gguf and their shard indexes, adapter weights included; not the Trainer's
``training_args.bin``, optimizer or RNG state) by name and content, plus a PEFT adapter's
``adapter_config.json`` without the fields that only say where its base model lay (``lora_alpha`` scales the
weights; the base model's path does not). Everything else (config.json, tokenizer, logs) is left out: it is
rewritten by every ``save_pretrained`` without changing what the model computes.

Hashing a 7B folder reads ~15 GB, so each file's digest is cached under its (resolved path, size, mtime_ns,
ctime_ns, inode): a file rewritten in place changes its ctime (which no copy tool can set back), so a cached
digest is never reused for other bytes; a copy is hashed once, where it lies. The cache is one small JSON file
(default ``~/.cache/aot_handbook/content_hashes.json``, or ``$AOT_HANDBOOK_HASH_CACHE``), written atomically;
two processes writing it at once lose an entry at worst, which is then computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .io import write_json

# Files transformers' Trainer saves beside the weights that are not weights (training arguments, optimizer and
# scheduler state, RNG state): they differ between two trainings of the same weights, or are absent from a copy.
TRAINER_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")
TRAINER_PREFIXES = ("rng_state",)
# adapter_config.json fields that name where the base model was, not what the adapter computes
ADAPTER_LOCATION_KEYS = ("base_model_name_or_path", "revision")
CACHE_VERSION = 1


def default_cache_file() -> Path:
    return Path(os.environ.get("AOT_HANDBOOK_HASH_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aot_handbook"
                / "content_hashes.json")


def _stat_key(path: Path) -> str:
    st = path.stat()
    return json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class HashCache:
    """File digests by (path, size, mtime_ns, ctime_ns, inode), read once and written back when something new
    was hashed. Entries whose file is gone or changed are dropped on write."""

    def __init__(self, file: str | Path | None = None):
        self.file = Path(file) if file is not None else default_cache_file()
        self.entries: dict[str, str] = {}
        self.dirty = False
        try:
            data = json.loads(self.file.read_text())
            if data.get("version") == CACHE_VERSION:
                self.entries = dict(data["entries"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no cache yet, or an unreadable one: start empty (it is only a cache)

    def digest(self, path: Path) -> str:
        key = _stat_key(path)
        if key not in self.entries:
            self.entries[key] = file_sha256(path)
            self.dirty = True
        return self.entries[key]

    def save(self) -> None:
        if not self.dirty:
            return
        live = {}
        for key, digest in self.entries.items():
            name = json.loads(key)[0]
            try:
                if _stat_key(Path(name)) == key:
                    live[key] = digest
            except OSError:
                continue
        try:
            write_json(self.file, {"version": CACHE_VERSION, "entries": live}, indent=0)
        except OSError:
            pass  # a read-only home: hashing still works, only uncached
        self.dirty = False


def model_content_hash(folder: str | Path, *, cache: HashCache | str | Path | None = None) -> str:
    """sha256 (hex) of what a model folder computes with: its weight files by relative name and content, and a
    PEFT adapter's config less its base-model location. ValueError when the folder holds no weight file."""
    from .model_utils import weight_files

    folder = Path(folder)
    files = [f for f in weight_files(folder)
             if f.name not in TRAINER_FILES and not f.name.startswith(TRAINER_PREFIXES)]
    if not files:
        raise ValueError(f"{folder}: no weight files (safetensors, bin, pt, gguf) to identify the model by")
    own = cache if isinstance(cache, HashCache) else HashCache(cache)
    h = hashlib.sha256()
    for f in files:
        h.update(json.dumps([f.name, own.digest(f)]).encode())
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        cfg = json.loads(adapter.read_text())
        cfg = {k: v for k, v in cfg.items() if k not in ADAPTER_LOCATION_KEYS}
        h.update(json.dumps(["adapter_config.json", cfg], sort_keys=True).encode())
    if not isinstance(cache, HashCache):
        own.save()
    return h.hexdigest()
