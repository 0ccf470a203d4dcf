"""What identifying a model by content costs (``aot_handbook.content_hash``): MB/s of hashing a weight file,
from disk (the file's pages dropped from the page cache first) and from memory, each interleaved with a plain
read of the same bytes (the peer: what the disk and the page cache give without hashing), and a second call
with the digest cache warm (a stat per file). Then the estimate for a 7B folder (bf16, 14.5 GB).

    OMP_NUM_THREADS=1 python benchmarks/bench_content_hash.py [--size-gb 3] [--repeats 3] [--dir /tmp]

The file (random bytes, named model.safetensors) and the cache are written under --dir and deleted at the end.
Only this file's pages are dropped (posix_fadvise DONTNEED), never the machine's whole page cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from aot_handbook.content_hash import HashCache, model_content_hash

CHUNK = 64 * 1024**2
SEVEN_B = 14.5e9  # bytes of a 7B model's weights in bf16


def _write(path: Path, size: int) -> None:
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        for i in range(0, size, CHUNK):
            f.write(block[: min(CHUNK, size - i)] if i else os.urandom(min(CHUNK, size)))
        f.flush()
        os.fsync(f.fileno())


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read(path: Path) -> None:
    buf = bytearray(2**18)  # hashlib.file_digest's buffer size
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=tempfile.gettempdir())
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-content-hash-", dir=a.dir))
    size = int(a.size_gb * 1024**3)
    times: dict[str, list[float]] = {}
    try:
        model = work / "model"
        model.mkdir()
        _write(model / "model.safetensors", size)

        def timed(name, fn, *args, **kwargs):
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            times.setdefault(name, []).append(time.perf_counter() - t0)

        warmup = work / "warmup"  # imports (model_utils pulls in transformers) outside the timings
        warmup.mkdir()
        (warmup / "model.safetensors").write_bytes(b"0")
        model_content_hash(warmup, cache=work / "cache-warmup.json")
        for _ in range(a.repeats):  # interleaved: read, hash, read, hash, from disk then from memory
            for where in ("disk", "memory"):
                for what in ("read", "hash"):
                    if where == "disk":
                        _drop(model / "model.safetensors")
                    else:
                        _read(model / "model.safetensors")  # make sure the pages are in memory
                    cache = work / f"cache-{what}-{where}.json"
                    cache.unlink(missing_ok=True)
                    if what == "read":
                        timed(f"read, from {where}", _read, model / "model.safetensors")
                    else:
                        timed(f"hash, from {where}", model_content_hash, model, cache=cache)
            warm = HashCache(work / "cache-hash-memory.json")
            timed("hash, digest cache warm", model_content_hash, model, cache=warm)
        print(f"content hash of one {a.size_gb:g} GB weight file, {a.repeats} interleaved repeats "
              f"(median, min-max; sha256, hashlib.file_digest)")
        print("| what | MB/s | s | 7B folder (14.5 GB) |\n|---|---|---|---|")
        for name, ts in times.items():
            med = statistics.median(ts)
            rate = size / 1e6 / med
            seven = SEVEN_B / (size / med)
            print(f"| {name} | {rate:,.0f} ({size / 1e6 / max(ts):,.0f}-{size / 1e6 / min(ts):,.0f}) | "
                  f"{med:.3f} | {seven:.1f} s |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
