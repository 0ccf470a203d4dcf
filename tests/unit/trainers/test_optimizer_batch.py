"""AOT sorts the optimizer batch under gradient accumulation (trainers/optimizer_batch.py, docs/MATH.md sec. 7).

One optimizer step of 64 samples, split as ranks x per-device x accumulation in {1x64x1, 1x8x8, 2x4x8, 2x32x1}
(2 real processes, gloo, CPU), with LoRA (float32) and ``aot_sort_scope: optimizer_batch``:

- dropout off: loss, logged diagnostics and every LoRA gradient equal the single 64-sample batch's (the
  1x64x1 run, one forward) within 1e-6 relative, for every penalty (hard sort), both soft sorts, label
  smoothing and the NLL term; paired rows in one row per pair and TRL's two rows (aot_paired and aot_unpaired
  loss), truly unpaired rows with n != m (micro-batches holding one label only included); and 10 plain-SGD
  steps end on the same weights within 1e-5;
- LoRA dropout 0.1 on: the dropout masks depend on how the batch is split, so the reference of each split
  is the single-batch loss with the masks that split drew: a plain loop that replays each micro-batch's
  recorded RNG state with gradients on, holds the graph of all 64 samples and back-propagates the loss once
  (``_full_graph_reference``); gradients within 1e-6, weights after 10 SGD steps within 1e-5;
- the same comparisons fail with ``aot_sort_scope: micro_batch`` (each micro-batch sorted alone), and
  with the replay of the RNG state switched off (dropout on).

This file is also the worker script: ``torchrun ... tests/unit/trainers/test_optimizer_batch.py <out> <tiny>``.
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

HERE = Path(__file__).resolve()
PYTHON = sys.executable
ROWS = 64  # the optimizer batch
LAYOUTS = {"1x64x1": (1, 64, 1), "1x8x8": (1, 8, 8), "2x4x8": (2, 4, 8), "2x32x1": (2, 32, 1)}
# One loss configuration per step of a sweep at lr = 0 (the weights stay put): every penalty with the hard
# sort, both soft sorts with the logistic one, then smoothing and the NLL term.
LOSSES = [{"aot_penalty": p, "aot_sort": "hard"} for p in ("logistic", "hinge", "squared_hinge", "least_squares")]
LOSSES += [{"aot_penalty": "logistic", "aot_sort": s} for s in ("soft", "soft_pav")]
LOSSES += [{"aot_penalty": "logistic", "aot_sort": "hard", "aot_nll_weight": 0.5, "label_smoothing": 0.1}]
# Data cases: (trainer, config kwargs, (the loss variant swept over LOSSES, the other variant's one step)).
CASES = {
    "paired_one_row": ("AOTTrainer", {"aot_share_prompt": True}, ("aot_paired", "aot_unpaired")),
    "paired_two_rows": ("AOTTrainer", {"aot_share_prompt": False}, ("aot_unpaired", "aot_paired")),
    "unpaired": ("UnpairedAOTTrainer", {}, (None, None)),
}
SGD_STEPS, SGD_LR = 10, 0.5
SGD_LOSS = {"aot_penalty": "logistic", "aot_sort": "soft", "aot_nll_weight": 0.5}
UNPAIRED_POSITIVES = 24  # of 64: n != m; micro-batches of 4 then hold 0..4 positives
RTOL_GRAD, RTOL_WEIGHTS = 1e-6, 1e-5
DTYPE = torch.float64 if os.environ.get("F64") else torch.float32


def sweep(case):
    """The loss configuration of each step of a case's sweep."""
    swept, other = CASES[case][2]
    out = [_complete(case, {**loss, **({"loss_type": [swept]} if swept else {})}) for loss in LOSSES]
    return out + ([_complete(case, {**LOSSES[0], "loss_type": [other]})] if other else [])


def _complete(case, config):
    """Every key a step sets (the previous step's values must not leak into the next)."""
    defaults = {"aot_nll_weight": 0.0, "aot_sort_regularization": None, "aot_sort_iterations": None}
    if CASES[case][0] == "AOTTrainer":
        defaults["label_smoothing"] = 0.0  # a DPOConfig key
    else:
        config = {k: v for k, v in config.items() if k != "label_smoothing"}
    return {**defaults, **config}


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rows(tiny, case, n_batches):
    """``n_batches`` optimizer batches of 64 distinct rows (distinct prompts: no tied log-probs)."""
    if case == "unpaired":
        data = _read_jsonl(tiny["unpaired_train"])
    else:
        data = _read_jsonl(tiny["paired_train"])
    seen, unique = set(), []
    for r in random.Random(3).sample(data, len(data)):
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            unique.append(r)
    if case != "unpaired":
        return unique[: n_batches * ROWS]
    pos = [r for r in unique if r["label"]]
    neg = [r for r in unique if not r["label"]]
    out, rng = [], random.Random(5)
    for _ in range(n_batches):
        batch = [pos.pop() for _ in range(UNPAIRED_POSITIVES)] + [neg.pop() for _ in range(ROWS - UNPAIRED_POSITIVES)]
        rng.shuffle(batch)
        out += batch
    return out


def _trainer_class(name):
    """The package's trainer with (only) the data order pinned and each first-pass forward recorded."""
    from torch.utils.data import SequentialSampler

    from aot_handbook import trainers as T

    class Pinned(getattr(T, name)):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def _micro_batch(self, model, inputs, consts=None):
            if consts is None and self.model.training and self.__dict__.get("record") is not None:
                self.record.append({"step": self.state.global_step, "rng": torch.get_rng_state(),
                                    "inputs": {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}})
            return super()._micro_batch(model, inputs, consts)

    return Pinned


class _Steps:
    """A callback: the loss configuration of each step, and the gradients the optimizer is about to use."""

    def __new__(cls, configs):
        from transformers import TrainerCallback

        class Steps(TrainerCallback):
            def __init__(self):
                self.configs, self.grads = configs, []

            def on_step_begin(self, args, state, control, **kwargs):
                for key, value in self.configs[min(state.global_step, len(self.configs) - 1)].items():
                    setattr(args, key, value)

            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()
                                   if p.requires_grad})

        return Steps()


def build(tiny, case, out_dir, *, per_device, accumulation, configs, steps, lr, dropout, scope="optimizer_batch",
          data=None, record=False, trainer_class=None, **extra):
    """A trainer on ``case``'s rows with LoRA (B initialised to fixed noise, so policy != reference)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from aot_handbook.configs import AOTConfig, AOTUnpairedConfig

    name, kwargs, _ = CASES[case]
    config_cls = AOTConfig if name == "AOTTrainer" else AOTUnpairedConfig
    settings = dict(output_dir=str(out_dir), per_device_train_batch_size=per_device,
                    gradient_accumulation_steps=accumulation, max_steps=steps, learning_rate=lr, optim="sgd",
                    lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, beta=1.0, bf16=False,
                    use_cpu=True, report_to=[], save_strategy="no", gradient_checkpointing=False, logging_steps=1,
                    seed=0, dataloader_num_workers=0, disable_tqdm=True, aot_sort_scope=scope, disable_dropout=False)
    args = config_cls(**{**settings, **kwargs, **{k: v for k, v in configs[0].items() if k != "label_smoothing"},
                         **extra})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny["base_model"], dtype=DTYPE)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj", "up_proj"],
                      task_type="CAUSAL_LM")
    steps_cb = _Steps(configs)
    cls = trainer_class or _trainer_class(name)
    trainer = cls(model=model, args=args, train_dataset=Dataset.from_list(data),
                  processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]), peft_config=lora,
                  callbacks=[steps_cb])
    trainer.remove_callback(PrinterCallback)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in sorted(trainer.model.named_parameters()):
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    trainer.record = [] if record else None
    return trainer, steps_cb


def lora_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def run(tiny, case, layout, out_dir, *, mode, dropout, scope="optimizer_batch", replay=True, batch=None, **extra):
    """One run of ``layout`` (this process's view): ``mode`` "sweep" (lr 0, one loss configuration per step,
    the same 64 rows each step: ``batch``, or 64 of the tiny task's) or "sgd" (SGD_STEPS plain-SGD steps on
    distinct batches)."""
    ranks, per_device, accumulation = LAYOUTS[layout]
    if mode == "sweep":
        configs = sweep(case)
        data = (batch or rows(tiny, case, 1)) * len(configs)
        steps, lr = len(configs), 0.0
    else:
        configs, data, steps, lr = [_complete(case, SGD_LOSS)], rows(tiny, case, SGD_STEPS), SGD_STEPS, SGD_LR
    trainer, cb = build(tiny, case, out_dir, per_device=per_device, accumulation=accumulation, configs=configs,
                        steps=steps, lr=lr, dropout=dropout, scope=scope, data=data, record=dropout > 0, **extra)
    from aot_handbook.trainers import optimizer_batch

    restore = optimizer_batch._set_rng_state
    if not replay:  # the fault shown by test_without_rng_replay_dropout_breaks_exactness
        optimizer_batch._set_rng_state = lambda state, device: None
    try:
        trainer.train()
    finally:
        optimizer_batch._set_rng_state = restore
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"grads": cb.grads, "logs": logs, "weights": lora_weights(trainer), "record": trainer.record,
            "configs": configs, "lr": lr}


# ---------------------------------------------------------------- the hooks, resume, a quick check


def test_trainer_contract():
    """The transformers internals OptimizerBatchStep relies on. If this fails, the Trainer loop moved:
    re-check trainers/optimizer_batch.py, then re-pin."""
    import inspect

    import transformers
    from transformers import Trainer
    from trl import DPOTrainer, KTOTrainer

    assert transformers.__version__.startswith("5.23."), f"written against transformers 5.23, found " \
                                                         f"{transformers.__version__}"
    loop = inspect.getsource(Trainer._run_epoch)
    # one window of micro-batches per optimizer step, collected first, then handed to training_step as they are
    window = loop.index("batch_samples, num_items_in_batch = self.get_batch_samples(epoch_iterator, num_batches")
    each = loop.index("for i, inputs in enumerate(batch_samples):")
    step = loop.index("tr_loss_step = self.training_step(model, inputs, num_items_in_batch)")
    # a resumed run's RNG state is restored between the two, so pass 1 (at the first training_step) draws from it
    restore = loop.index("if rng_to_sync:\n                self._load_rng_state(resume_from_checkpoint)")
    assert window < restore < each < step
    assert list(inspect.signature(Trainer.get_batch_samples).parameters) == ["self", "epoch_iterator", "num_batches",
                                                                             "device"]
    body = inspect.getsource(Trainer.training_step)
    assert "if self.loss_is_scaled_for_ga is not None:" in body and "loss = loss / self.current_gradient" in body
    assert "self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)" in body
    for cls in (DPOTrainer, KTOTrainer):  # TRL's training_step only wraps the Trainer's
        assert "super().training_step(*args, **kwargs)" in inspect.getsource(cls.training_step)
        assert "self._compute_loss(" in inspect.getsource(cls.compute_loss)


def test_quick_split_equals_single_batch(tiny, tmp_path, monkeypatch):
    """The fast loop's check: 1x8x8 vs the single 64-pair batch, one row per pair, two loss configurations."""
    monkeypatch.setattr(sys.modules[__name__], "LOSSES", [LOSSES[0], LOSSES[-1]])
    monkeypatch.setitem(CASES, "paired_one_row", (*CASES["paired_one_row"][:2], ("aot_paired", None)))
    runs = {layout: run(tiny, "paired_one_row", layout, tmp_path / layout, mode="sweep", dropout=0.0)
            for layout in ("1x64x1", "1x8x8")}
    for g, r in zip(runs["1x8x8"]["grads"], runs["1x64x1"]["grads"]):
        assert rel_err(g, r) <= RTOL_GRAD
    for a, b in zip(runs["1x8x8"]["logs"], runs["1x64x1"]["logs"]):
        for key in ("loss", "aot/loss", "aot/fsd_violation_share", "nll", "rewards/margins"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_precomputed_reference_log_probs(tiny, tmp_path, monkeypatch):
    """Reference log-probs precomputed by TRL (read from the batch in pass 1, reused in pass 3): unpaired rows,
    n != m, 1x8x8 against the single batch."""
    monkeypatch.setattr(sys.modules[__name__], "LOSSES", [LOSSES[-1]])
    runs = {layout: run(tiny, "unpaired", layout, tmp_path / layout, mode="sweep", dropout=0.0,
                        precompute_ref_log_probs=True) for layout in ("1x64x1", "1x8x8")}
    (g,), (r,) = runs["1x8x8"]["grads"], runs["1x64x1"]["grads"]
    assert rel_err(g, r) <= RTOL_GRAD
    assert runs["1x8x8"]["logs"][0]["loss"] == pytest.approx(runs["1x64x1"]["logs"][0]["loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["paired_one_row", "unpaired"])
def test_padding_free_split_equals_single_padded_batch(tiny, tmp_path, monkeypatch, case):
    """Issues 25 and 26 together: every micro-batch of the two-pass step runs in padding-free rows (several pairs,
    or answers, per row; pass 1 and pass 3 alike), and the step equals the single 64-sample batch in padded rows
    (aot_padding_free false: one pair per row, or TRL's rows): its gradient, loss and logged numbers.

    The bound is float32 rounding between forwards of other shapes (LAYOUT_RTOL; the 64 padded rows against
    8 micro-batches of a few packed rows each): measured 1.1e-6 (paired) and 1.1e-6 (unpaired). Sorting each
    micro-batch alone (micro_batch scope, the same padding-free rows) is the control: far outside it."""
    from tests.helpers import uneven_pairs, unpaired_rows  # (not at the top: this file is torchrun's script too)

    monkeypatch.setattr(sys.modules[__name__], "LOSSES", [LOSSES[-1]])  # the NLL term reads the packed tokens
    if case == "paired_one_row":
        monkeypatch.setitem(CASES, case, (*CASES[case][:2], ("aot_paired", None)))
    # uneven lengths (the tiny task's rows are all about one length: nothing to pack), distinct prompts
    batch = uneven_pairs(ROWS) if case == "paired_one_row" else unpaired_rows(uneven_pairs(ROWS // 2))
    runs = {name: run(tiny, case, layout, tmp_path / name, mode="sweep", dropout=0.0, batch=batch, **flags)
            for name, layout, flags in (("padded", "1x64x1", {"aot_padding_free": False}), ("split", "1x8x8", {}),
                                        ("alone", "1x8x8", {"scope": "micro_batch"}))}
    logs = {name: r["logs"][0] for name, r in runs.items()}
    per_row = "layout/pairs_per_row" if case == "paired_one_row" else "layout/sequences_per_row"
    assert logs["padded"][per_row] == 1 and logs["split"][per_row] > 1  # the layouts are what they say
    assert logs["split"]["layout/padding"] < logs["padded"]["layout/padding"]
    (padded,), (split,), (alone,) = (runs[name]["grads"] for name in ("padded", "split", "alone"))
    assert rel_err(split, padded) <= LAYOUT_RTOL, f"gradient off by {rel_err(split, padded):.3g}"
    assert rel_err(alone, padded) > 1e-3  # the control: each micro-batch sorted alone is another gradient
    for key in ("loss", "aot/loss", "aot/fsd_violation_share", "nll", "rewards/margins"):
        if key in logs["padded"]:
            assert logs["split"][key] == pytest.approx(logs["padded"][key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted(tiny, tmp_path):
    """Checkpoints fall on optimizer steps; a run resumed from one (accumulation 4, LoRA dropout on, the
    balanced sampler over each step) ends where the uninterrupted run ends, losses and weights."""
    from aot_handbook.trainers import UnpairedAOTTrainer

    data = _read_jsonl(tiny["unpaired_train"])[:96]
    kwargs = dict(per_device=4, accumulation=4, configs=[_complete("unpaired", SGD_LOSS)], steps=4, lr=0.5,
                  dropout=0.1, data=data, trainer_class=UnpairedAOTTrainer, save_strategy="steps", save_steps=2)
    straight, _ = build(tiny, "unpaired", tmp_path / "straight", **kwargs)
    straight.train()
    assert (tmp_path / "straight" / "checkpoint-2").is_dir()
    resumed, _ = build(tiny, "unpaired", tmp_path / "resumed", **kwargs)
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-2"))

    def losses(trainer):
        return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}

    assert resumed.state.global_step == 4 and set(losses(resumed)) == {1, 2, 3, 4}  # 1, 2: the checkpoint's history
    for step in (3, 4):
        assert losses(resumed)[step] == pytest.approx(losses(straight)[step], rel=1e-6)
    assert rel_err(lora_weights(resumed), lora_weights(straight)) <= 1e-6
    start, _ = build(tiny, "unpaired", tmp_path / "start", **kwargs)
    assert rel_err(lora_weights(straight), lora_weights(start)) > 1e-3  # the steps moved the weights


# ---------------------------------------------------------------- the reference with dropout: one graph


def full_graph_reference(tiny, case, result_by_rank, out_dir):
    """The single-batch loss of each step, with the dropout masks the split drew: every micro-batch's
    forward replayed from its recorded RNG state with gradients on (in the data's order, as the batch was dealt),
    all held in one graph; the AOT loss of the 64 samples plus the NLL term's mean over their tokens;
    one backward; a plain SGD update. Returns each step's gradients and the final weights."""
    first = result_by_rank[0]
    configs, lr = first["configs"], first["lr"]
    steps = max(r["step"] for r in first["record"]) + 1
    trainer, _ = build(tiny, case, out_dir, per_device=8, accumulation=1, configs=configs, steps=steps, lr=lr,
                       dropout=0.1, data=rows(tiny, case, 1))
    model = trainer.model
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = []
    for step in range(steps):
        for key, value in configs[min(step, len(configs) - 1)].items():
            setattr(trainer.args, key, value)
        micro = []
        per_rank = [[r for r in result["record"] if r["step"] == step] for result in result_by_rank]
        for j in range(len(per_rank[0])):  # data order: micro-batch j of rank 0, of rank 1, then j + 1
            for records in per_rank:
                torch.set_rng_state(records[j]["rng"])
                micro.append(trainer._micro_batch(model, dict(records[j]["inputs"])))
        cat = {k: torch.cat([mb.params[k] for mb in micro]) for k in micro[0].params}
        consts = {k: torch.cat([mb.consts[k] for mb in micro]) for k in micro[0].consts}
        loss = trainer._batch_loss(cat, consts, "train")
        weight = trainer.args.aot_nll_weight
        if weight:
            tokens = sum(int(mb.nll_mask.bool().sum()) for mb in micro)
            loss = loss + weight * sum(mb.nll_sum() for mb in micro) / tokens
        model.zero_grad()
        loss.backward()
        grads.append({n: p.grad.detach().clone() for n, p in params.items()})
        with torch.no_grad():
            for p in params.values():
                p.add_(p.grad, alpha=-lr)  # torch.optim.SGD's update, to the bit
    return {"grads": grads, "weights": lora_weights(trainer)}


# ---------------------------------------------------------------- the worker (torchrun, 2 processes)


def _worker(argv):
    import torch.distributed as dist

    out, tiny_json = Path(argv[0]), argv[1]
    tiny = {k: Path(v) for k, v in json.loads(tiny_json).items()}
    dist.init_process_group("gloo")  # accelerate's PartialState reuses it
    rank = dist.get_rank()
    results = {}
    for case in CASES:
        for layout in ("2x4x8", "2x32x1"):
            for dropout in (0.0, 0.1):
                for mode in ("sweep", "sgd"):
                    results[case, layout, dropout, mode] = run(tiny, case, layout, out / "runs", mode=mode,
                                                               dropout=dropout)
        results[case, "2x4x8", "micro_batch"] = run(tiny, case, "2x4x8", out / "runs", mode="sweep", dropout=0.0,
                                                    scope="micro_batch")
    torch.save(results, out / f"rank{rank}.pt")


# ---------------------------------------------------------------- the pytest side


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out, tiny, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ACCELERATE_USE_CPU", None)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(HERE), str(out), json.dumps({k: str(v) for k, v in tiny.items()})]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


def rel_err(got: dict, ref: dict) -> float:
    """The relative error of a set of tensors (all of them as one vector): ||got - ref|| / ||ref||."""
    assert set(got) == set(ref)
    norm = sum(float(ref[n].double().square().sum()) for n in ref) ** 0.5
    assert norm > 0
    return sum(float((got[n].double() - ref[n].double()).square().sum()) for n in ref) ** 0.5 / norm


# ---------------------------------------------------------------- single-process runs, shared by the tests

_CACHE: dict = {}


def single(tiny, tmp_path_factory, case, layout, *, mode, dropout=0.0, scope="optimizer_batch", replay=True):
    key = (case, layout, mode, dropout, scope, replay)
    if key not in _CACHE:
        _CACHE[key] = run(tiny, case, layout, tmp_path_factory.mktemp("run"), mode=mode, dropout=dropout,
                          scope=scope, replay=replay)
    return _CACHE[key]


def reference(tiny, tmp_path_factory, case, results):
    key = ("full_graph", id(results[0]))
    if key not in _CACHE:
        _CACHE[key] = full_graph_reference(tiny, case, results, tmp_path_factory.mktemp("ref"))
    return _CACHE[key]


@pytest.fixture(scope="module")
def two_processes(tiny, tmp_path_factory):
    """One torchrun launch (2 processes) runs every 2-rank layout of every case; rank r's results."""
    out = tmp_path_factory.mktemp("optimizer_batch")
    _torchrun(out, tiny)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _layout_results(layout, two_processes, tiny, tmp_path_factory, case, mode, dropout, scope="optimizer_batch"):
    """Every rank's view of one run of ``layout``."""
    if LAYOUTS[layout][0] == 1:
        return [single(tiny, tmp_path_factory, case, layout, mode=mode, dropout=dropout, scope=scope)]
    key = (case, layout, dropout, mode) if scope == "optimizer_batch" else (case, layout, scope)
    return [rank[key] for rank in two_processes]


# Float32 rounding of the single batch's own forward and backward: a layout whose forward runs twice the rows
# (TRL's two rows per pair) sums twice the terms in each matmul, and its 64-row batch differs from any split
# into smaller forwards by up to 2e-6 (the 2x32x1 split, one forward per rank with no second pass, differs as
# much; in float64 every split agrees to 1e-14, test_float64_split_is_exact_to_rounding). The splits' own
# error, against the single batch computed with their micro-batch shapes, is < 2e-7 (the dropout tests).
LITERAL_RTOL = {"paired_two_rows": 3e-6}
# The same rounding between the padded single batch and the padding-free micro-batches: their rows hold other
# segments, so every matmul has other shapes (test_padding_free_split_equals_single_padded_batch).
LAYOUT_RTOL = 3e-6


def _steps(case, mode):
    return len(sweep(case)) if mode == "sweep" else SGD_STEPS


def _two(request):
    """The 2-process results, only for the 2-rank layouts (the others need no launch)."""
    layout = request.getfixturevalue("layout")
    return request.getfixturevalue("two_processes") if LAYOUTS[layout][0] > 1 else None


SPLITS = ("1x8x8", "2x4x8", "2x32x1")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", SPLITS)
def test_split_equals_single_batch(request, tiny, tmp_path_factory, case, layout):
    """Dropout off: each step's loss, logged diagnostics and LoRA gradient are the single 64-sample batch's, for
    every loss configuration; 10 SGD steps end on its weights."""
    rtol = LITERAL_RTOL.get(case, RTOL_GRAD)
    ref = single(tiny, tmp_path_factory, case, "1x64x1", mode="sweep")
    results = _layout_results(layout, _two(request), tiny, tmp_path_factory, case, "sweep", 0.0)
    for rank, got in enumerate(results):
        assert len(got["grads"]) == len(ref["grads"]) == _steps(case, "sweep")
        for step, (g, r) in enumerate(zip(got["grads"], ref["grads"])):
            what = f"{case} {layout} rank {rank} step {step} ({ref['configs'][step]})"
            assert rel_err(g, r) <= rtol, f"{what}: gradient off by {rel_err(g, r):.3g}"
    logs, ref_logs = results[0]["logs"], ref["logs"]
    for step, (a, b) in enumerate(zip(logs, ref_logs)):  # the logs describe the optimizer batch
        keys = [k for k in b if k.startswith(("aot/", "rewards/", "logps/", "nll")) or k == "loss"]
        assert set(keys) <= set(a), f"step {step}: {set(keys) - set(a)} not logged"
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), f"{case} {layout} step {step}: {key}"
    ref_sgd = single(tiny, tmp_path_factory, case, "1x64x1", mode="sgd")
    start = single(tiny, tmp_path_factory, case, "1x64x1", mode="sweep")["weights"]  # lr 0: the initial weights
    assert rel_err(ref_sgd["weights"], start) > 1e-2, "10 SGD steps hardly moved the weights"
    for rank, got in enumerate(_layout_results(layout, _two(request), tiny, tmp_path_factory, case, "sgd", 0.0)):
        err = rel_err(got["weights"], ref_sgd["weights"])
        assert err <= RTOL_WEIGHTS, f"{case} {layout} rank {rank}: weights after 10 SGD steps off by {err:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", SPLITS)
def test_split_with_dropout_equals_one_graph(request, tiny, tmp_path_factory, case, layout):
    """LoRA dropout 0.1: each step's gradient, and the weights after 10 SGD steps, are those of the single-batch
    loss under the same dropout masks (every micro-batch replayed from its RNG state, one graph, one backward)."""
    for mode in ("sweep", "sgd"):
        results = _layout_results(layout, _two(request), tiny, tmp_path_factory, case, mode, 0.1)
        ref = reference(tiny, tmp_path_factory, case, results)
        for rank, got in enumerate(results):
            assert len(got["grads"]) == len(ref["grads"]) == _steps(case, mode)
            for step, (g, r) in enumerate(zip(got["grads"], ref["grads"])):
                err, what = rel_err(g, r), f"{case} {layout} {mode} rank {rank} step {step}"
                if mode == "sweep" or step == 0:  # (later SGD steps start from weights equal to rounding)
                    assert err <= RTOL_GRAD, f"{what}: gradient off by {err:.3g}"
            if mode == "sgd":
                err = rel_err(got["weights"], ref["weights"])
                assert err <= RTOL_WEIGHTS, f"{case} {layout} rank {rank}: weights after 10 steps off by {err:.3g}"
        if mode == "sweep":  # the masks mattered: without dropout the gradient is another
            plain = _layout_results(layout, _two(request), tiny, tmp_path_factory, case, "sweep", 0.0)[0]
            assert rel_err(results[0]["grads"][0], plain["grads"][0]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", ["1x8x8", "2x4x8"])
def test_micro_batch_scope_is_not_the_optimizer_batch(request, tiny, tmp_path_factory, case, layout):
    """The same comparison fails with aot_sort_scope: micro_batch (each micro-batch sorted alone): the gradient
    is off for every loss configuration, except the hinge penalty, whose loss here is linear in every gap
    (beta * gap < 1 for all samples) and so does not depend on the coupling at all."""
    ref = single(tiny, tmp_path_factory, case, "1x64x1", mode="sweep")
    got = _layout_results(layout, _two(request), tiny, tmp_path_factory, case, "sweep", 0.0, scope="micro_batch")[0]
    for step, (g, r) in enumerate(zip(got["grads"], ref["grads"])):
        if ref["configs"][step]["aot_penalty"] == "hinge":
            continue
        assert rel_err(g, r) > 1e-2, f"{case} {layout} step {step}: micro_batch scope matched the optimizer batch"
    assert got["logs"][0]["aot/loss"] != pytest.approx(ref["logs"][0]["aot/loss"], rel=1e-3)


@pytest.mark.slow
def test_without_rng_replay_dropout_breaks_exactness(tiny, tmp_path_factory, caplog):
    """With LoRA dropout on, the second pass must replay each micro-batch's RNG state: without it (the
    replay switched off here) the gradient is not the one-graph reference's, and the trainer says so."""
    case = "paired_one_row"
    with caplog.at_level("WARNING", logger="aot_handbook.trainers"):
        results = [single(tiny, tmp_path_factory, case, "1x8x8", mode="sweep", dropout=0.1, replay=False)]
    ref = reference(tiny, tmp_path_factory, case, results)
    assert all(rel_err(g, r) > 1e-3 for g, r in zip(results[0]["grads"], ref["grads"]))
    assert "the second pass computed log-probs" in caplog.text


@pytest.mark.slow
def test_float64_split_is_exact_to_rounding(tiny, tmp_path_factory, monkeypatch):
    """In float64 the split's gradient is the single batch's to 1e-12 (TRL's two rows per pair, the layout
    whose float32 rounding LITERAL_RTOL allows for)."""
    monkeypatch.setattr(sys.modules[__name__], "DTYPE", torch.float64)
    monkeypatch.setitem(CASES, "paired_two_rows", (*CASES["paired_two_rows"][:2], ("aot_unpaired", None)))
    monkeypatch.setattr(sys.modules[__name__], "LOSSES", [LOSSES[0], LOSSES[4], LOSSES[-1]])
    results = {layout: run(tiny, "paired_two_rows", layout, tmp_path_factory.mktemp("f64"), mode="sweep",
                           dropout=0.0) for layout in ("1x64x1", "1x8x8")}
    for g, r in zip(results["1x8x8"]["grads"], results["1x64x1"]["grads"]):
        assert rel_err(g, r) <= 1e-12


if __name__ == "__main__":
    _worker(sys.argv[1:])
