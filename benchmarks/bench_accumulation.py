"""``make bench ARGS="--only accumulation"``: what sorting the whole optimizer batch costs (issue 25).

``aot_sort_scope: optimizer_batch`` sorts every micro-batch of an accumulation window together, in two passes
(src/aot_handbook/trainers/optimizer_batch.py): one extra forward without gradients per sample, and the memory
of one micro-batch. On the realistic shapes of ``bench.py`` (``realistic_assets``: a 4-layer Llama with a 32k
vocabulary, UltraFeedback-like log-normal lengths, one row per pair, a separate reference model, float32):

- memory: the peak RSS of ``train()``, each variant in a fresh process: one optimizer step sorting 512 pairs at
  micro-batch 8 (``8 x 64``, optimizer_batch), the same step with ``micro_batch`` scope, steps of 8 pairs
  (``8 x 1``) over the same 64 micro-batches (a step's peak is that of its longest micro-batch, so the
  baseline must see the same ones), and for scale one batch of 64 pairs (``64 x 1``). Every process tokenizes
  the same 512 pairs first; the high-water mark is reset (``/proc/self/clear_refs``) when training starts, so
  the peak is that of the steps, not of start-up (where the kernel refuses the reset: the process's
  ``ru_maxrss``);
- time: per sample, optimizer_batch against micro_batch scope on the same window of micro-batches, the two
  trainers in one process, their optimizer steps (the Trainer's ``get_batch_samples`` + ``training_step`` of
  every micro-batch, no optimizer update) interleaved A, B, B, A, ... after a warm-up step.

    python benchmarks/bench.py --only accumulation [--quick]
"""

from __future__ import annotations

import copy
import resource
import tempfile
import time

import torch
from bench import REALISTIC_LENGTHS, REALISTIC_MODEL, _child, fmt, realistic_assets, spread, summary, table, work_dir

MICRO = 8


def _trainer(pairs: int, micro: int, accumulation: int, scope: str, steps: int, seed: int = 0):
    from aot_handbook.configs import AOTConfig
    from aot_handbook.trainers import AOTTrainer

    tokenizer, data, model = realistic_assets(pairs, seed)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    args = AOTConfig(output_dir=tempfile.mkdtemp(prefix="bench_", dir=work_dir()), loss_type="aot_paired",
                     per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation, max_steps=steps,
                     aot_sort_scope=scope, learning_rate=1e-4, lr_scheduler_type="constant", beta=0.1,
                     max_length=REALISTIC_LENGTHS["max_length"], seed=seed, data_seed=seed, bf16=False, use_cpu=True,
                     gradient_checkpointing=False, report_to="none", save_strategy="no", eval_strategy="no",
                     logging_steps=1, dataloader_num_workers=0, precompute_ref_log_probs=False, disable_tqdm=True)
    return AOTTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set size, to the current RSS
        return True
    except OSError:
        return False


def _vm(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(float(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))


def memory_child(pairs: int, micro: int, accumulation: int, scope: str, steps: int) -> dict:
    """One variant's peak RSS over ``steps`` optimizer steps of ``train()`` (runs in its own process)."""
    trainer = _trainer(pairs, micro, accumulation, scope, steps)
    reset = _reset_peak()
    start = _vm("VmRSS")
    trainer.train()
    peak = _vm("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"micro": micro, "accumulation": accumulation, "scope": scope, "steps": steps, "peak_mb": peak,
            "start_mb": start, "peak_reset": reset, "losses": losses}


def time_child(pairs: int, micro: int, repeats: int) -> dict:
    """Seconds per optimizer step of optimizer_batch and micro_batch scope on the same window, interleaved
    (after a warm-up step of each on the window's first two micro-batches)."""
    accumulation = pairs // micro
    trainers = {scope: _trainer(pairs, micro, accumulation, scope, 1) for scope in ("optimizer_batch", "micro_batch")}
    windows = {scope: list(iter(t.get_train_dataloader()))[:accumulation] for scope, t in trainers.items()}
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(*windows.values()))
    times = {scope: [] for scope in trainers}

    def step(scope, window):
        t = trainers[scope]
        t.model.train()
        t0 = time.perf_counter()
        window, _ = t.get_batch_samples(iter(window), len(window), t.args.device)
        t.current_gradient_accumulation_steps = len(window)  # set by train(); micro_batch scope divides by it
        for inputs in window:
            t.training_step(t.model, inputs)
        t.model.zero_grad(set_to_none=True)  # no optimizer update: every step at the same weights
        return time.perf_counter() - t0

    for scope in trainers:
        step(scope, windows[scope][:2])
    for i in range(repeats):
        for scope in (list(trainers) if i % 2 == 0 else list(trainers)[::-1]):
            times[scope].append(step(scope, windows[scope]))
    ratios = [a / b for a, b in zip(times["optimizer_batch"], times["micro_batch"])]
    return {"pairs": pairs, "micro": micro, "step_s": {s: summary(v) for s, v in times.items()},
            "per_sample_s": {s: summary([x / pairs for x in v]) for s, v in times.items()},
            "ratio": summary(ratios)}


def bench_accumulation(*, pairs=512, micro=MICRO, repeats=2, context=64) -> dict:
    """The memory rows (each a fresh process), then the interleaved timing (one process)."""
    window = pairs // micro
    variants = [(pairs, micro, window, "optimizer_batch", 1), (pairs, micro, window, "micro_batch", 1),
                (pairs, micro, 1, "optimizer_batch", window)]
    if context:
        variants.append((pairs, context, 1, "optimizer_batch", 1))
    memory = [_child(["_accum_memory", *map(str, v)], timeout=7200) for v in variants]
    base = memory[2]["peak_mb"]
    for row in memory:
        row["ratio"] = row["peak_mb"] / base
    timing = _child(["_accum_time", str(pairs), str(micro), str(repeats)], timeout=7200)
    return {"memory": memory, "time": timing, "config": {"pairs": pairs, "micro": micro, "repeats": repeats,
                                                         "model": REALISTIC_MODEL, "lengths": REALISTIC_LENGTHS,
                                                         "threads": torch.get_num_threads()}}


def accumulation_table(res: dict) -> str:
    names = {("optimizer_batch", True): "sorts {n}", ("micro_batch", True): "sorts {m} at a time (micro_batch)",
             ("optimizer_batch", False): "sorts {n}"}
    rows = []
    for r in res["memory"]:
        n = r["micro"] * r["accumulation"]
        what = names[r["scope"], r["accumulation"] > 1].format(n=n, m=r["micro"])
        rows.append([f"{r['micro']} x {r['accumulation']}", what, r["steps"], f"{r['peak_mb']:.0f}",
                     f"{r['ratio']:.3f}", f"{r['start_mb']:.0f}"])
    mem = table(["micro-batch x accumulation", "each optimizer step", "steps", "peak RSS MB (steps)",
                 "/ steps of one micro-batch", "RSS before train() MB"], rows)
    t = res["time"]
    timing = table(["scope", "s per optimizer step", "ms per sample"],
                   [[s, fmt(t["step_s"][s], 2), fmt(t["per_sample_s"][s], 2, 1000)] for s in t["step_s"]])
    reset = all(r["peak_reset"] for r in res["memory"])
    return (mem + f"\n\n(peak: {'VmHWM reset when train() starts' if reset else 'ru_maxrss of the whole process'}"
            f", a fresh process per row; the steps of {res['config']['micro']} see the same "
            f"{res['config']['pairs'] // res['config']['micro']} "
            "micro-batches)\n\n" + timing +
            f"\n\noptimizer_batch / micro_batch time per sample: {fmt(t['ratio'], 3)} (per step, interleaved, "
            f"{t['pairs']} pairs at micro-batch {t['micro']}; spread {spread(t['ratio']):.0%})")
