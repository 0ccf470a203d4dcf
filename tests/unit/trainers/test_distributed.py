"""The global sort across data-parallel ranks (docs/MATH.md sec. 6) is exact: real processes, gloo, CPU.

With R data-parallel ranks, ``aot_global_sort`` gathers u and v from every rank (an autograd
all-gather) and sorts the global set. The claim under test: every rank's loss and the
DDP-averaged gradients equal those of ONE process on the concatenated batch. Checked

- loss level (float64, rel 1e-10): a shared parameter w, u = tanh(x_u w), v = x_v w on 2 and 3
  ranks with unequal per-rank sizes (n != m; a rank with no u, another with no v), every
  penalty with the hard sort, the soft sorts with the logistic one. A gather that keeps only
  the local shard's gradient (the classic bug) is shown to fail the same comparison;
- trainer level (torchrun, float64 model, rel 1e-6 because TRL's fused LM head works in
  float32, see RTOL_TRAINER): ``AOTTrainer`` (aot_paired, aot_unpaired) and
  ``UnpairedAOTTrainer`` (n != m on every rank; also different counts from rank to rank) with
  one batch per rank: loss, logged ``aot/*`` and every parameter's gradient equal one process
  on the concatenated rows; with ``aot_global_sort=False`` they equal per-rank sorting (TRL's
  behaviour), i.e. each rank's own slice and the mean of the per-slice gradients;
- ``accelerate launch --multi_gpu`` on CPU, 2 processes, 3 SGD steps: the logged loss and
  ``aot/*`` diagnostics are those of one process on the global batches.

Ranks holding different label counts must also train and log (test_unpaired_uneven_ranks_log_rewards).

This file is also the worker script: ``torchrun ... tests/unit/trainers/test_distributed.py <mode> <out> <tiny>``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here: make test-fast leaves them out

HERE = Path(__file__).resolve()
PYTHON = sys.executable
PENALTIES = ("logistic", "hinge", "squared_hinge", "least_squares")
SORTS = {"hard": {}, "soft": {"regularization": 0.1, "n_iter": 50}, "soft_pav": {"regularization": 0.1}}
# Per-rank sample counts (u sizes, v sizes) of the loss-level cases, by world size.
LOSS_CASES = {
    2: {"unequal": ([3, 5], [4, 2]), "equal": ([4, 4], [4, 4])},
    3: {"empty_sides": ([2, 0, 6], [4, 3, 0]), "equal": ([3, 3, 3], [3, 3, 3])},
}
LOSS_DIM = 4
# Trainer level: (trainer, config kwargs, data split, positives among the 5 rows of rank 0, 1, 2).
# Rows per rank: 3 pairs, or 5 unpaired rows. "unpaired": n != m on every rank, the same on all
# (what BalancedLabelSampler produces); "unpaired_uneven": n != m and different from rank to rank.
TRAINER_CASES = {
    "aot_paired": ("AOTTrainer", {"loss_type": "aot_paired"}, "paired_train", None),
    "aot_unpaired": ("AOTTrainer", {"loss_type": "aot_unpaired", "aot_penalty": "squared_hinge"}, "paired_train",
                     None),
    "unpaired": ("UnpairedAOTTrainer", {}, "unpaired_train", [2, 2, 2]),
    "unpaired_uneven": ("UnpairedAOTTrainer", {"aot_penalty": "hinge"}, "unpaired_train", [1, 3, 2]),
}
PAIRS_PER_RANK = 3
UNPAIRED_PER_RANK = 5
RTOL64 = 1e-10
# Trainer level: the model is float64, but TRL's fused LM head (trl/kernels/chunked_logprob.py) casts
# dL/dlogp to float32 and accumulates the LM-head weight gradient over tokens in float32, so the
# trainer-level comparison is float32-exact: measured 2e-7 of the largest gradient (tied embedding).
RTOL_TRAINER = 1e-6
DIAG_KEYS = ("aot/loss", "aot/fsd_violation_share", "aot/w1_violation", "aot/min_quantile_gap")


# ---------------------------------------------------------------- shared by workers and references


def _loss_data(world: int, case: str):
    """Full (unsliced) inputs of a loss-level case: features of U and V, the shared weight, the slices."""
    u_sizes, v_sizes = LOSS_CASES[world][case]
    g = torch.Generator().manual_seed(100 * world + sum(map(ord, case)))
    xu = torch.randn(sum(u_sizes), LOSS_DIM, generator=g, dtype=torch.float64)
    xv = torch.randn(sum(v_sizes), LOSS_DIM, generator=g, dtype=torch.float64)
    w = torch.randn(LOSS_DIM, generator=g, dtype=torch.float64) / LOSS_DIM**0.5
    return xu, xv, w, u_sizes, v_sizes


def _uv(xu, xv, w):
    # Both sides depend on w, non-linearly, so the gradient reaches w through u and v.
    return torch.tanh(xu @ w) * 2.0, xv @ w + 0.3


def _loss(u, v, penalty, sort):
    from aot_handbook.loss import aot_loss

    return aot_loss(u, v, beta=1.0, penalty=penalty, sort=sort, **SORTS[sort])


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _rows(tiny, case, world=3):
    """The rows every rank loads, in order: rank r's per-device batch is the r-th chunk."""
    _, _, split, positives = TRAINER_CASES[case]
    data = _read_jsonl(tiny[split])
    if positives is None:  # a seeded sample: the first rows of a split can sort alike on every rank
        return random.Random(7).sample(data, world * PAIRS_PER_RANK)
    pos = [r for r in data if r["label"]]
    neg = [r for r in data if not r["label"]]
    rows = []
    for n_pos in positives[:world]:
        chunk = [pos.pop() for _ in range(n_pos)] + [neg.pop() for _ in range(UNPAIRED_PER_RANK - n_pos)]
        rows += chunk[::2] + chunk[1::2]  # labels mixed within the batch
    return rows


def _per_rank(case):
    return PAIRS_PER_RANK if TRAINER_CASES[case][3] is None else UNPAIRED_PER_RANK


def _models(tiny, dtype):
    """Policy = base + fixed noise, reference = base: distinct log-ratios, so the sort matters."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny["base_model"], dtype=dtype)
    policy = AutoModelForCausalLM.from_pretrained(tiny["base_model"], dtype=dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype))
    return policy, ref


def _trainer_classes():
    """The package's trainers with (only) the data order pinned and the per-call loss recorded."""
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    from aot_handbook import trainers as T

    class Pin:
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            labels = inputs.get("label")
            self.__dict__.setdefault("seen", []).append({
                "loss": float((out[0] if return_outputs else out).detach()),
                "rows": int(inputs["input_ids"].shape[0]),
                "labels": None if labels is None else [bool(x) for x in labels],
            })
            return out

    class Grads(TrainerCallback):
        """The gradients the optimizer is about to use (after backward and DDP's all-reduce), per step;
        ``flags[k]`` sets ``aot_global_sort`` for step k."""

        def __init__(self, flags):
            self.steps, self.flags = [], flags

        def on_step_begin(self, args, state, control, **kwargs):
            if self.flags is not None:
                args.aot_global_sort = self.flags[state.global_step]

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    classes = {"AOTTrainer": type("PinnedAOT", (Pin, T.AOTTrainer), {}),
               "UnpairedAOTTrainer": type("PinnedUnpairedAOT", (Pin, T.UnpairedAOTTrainer), {})}
    return classes, Grads


def run_trainer(tiny, case, rows, batch, out_dir, *, flags=None, steps=1, dtype=torch.float64, lr=0.0):
    """Train ``steps`` SGD steps on ``rows`` in order, ``batch`` rows per device; this process's view.

    With ``lr=0`` the model stays put, so step k is the gradient on the k-th batch at the same weights.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer

    from aot_handbook.configs import AOTConfig, AOTUnpairedConfig

    name, kwargs, _, positives = TRAINER_CASES[case]
    classes, Grads = _trainer_classes()
    config_cls = AOTConfig if name == "AOTTrainer" else AOTUnpairedConfig
    args = config_cls(output_dir=str(out_dir), per_device_train_batch_size=batch, max_steps=steps,
                      learning_rate=lr, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
                      beta=1.0, bf16=False, use_cpu=True, report_to=[],
                      save_strategy="no", gradient_checkpointing=False, logging_steps=1, seed=0,
                      dataloader_num_workers=0, disable_tqdm=True, **kwargs)
    policy, ref = _models(tiny, dtype)
    grads = Grads(flags)
    trainer = classes[name](model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]), callbacks=[grads])
    trainer.train()
    return {"seen": trainer.seen, "grads": grads.steps,
            "logs": [h for h in trainer.state.log_history if "loss" in h]}


# ---------------------------------------------------------------- the worker (run by torchrun / accelerate)


def _worker_loss(out):
    import torch.distributed as dist

    from aot_handbook.trainers import gather_with_grad

    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for case in LOSS_CASES[world]:
        xu, xv, w0, u_sizes, v_sizes = _loss_data(world, case)
        us, vs = sum(u_sizes[:rank]), sum(v_sizes[:rank])
        xu, xv = xu[us: us + u_sizes[rank]], xv[vs: vs + v_sizes[rank]]
        for penalty in PENALTIES:
            for sort in SORTS if penalty == "logistic" else ("hard",):
                w = w0.clone().requires_grad_()  # the replicated parameter
                u, v = _uv(xu, xv, w)
                loss = _loss(gather_with_grad(u), gather_with_grad(v), penalty, sort)
                loss.backward()
                grad = w.grad.clone()
                dist.all_reduce(grad)  # what DDP does: the mean over ranks
                grad /= world
                # The classic bug, for contrast: own shard with grad, the others' shards detached.
                w_bad = w0.clone().requires_grad_()
                u, v = _uv(xu, xv, w_bad)
                ub, vb = gather_with_grad(u.detach()), gather_with_grad(v.detach())
                ub = torch.cat([ub[:us], u, ub[us + u.numel():]])
                vb = torch.cat([vb[:vs], v, vb[vs + v.numel():]])
                _loss(ub, vb, penalty, sort).backward()
                bad = w_bad.grad.clone()
                dist.all_reduce(bad)
                bad /= world
                results[(case, penalty, sort)] = {"loss": loss.item(), "grad": grad, "naive_grad": bad}
    torch.save(results, out / f"loss_rank{rank}.pt")


def _worker_trainers(out, tiny):
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for case in TRAINER_CASES:
        rows = _rows(tiny, case, world)  # step 0: global sort on (the default); step 1: the same rows, off
        results[case] = run_trainer(tiny, case, rows + rows, _per_rank(case), out / case, steps=2,
                                    flags=[None, False])
    torch.save(results, out / f"trainer_rank{rank}.pt")


def _worker_train3(out, tiny):
    import torch.distributed as dist

    rows = _read_jsonl(tiny["paired_train"])[:12]  # step k: rank r holds pairs 4k+2r, 4k+2r+1
    res = run_trainer(tiny, "aot_paired", rows, 2, out / "run3", steps=3, dtype=torch.float32, lr=0.5)
    if dist.get_rank() == 0:
        torch.save({"world": dist.get_world_size(), **res}, out / "train3.pt")


def _worker(argv):
    mode, out, tiny_json = argv
    out = Path(out)
    tiny = {k: Path(v) for k, v in json.loads(tiny_json).items()}
    if mode == "loss_and_trainers":
        import torch.distributed as dist

        dist.init_process_group("gloo")  # accelerate's PartialState reuses it
        _worker_loss(out)
        _worker_trainers(out, tiny)
    elif mode == "uneven_logs":  # the unmodified trainer, ranks holding different label counts
        import torch.distributed as dist

        dist.init_process_group("gloo")
        run_trainer(tiny, "unpaired_uneven", _rows(tiny, "unpaired_uneven", 2), UNPAIRED_PER_RANK, out / "run")
        (out / f"done{dist.get_rank()}").touch()
    elif mode == "train3":
        from accelerate import PartialState

        PartialState(cpu=True)  # as HF Trainer would; makes the process group
        _worker_train3(out, tiny)
    else:
        raise SystemExit(f"unknown mode {mode}")


# ---------------------------------------------------------------- the pytest side


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _launch(cmd, env, timeout=240):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


def _torchrun(world, mode, out, tiny, timeout=240):
    cmd = [PYTHON, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(HERE), mode, str(out), json.dumps({k: str(v) for k,
                                                                                   v in tiny.items()})]
    _launch(cmd, _env(), timeout)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def distributed(request, tiny, tmp_path_factory):
    """One torchrun launch per world size runs every loss-level and trainer-level case."""
    world = request.param
    out = tmp_path_factory.mktemp(f"gs_world{world}")
    _torchrun(world, "loss_and_trainers", out, tiny)
    loss = [torch.load(out / f"loss_rank{r}.pt", weights_only=False) for r in range(world)]
    trainers = [torch.load(out / f"trainer_rank{r}.pt", weights_only=False) for r in range(world)]
    return world, loss, trainers


def _close(a, b, rtol):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return bool(((a - b).abs() <= rtol * b.abs().max().clamp_min(1e-300) + 1e-300).all())


def _assert_close(a, b, rtol, what):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def test_loss_level_gradients_equal_one_process(distributed):
    """Per rank: aot_loss(gather(u), gather(v)), backward, mean over ranks == one process on the concatenation."""
    world, per_rank, _ = distributed
    checked = 0
    for case in LOSS_CASES[world]:
        xu, xv, w0, _, _ = _loss_data(world, case)
        for key in per_rank[0]:
            if key[0] != case:
                continue
            _, penalty, sort = key
            w = w0.clone().requires_grad_()
            ref = _loss(*_uv(xu, xv, w), penalty, sort)
            ref.backward()
            assert w.grad.abs().max() > 1e-3, f"{key}: degenerate case, zero gradient"
            for rank in range(world):
                got = per_rank[rank][key]
                _assert_close(got["loss"], ref.item(), RTOL64, f"{key} loss on rank {rank}")
                _assert_close(got["grad"], w.grad, RTOL64, f"{key} DDP-mean gradient on rank {rank}")
                # The test can tell: dropping the other ranks' gradients (or rescaling) is caught.
                assert not _close(got["naive_grad"], w.grad, 1e-3), f"{key}: naive gather not caught"
            checked += 1
    assert checked == len(LOSS_CASES[world]) * (len(PENALTIES) + len(SORTS) - 1)


_REFERENCES: dict = {}


def _global_reference(tiny, tmp_path_factory, case, world):
    """One process, one step, the ``world`` per-rank batches concatenated into one batch."""
    if (case, world) not in _REFERENCES:
        rows = _rows(tiny, case, world)
        _REFERENCES[case, world] = run_trainer(tiny, case, rows, len(rows), tmp_path_factory.mktemp("ref"))
    return _REFERENCES[case, world]


def _slice_references(tiny, tmp_path_factory, case, world):
    """One process, each rank's batch alone (step r = rank r's slice; lr=0, so the same weights)."""
    if (case, "slices") not in _REFERENCES:
        _REFERENCES[case, "slices"] = run_trainer(tiny, case, _rows(tiny, case, 3), _per_rank(case),
                                                  tmp_path_factory.mktemp("ref"), steps=3)
    res = _REFERENCES[case, "slices"]
    return [{"loss": res["seen"][r]["loss"], "grads": res["grads"][r], "logs": res["logs"][r]} for r in range(world)]


def _check_grads(got, ref, what, rtol=RTOL_TRAINER):
    assert set(got) == set(ref)
    scale = max(float(g.abs().max()) for g in ref.values())
    assert scale > 0
    for name in ref:
        err = float((got[name].double() - ref[name].double()).abs().max()) / scale
        assert err <= rtol, f"{what}: gradient of {name} off by {err:.3g} (relative to the largest gradient)"


@pytest.mark.parametrize("case", list(TRAINER_CASES))
def test_trainer_global_sort_equals_one_process(distributed, tiny, tmp_path_factory, case):
    """The issue's test: R ranks with the global sort == one process on the R concatenated batches."""
    world, _, trainers = distributed
    b, positives = _per_rank(case), TRAINER_CASES[case][3]
    ref = _global_reference(tiny, tmp_path_factory, case, world)
    ref_loss = ref["seen"][0]["loss"]
    assert len(ref["seen"]) == 1 and ref["seen"][0]["rows"] == world * (2 * b if positives is None else b)
    for rank in range(world):
        run = trainers[rank][case]
        seen = run["seen"][0]  # step 0: aot_global_sort=None, i.e. on with world size > 1
        assert len(run["seen"]) == 2 and seen["rows"] == (2 * b if positives is None else b)
        if positives is not None:  # the unpaired rows reached the ranks as planned: n != m on each
            assert sum(seen["labels"]) == positives[rank] != b - positives[rank]
        _assert_close(seen["loss"], ref_loss, RTOL_TRAINER, f"{case}: loss on rank {rank}")
        _check_grads(run["grads"][0], ref["grads"][0], f"{case} rank {rank}")
    # The logged diagnostics (and the gathered reward means) are those of the global batch.
    logs, ref_logs = trainers[0][case]["logs"][0], ref["logs"][0]
    for key in (*DIAG_KEYS, "loss", *(k for k in ref_logs if k.startswith(("rewards/", "logps/")))):
        assert logs[key] == pytest.approx(ref_logs[key], rel=RTOL_TRAINER, abs=1e-9), key
    # The comparison can tell global from per-rank sorting on these very batches.
    slices = _slice_references(tiny, tmp_path_factory, case, world)
    local_mean = sum(s["loss"] for s in slices) / world
    assert abs(local_mean - ref_loss) > 1e-3 * abs(ref_loss), "global and per-rank sorting coincide here"


@pytest.mark.parametrize("case", list(TRAINER_CASES))
def test_trainer_without_global_sort_sorts_per_rank(distributed, tiny, tmp_path_factory, case):
    """aot_global_sort=False: each rank's loss is its own slice's; DDP averages the per-slice gradients."""
    world, _, trainers = distributed
    slices = _slice_references(tiny, tmp_path_factory, case, world)
    mean_grads = {n: sum(s["grads"][n] for s in slices) / world for n in slices[0]["grads"]}
    for rank in range(world):
        run = trainers[rank][case]
        _assert_close(run["seen"][1]["loss"], slices[rank]["loss"], RTOL_TRAINER, f"{case}: rank {rank} loss")
        _check_grads(run["grads"][1], mean_grads, f"{case} rank {rank} (per-rank sort)")
    # Logged diagnostics: the mean of the per-rank values (gathered for the logs).
    logs = trainers[0][case]["logs"][1]
    for key in DIAG_KEYS[1:]:
        want = sum(s["logs"][key] for s in slices) / world
        assert logs[key] == pytest.approx(want, rel=RTOL_TRAINER, abs=1e-9), key
    # ...and they differ from the global-sort step on the same rows and weights: the flag switches.
    on, off = trainers[0][case]["grads"]
    assert not all(torch.allclose(on[n], off[n], rtol=1e-4, atol=1e-9) for n in on)


def test_unpaired_uneven_ranks_log_rewards(tiny, tmp_path):
    """UnpairedAOTTrainer, 2 ranks holding 1 and 3 positives (the global sort makes that legal) must train."""
    _torchrun(2, "uneven_logs", tmp_path, tiny, timeout=120)
    assert (tmp_path / "done0").exists() and (tmp_path / "done1").exists()


def test_accelerate_launch_logs_global_diagnostics(tiny, tmp_path):
    """accelerate launch --multi_gpu on CPU, 2 processes, 3 steps: the logs are those of the global batches."""
    out = tmp_path / "acc"
    out.mkdir()
    env = dict(_env(), ACCELERATE_USE_CPU="true")
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           str(HERE), "train3", str(out), json.dumps({k: str(v) for k, v in tiny.items()})]
    _launch(cmd, env)
    got = torch.load(out / "train3.pt", weights_only=False)
    assert got["world"] == 2
    rows = _read_jsonl(tiny["paired_train"])[:12]  # one process: step k sorts pairs 4k..4k+3, the same global batch
    ref = run_trainer(tiny, "aot_paired", rows, 4, tmp_path / "ref", steps=3, dtype=torch.float32, lr=0.5)
    assert len(got["logs"]) == len(ref["logs"]) == 3
    for step, (a, b) in enumerate(zip(got["logs"], ref["logs"])):
        for key in (*DIAG_KEYS, "loss"):
            assert key in a, f"step {step}: {key} not logged"
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), f"step {step}: {key}"
    assert got["logs"][0]["loss"] != got["logs"][-1]["loss"]  # the model moved between steps


if __name__ == "__main__":
    _worker(sys.argv[1:])
