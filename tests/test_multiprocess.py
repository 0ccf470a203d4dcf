"""Multi-process runs end to end on CPU: `make train ... ACCELERATE_CONFIG=ddp_cpu.yaml NUM_PROCESSES=2`.

Two processes (gloo) train the SFT stage and AOT paired; the held-out summary is computed, printed and
written once, by the main process, and equals a one-process evaluation of the saved weights.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aot_handbook.heldout import paired_statistics
from aot_handbook.run import ONE_THREAD_BELOW_PARAMS, set_cpu_threads
from aot_handbook.tiny import read_jsonl, task_accuracy

from .test_run import REPO, _tiny_recipes


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make(work: Path, *args: str) -> subprocess.CompletedProcess:
    """`make` with the repository's Makefile in a scratch folder, on this interpreter (no venv set-up)."""
    for name in ("setup.cfg", "pyproject.toml"):
        if not (work / name).exists():
            (work / name).symlink_to(REPO / name)
    python = sys.executable
    stamp = work / ".cache" / f"deps-installed-{python.replace('/', '_')}"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()  # this environment is set up already: make must not pip install into it
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for name in ("ACCELERATE_USE_CPU", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"):  # under `make test`: a fresh make
        env.pop(name, None)
    return subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), *args, f"PYTHON={python}"],
                          cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


def test_two_process_make_train_summarizes_once(tmp_path):
    _tiny_recipes(tmp_path, steps={True: 6, False: 3})
    proc = _make(tmp_path, "train", "RECIPE=recipes/tiny/aot_paired.yaml",
                 f"ACCELERATE_CONFIG={REPO / 'recipes/accelerate_configs/ddp_cpu.yaml'}", "NUM_PROCESSES=2",
                 f"MAIN_PROCESS_PORT={_free_port()}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-20000:]
    out, sft = tmp_path / "runs" / "tiny-aot_paired", tmp_path / "runs" / "tiny-sft"
    printed = proc.stdout
    for run in ("runs/tiny-sft", "runs/tiny-aot_paired"):  # one summary per stage, not one per rank
        assert printed.count(f"  run folder: {run} (") == 1, printed[-4000:]
    assert printed.count("Summary (held-out data)") == 2
    assert printed.count("requires recipes/tiny/sft.yaml: training it first") == 1
    for run in (sft, out):
        assert (run / "run.json").is_file() and (run / "model.safetensors").is_file()
        assert not list(run.glob(".*.tmp")), "a half-written file was left behind"
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    assert sum("loss" in h for h in history) == 3
    # Two ranks trained: an epoch is ceil(n / (2 x 64)) steps (one process: ceil(n / 64)).
    data = tmp_path / ".cache" / "tiny" / "v2-seed0" / "data"
    n_train = len(read_jsonl(data / "paired_train.jsonl"))
    assert history[0]["epoch"] == pytest.approx(1 / math.ceil(n_train / (2 * 64)), rel=1e-9)

    # A one-process evaluation of the saved weights gives the same summary.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = AutoModelForCausalLM.from_pretrained(sft).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    stats = paired_statistics(policy, reference, tokenizer, read_jsonl(data / "paired_test.jsonl")[:512], beta=0.1)
    for key in ("reward_accuracy", "policy_margin_accuracy", "reference_margin_accuracy"):
        assert metrics["heldout"][key] == pytest.approx(stats[key], abs=1e-12), key
    for key in ("rewards_fsd", "margins_fsd"):
        for name, value in stats[key].items():
            assert metrics["heldout"][key][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, name)
    prompts = read_jsonl(data / "eval_prompts.jsonl")
    assert metrics["task_accuracy"]["aligned"] == pytest.approx(task_accuracy(policy, tokenizer, prompts))
    assert metrics["task_accuracy"]["reference"] == pytest.approx(task_accuracy(reference, tokenizer, prompts))


def test_cpu_threads_follow_model_size_and_omp(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with torch.device("meta"):  # a 7B-shaped model costs nothing on the meta device
        large = LlamaForCausalLM(LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4))
    assert small.num_parameters() < ONE_THREAD_BELOW_PARAMS < large.num_parameters()
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert set_cpu_threads(large, on_cpu=True) == 2  # a real model keeps torch's threads
        assert set_cpu_threads(small, on_cpu=False) == 2  # training on a GPU: untouched
        assert set_cpu_threads(small, on_cpu=True) == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
        assert set_cpu_threads(small, on_cpu=True) == 2
    finally:
        torch.set_num_threads(before)
