"""A killed `aot-train` (SIGTERM, SIGKILL) resumes from its newest complete checkpoint to the end an
uninterrupted run reaches."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aot_handbook.plan import train
from aot_handbook.run_folder import last_complete_checkpoint
from tests.helpers import copy_tiny_recipes

STEPS = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--summary", "false",
         "--per_device_train_batch_size", "16", "--logging_steps", "1", "--precompute_ref_log_probs", "false"]


def _command(out):
    return [sys.executable, "-m", "aot_handbook.cli", "train", "recipes/tiny/aot_unpaired.yaml", *STEPS,
            "--output_dir", out]


def _launch(out, cwd):
    return subprocess.Popen(_command(out), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _losses(out):
    return [h["loss"] for h in json.loads((Path(out) / "log_history.json").read_text()) if "loss" in h]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    copy_tiny_recipes(tmp, steps={True: 20, False: 8})
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        train("recipes/tiny/aot_unpaired.yaml", [*STEPS, "--output_dir", "runs/straight"])  # also trains SFT
    finally:
        os.chdir(cwd)
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_end(workdir, sig):
    out = f"runs/killed-{sig.name}"
    proc = _launch(out, workdir)
    deadline = time.time() + 300
    while not (workdir / out / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not (workdir / out / "run.json").exists()  # an interrupted run never looks complete
    resumed = subprocess.run(_command(out), cwd=workdir, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (workdir / out / "run.json").exists()

    straight, resumed = workdir / "runs/straight", workdir / out
    assert _losses(resumed)[-4:] == pytest.approx(_losses(straight)[-4:], rel=1e-5)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


def test_half_written_checkpoint_is_skipped(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text('{"global_step": %d}' % step if complete else '{"global_')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "missing") is None
