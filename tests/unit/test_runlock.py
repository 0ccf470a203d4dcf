"""runlock.folder_lock: one writer per folder, across real processes; the second one is told who holds it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from aot_handbook.runlock import LOCK_NAME, FolderLocked, folder_lock, is_locked
from tests.helpers import REPO

HOLD = ("import sys, time\nfrom aot_handbook.runlock import folder_lock\n"
        "with folder_lock(sys.argv[1], 'training'):\n    print('held', flush=True)\n    time.sleep(120)\n")
TRY = ("import sys\nfrom aot_handbook.runlock import FolderLocked, folder_lock\n"
       "try:\n    with folder_lock(sys.argv[1], 'evaluation'):\n        print('got it')\n"
       "except FolderLocked as err:\n    sys.exit(f'error: {err}')\n")


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")


@pytest.fixture
def holder(tmp_path):
    """A real process holding the lock of tmp_path/run (as `aot-train` would), killed at the end."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "--output_dir", "runs/x"], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


@pytest.mark.slow  # real processes (each imports the package: ~1 s)
def test_a_second_process_is_refused_at_once_naming_folder_pid_and_command(holder):
    folder, proc = holder
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    t0 = time.monotonic()
    second = subprocess.run([sys.executable, "-c", TRY, str(folder)], env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 1 and "got it" not in second.stdout
    message = second.stderr.strip()
    assert message.startswith(f"error: {folder} is being written by pid {proc.pid} (training: -c {folder} "
                              "--output_dir runs/x; since "), message
    assert time.monotonic() - t0 < 60  # it did not wait for the holder (which sleeps 120 s)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written by the refused one
    assert is_locked(folder)["pid"] == proc.pid
    with pytest.raises(FolderLocked, match=f"pid {proc.pid}"):  # in this process too
        with folder_lock(folder):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_lock_goes_with_its_holder_however_it_ends(holder, how):
    folder, proc = holder
    proc.send_signal(how)
    proc.wait()
    assert is_locked(folder) is None
    second = subprocess.run([sys.executable, "-c", TRY, str(folder)], env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0 and second.stdout.strip() == "got it", second.stderr


def test_in_one_process_the_lock_is_taken_released_and_not_reentrant(tmp_path):
    folder = tmp_path / "new" / "run"
    assert is_locked(folder) is None and not folder.exists()  # is_locked creates nothing
    with folder_lock(folder, "data") as path:
        assert path == folder / LOCK_NAME and folder.is_dir()
        assert is_locked(folder)["what"] == "data"
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
            with folder_lock(folder):  # a second holder in the same process is refused too
                pass
    assert is_locked(folder) is None
    with folder_lock(folder):
        pass
    with pytest.raises(ZeroDivisionError):
        with folder_lock(folder):
            1 / 0
    assert is_locked(folder) is None  # released on an error


def test_released_it_leaves_nothing_behind(tmp_path):
    """A refused or failed command changes nothing on disk: the lock file goes with the lock, and so does a
    folder the lock created if nothing else was written there; a folder with the run's files stays."""
    folder = tmp_path / "results" / "run"
    with pytest.raises(ValueError):
        with folder_lock(folder, "training"):
            raise ValueError("refused")
    assert not (tmp_path / "results").exists()
    with folder_lock(folder, "training"):
        (folder / "weights").write_text("w")
    assert sorted(p.name for p in folder.iterdir()) == ["weights"]
    with folder_lock(folder, "evaluation"):  # an existing folder is never removed, even emptied
        (folder / "weights").unlink()
    assert folder.is_dir() and not any(folder.iterdir())
