"""One writer per run folder: an exclusive, non-blocking lock held while a process trains, evaluates or builds
data into a folder, so a second process started on the same folder stops at once, naming the folder and the
process that holds it, instead of both writing and leaving one configuration's fingerprint beside the other's
weights.

The lock is ``fcntl.flock`` on a lock file inside the folder (``.aot-handbook.lock``), holding the holder's pid
and command as text (only read to name the holder in the message). The kernel releases it when the holder exits,
however it exits (a kill -9 included), so a crash never leaves a stale lock to clear by hand (the file it leaves
is locked by no one: the next holder takes it over); a holder that ends normally removes the file. flock works
on local file systems and, on Linux, on NFSv4 (emulated with byte-range locks); some network file systems do not
honour it.

Under a multi-process launch only the main process takes the lock (:func:`main_process_lock`; the other ranks
write nothing of their own into the folder). Released, the lock leaves no trace: its file is removed, and the
folders the lock created too, if nothing else was written there, so a refused command changes nothing on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".aot-handbook.lock"


class FolderLocked(UserError):
    """Another process is writing this folder (the message names the folder and that process)."""


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(info: dict) -> str:
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if info.get("started") else "?"
    host = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    return f"pid {info['pid']}{host} ({info.get('what', 'writing')}: {info.get('command', '?')}; since {since})"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "writing"):
    """Hold ``folder``'s lock for the block (the folder is created if missing). ``what`` says what the holder
    does (training, evaluation, data), for the message another process gets. Raises :class:`FolderLocked`
    at once, without waiting and without writing anything, when another process holds it. On release the lock
    file is removed (and the folder, if this created it and it is still empty): nothing stays behind."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(_holder(fd))
            os.close(fd)
            raise FolderLocked(f"{folder} is being written by {holder}: wait for it to finish, or choose another "
                               "folder") from None
        try:  # the holder before us removes the file as it releases it: locked a removed file, open it again
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "?",
                "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # still holding it: whoever opened it meanwhile sees it gone and retries
        os.close(fd)  # closing the descriptor releases the lock
        with contextlib.suppress(OSError):  # the folders it created, while empty: a refusal leaves nothing behind
            for made in created:
                made.rmdir()


def main_process_lock(folder: str | Path, what: str = "writing"):
    """:func:`folder_lock` on the main process of a launch (RANK 0 or no launch), a no-op on the other ranks."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return folder_lock(folder, what)


def is_locked(folder: str | Path) -> dict | None:
    """The holder's description (pid, command, ...) when a process holds ``folder``'s lock, else None.
    Reads only; creates nothing."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
