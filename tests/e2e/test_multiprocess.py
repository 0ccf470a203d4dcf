"""Multi-process runs end to end on CPU: `make train ... ACCELERATE_CONFIG=ddp_cpu.yaml NUM_PROCESSES=2`.

Two processes (gloo) train the SFT stage and AOT paired; the held-out summary is computed, printed and
written once, by the main process, and equals a one-process evaluation of the saved weights."""

import json
import math
import socket

import pytest

from aot_handbook.heldout import paired_statistics
from aot_handbook.tasks.tiny.arithmetic import read_jsonl, task_accuracy
from tests.helpers import REPO, copy_tiny_recipes, run_make

pytestmark = pytest.mark.slow  # every test here: make test-fast leaves them out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_make_train_summarizes_once(tmp_path):
    copy_tiny_recipes(tmp_path, steps={True: 6, False: 3})
    proc = run_make(tmp_path, "train", "RECIPE=recipes/tiny/aot_paired.yaml",
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
