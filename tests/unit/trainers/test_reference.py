"""ZeRO-3 and the shared reference log-prob cache: the key must come from the full weights.

With ``zero3_init_flag`` transformers loads a model already partitioned over the ranks, so each
parameter's ``.data`` is empty: TRL's ``hash_module`` then sees only names and dtypes, and two different
models of one architecture get the same cache key. ``reference_weights_hash`` gathers each partitioned
tensor. Runs with real DeepSpeed ZeRO-3 partitioning on CPU (gloo, one process) when DeepSpeed is
installed (``pip install -e ".[deepspeed]"``), in a subprocess so the process group stays out of pytest.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_reference_hash_uses_full_weights():
    pytest.importorskip("deepspeed")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "zero3 hash ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]


def _worker():
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import hash_module

    from aot_handbook.trainers import is_zero3_partitioned, reference_weights_hash

    deepspeed.init_distributed(dist_backend="gloo")
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}

    def partitioned(seed):
        torch.manual_seed(seed)
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            return LlamaForCausalLM(config)

    a, b = partitioned(0), partitioned(1)
    assert is_zero3_partitioned(a) and all(p.data.numel() == 0 for p in a.parameters())
    assert hash_module(a) == hash_module(b), "TRL's hash tells partitioned models apart now: revisit the fix"
    with deepspeed.zero.GatheredParameters(list(a.parameters())):
        full = {k: v.detach().clone() for k, v in a.state_dict().items()}
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(full)
    assert not is_zero3_partitioned(plain)
    assert reference_weights_hash(a) == reference_weights_hash(plain)  # the full weights, not the empty shards
    assert reference_weights_hash(a) != reference_weights_hash(b)
    assert all(p.data.numel() == 0 for p in a.parameters())  # released again after hashing
    print("zero3 hash ok")


if __name__ == "__main__":
    _worker()
