"""Benchmarks: AOTTrainer vs TRL's DPOTrainer AOT, the reference log-prob cache, the loss, generation.

Every comparison is interleaved (A, B, B, A, ...), warmed up, and reported as median and
spread (min-max) over repeats; the machine is shared, so read the spread before the median.
Each trainer measurement runs in a fresh subprocess so its peak RSS is its own.

    python benchmarks/bench.py [--quick] [--only trainer,realistic,cache,loss,generate,accumulation] [--json out.json]
        [--root REPOSITORY] [--work-dir DIR]

Repository tooling, not part of the installed package: it reads the repository's recipes (``recipes/tiny``)
and tiny assets (``<root>/.cache/tiny``, ``<root>/runs/tiny-sft``); ``--root`` defaults to the checkout this
file lives in, never the working directory. Scratch runs go to ``--work-dir`` (default: a fresh temporary
folder).

Sections:
- ``trainer``: samples/s and peak RSS of ``AOTTrainer`` (aot_paired / aot_unpaired) against TRL
  ``DPOTrainer(loss_type="aot" / "aot_unpaired")``: same model, data, batch, steps and seed; the
  step-1 losses must agree to 1e-6.
- ``realistic``: the same comparison on realistic shapes (``realistic_assets``: a Llama with a 32k vocabulary,
  UltraFeedback-like log-normal lengths, batch 4), every layout, tokens and logits per step; where a step's time
  goes per layout (policy forward, backward, reference forward), including the prompt through the KV cache
  (``prefix.py``); peak RSS and 10 ``train()`` steps' losses per side, with a float-rounding control.
- ``cache``: a tiny sweep (AOT paired, AOT unpaired, DPO, IPO x 2 seeds) through
  ``aot_handbook.plan.train`` with ``precompute_ref_log_probs: true``: TRL 1.16 as it is against
  the same sweep sharing one cache (``trainer.SharedRefCache``'s stable key) vs each run with its own;
  whether each run computed or reused the reference log-probs, and its step-1 loss.
- ``loss``: forward+backward time of ``aot_loss`` against n for the hard sort, the Sinkhorn soft
  sort (autograd memory O(n_iter * n^2): skipped above ~2 GB) and the PAV soft sort.
- ``generate``: greedy generation on the tiny model, left-padded batches against one prompt at a time.
- ``accumulation``: sorting the optimizer batch under gradient accumulation (``bench_accumulation.py``): peak
  RSS of a step sorting 512 pairs at micro-batch 8 against a step of 8, and time per sample against
  ``aot_sort_scope: micro_batch``, on the realistic shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# The repository root and the scratch folder; main() sets them from --root / --work-dir and hands them to its
# child processes through the environment (BENCH_ROOT, BENCH_WORK).
ROOT = Path(os.environ.get("BENCH_ROOT") or Path(__file__).resolve().parents[1])
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
SOFT_MEMORY_LIMIT = 2 * 1024**3  # bytes of autograd-saved tensors above which the Sinkhorn sort is not run


# ---------------------------------------------------------------- statistics and tables


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values)}


def spread(s: dict) -> float:
    """(max - min) / median: how far to trust the median on a shared machine."""
    return (s["max"] - s["min"]) / s["median"] if s["median"] else float("nan")


def fmt(s: dict, digits: int = 1, scale: float = 1.0) -> str:
    return f"{s['median'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}-{s['max'] * scale:.{digits}f}]"


def table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table (also readable as plain text)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    import transformers
    import trl

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def _child(args: list[str], env: dict | None = None, timeout: float = 1800) -> dict:
    """Run ``python benchmarks/bench.py <args>`` in a fresh process (cwd: the repository root, where the tiny
    recipes' relative paths point); return its last JSON line."""
    proc = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **OFFLINE_ENV, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"bench child {args} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH "):])


def set_threads(n: int) -> None:
    """Torch intra-op threads for this process and its children (``BENCH_THREADS``)."""
    os.environ["BENCH_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def set_roots(root: Path, work: str | None = None) -> None:
    """Point this process and its children at a repository root and a scratch folder."""
    global ROOT
    ROOT = Path(root).resolve()
    if not (ROOT / "recipes" / "tiny").is_dir():
        raise SystemExit(f"--root {ROOT}: no recipes/tiny there (give the repository checkout)")
    os.environ["BENCH_ROOT"] = str(ROOT)
    if work:
        os.environ["BENCH_WORK"] = str(Path(work).resolve())


def work_dir() -> str:
    """The scratch folder of this benchmark session (``BENCH_WORK``; made on first use, shared with children)."""
    if not os.environ.get("BENCH_WORK"):
        os.environ["BENCH_WORK"] = tempfile.mkdtemp(prefix="aot_bench_")
    os.makedirs(os.environ["BENCH_WORK"], exist_ok=True)
    return os.environ["BENCH_WORK"]


def _emit(result: dict) -> None:
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print("BENCH " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- tiny assets


def tiny_paths() -> dict:
    from aot_handbook.tasks.tiny.arithmetic import ensure_tiny_assets

    paths = ensure_tiny_assets(ROOT / ".cache" / "tiny")
    sft = ROOT / "runs" / "tiny-sft"
    model = sft if (sft / "run.json").is_file() else paths["base_model"]
    kind = "sft" if model == sft else "base"
    return {**{k: str(v) for k, v in paths.items()}, "model": str(model), "model_kind": kind}


# ---------------------------------------------------------------- 1. trainer throughput vs TRL


# A scaled-down Mistral-7B: its 32,000-token vocabulary, grouped-query attention (4 query heads per key/value
# head), MLP 3.5x hidden and untied head, at hidden 256 and 4 layers; random weights, SDPA attention.
REALISTIC_MODEL = dict(vocab_size=32000, hidden_size=256, intermediate_size=896, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Token lengths, log-normal (median, sigma): the UltraFeedback-like figures (prompts ~60 tokens, answers
# ~90, long right tails), scaled down from the real set (its answers run to several hundred tokens) to fit a CPU.
# Not measured on UltraFeedback here (offline). TRL's keep_start truncation at max_length cuts the tail.
REALISTIC_LENGTHS = {"prompt": (60, 0.9), "answer": (90, 0.8), "max_length": 400}


def realistic_assets(n_pairs: int, seed: int = 0):
    """(tokenizer, pairs, model) for the realistic shapes: a word-level tokenizer over 32,000 words ``w<i>``
    (one word, one token), pairs of random words with log-normal lengths, a randomly initialised Llama."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + [f"w{i}" for i in range(len(specials), 32000)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    g = torch.Generator().manual_seed(seed)

    def lengths(name):
        median, sigma = REALISTIC_LENGTHS[name]
        x = torch.randn(n_pairs, generator=g, dtype=torch.float64) * sigma + math.log(median)
        return x.exp().round().clamp(min=1).long().tolist()

    def words(n, lead=""):
        return lead + " ".join(f"w{i}" for i in torch.randint(3, 32000, (n,), generator=g).tolist())

    prompts, chosen, rejected = lengths("prompt"), lengths("answer"), lengths("answer")
    pairs = Dataset.from_list([{"prompt": words(p), "chosen": words(c, " "), "rejected": words(r, " ")}
                               for p, c, r in zip(prompts, chosen, rejected)])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**REALISTIC_MODEL, attn_implementation="sdpa"))
    return tokenizer, pairs, model


OURS = ("ours", "ours_rows", "one_row", "ours_two_rows")


def _build_trainer(side: str, loss_type: str, steps: int, batch: int, seed: int, shape: str = "tiny"):
    """Ours (AOTTrainer: ``ours`` its default, padding-free: with SDPA one row of segments, ``segment_sdpa``;
    ``ours_rows``: padding-free in ``plan_rows``' rows under a dense mask, the default before; ``one_row``:
    ``aot_padding_free=False``, one row per pair; ``ours_two_rows``: ``aot_share_prompt=False``, TRL's layout)
    or TRL's DPOTrainer AOT: same model,
    data, batch, steps, seed. ``shape``: the tiny task, or ``realistic``
    (``realistic_assets``: a 32k vocabulary, UltraFeedback-like lengths)."""
    import copy

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from aot_handbook.configs import AOTConfig
    from aot_handbook.trainers import AOTTrainer

    if shape == "realistic":
        tokenizer, data, model = realistic_assets(steps * batch, seed)
        ref, max_length = copy.deepcopy(model).eval().requires_grad_(False), REALISTIC_LENGTHS["max_length"]
    else:
        paths = tiny_paths()
        tokenizer = AutoTokenizer.from_pretrained(paths["model"])
        data = load_dataset("json", data_files=paths["paired_train"], split="train")
        data = data.select(range(min(len(data), steps * batch)))
        model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32).eval().requires_grad_(False)
        max_length = 32
    common = dict(output_dir=tempfile.mkdtemp(prefix="bench_", dir=work_dir()), max_steps=steps,
                  per_device_train_batch_size=batch, learning_rate=1e-4, lr_scheduler_type="constant", beta=0.1,
                  max_length=max_length, seed=seed, data_seed=seed, bf16=False, use_cpu=True,
                  gradient_checkpointing=False,
                  report_to="none", save_strategy="no", eval_strategy="no", logging_steps=steps,
                  dataloader_num_workers=0, precompute_ref_log_probs=False, disable_tqdm=True)
    if side in OURS:  # the default (padding-free), its masked rows, one row per pair, TRL's rows
        cls, args = AOTTrainer, AOTConfig(loss_type=loss_type, aot_share_prompt=side != "ours_two_rows",
                                          aot_padding_free=side in ("ours", "ours_rows"), **common)
        trainer = cls(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)
        if side == "ours_rows":  # SDPA over a dense mask in plan_rows' rows (the default before segment_sdpa)
            trainer._packing["layout"] = dataclasses.replace(trainer._packing["layout"], segments=False)
        return trainer
    else:
        # trl_pad64: TRL with its rows padded to a multiple of 64, the same math in another float rounding
        # (a control: how far float32 alone moves the losses at these shapes).
        cls, args = DPOTrainer, DPOConfig(loss_type={"aot_paired": "aot", "aot_unpaired": "aot_unpaired"}[loss_type],
                                          pad_to_multiple_of=64 if side == "trl_pad64" else None, **common)
    return cls(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)


def _train_child(side: str, loss_type: str, steps: int, batch: int, seed: int, warmup: int,
                 shape: str = "tiny") -> dict:
    """One side of the trainer comparison, ``trainer.train()`` end to end (runs in its own process)."""
    from transformers import TrainerCallback

    trainer = _build_trainer(side, loss_type, steps, batch, seed, shape)
    losses: list[float] = []
    inner = trainer.compute_loss

    def compute_loss(*a, **k):
        loss = inner(*a, **k)
        losses.append((loss[0] if isinstance(loss, tuple) else loss).item())
        return loss

    trainer.compute_loss = compute_loss
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    timed = len(stamps) - warmup
    return {"side": side, "loss_type": loss_type, "step1_loss": losses[0], "losses": losses,
            "samples_per_s": batch * (timed - 1) / (stamps[-1] - stamps[warmup]) if timed > 1 else float("nan"),
            "step_s": (stamps[-1] - stamps[warmup]) / max(timed - 1, 1)}


def _positions(side: str, trainer, inputs) -> dict:
    """Token positions one forward pass runs through the backbone (``tokens``, padding included), the real tokens
    among them (``real``), and the positions through the LM head (``logits``; TRL's fused head scores every
    position off CUDA/XPU; on them it keeps the completion positions, as ours does everywhere)."""
    ids = inputs["input_ids"]
    real, pairs = int(inputs["attention_mask"].sum()), ids.size(0) // 2  # (TRL drops prompts over max_length)
    if side == "trl":
        return {"tokens": ids.numel(), "real": real, "logits": ids.size(0) * (ids.size(1) - 1), "pairs": pairs}
    packed = trainer._pack(inputs, log=False) if side in ("ours", "ours_rows", "one_row") else None
    if packed is None:
        return {"tokens": ids.numel(), "real": real, "logits": int(inputs["completion_mask"][:, 1:].sum()),
                "pairs": pairs}
    stats = packed.stats()
    return {"tokens": stats["positions"], "real": stats["tokens"], "logits": int((packed.labels[:, 1:] != -100).sum()),
            "rows": stats["rows"], "pairs": pairs}


def _steps_child(loss_type: str, steps: int, batch: int, seed: int, warmup: int, shape: str = "tiny",
                 sides: tuple = ("ours", "ours_two_rows", "trl")) -> dict:
    """The trainers in one process, their training steps (forward, reference forward, loss, backward)
    interleaved one by one on the same batches, the order rotating each step, so load changes hit
    every side alike. ``one_row`` and ``ours_two_rows`` (ours without padding-free rows, without the shared
    prompt) show where a difference comes from."""
    trainers = {side: _build_trainer(side, loss_type, steps, batch, seed, shape) for side in sides}
    loaders = {side: iter(t.get_train_dataloader()) for side, t in trainers.items()}
    batches = {side: [next(loaders[side]) for _ in range(min(steps, 8))] for side in trainers}
    same = all(torch.equal(a["input_ids"], b["input_ids"]) for side in sides[1:]
               for a, b in zip(batches["ours"], batches[side]))
    times, losses = {s: [] for s in sides}, {s: [] for s in sides}
    for t in trainers.values():
        t.model.train()
        t.current_gradient_accumulation_steps = 1  # set by train(); training_step divides by it
    for i in range(warmup + steps):
        for side in sides[i % len(sides):] + sides[:i % len(sides)]:
            t = trainers[side]
            inputs = batches[side][i % len(batches[side])]
            t0 = time.perf_counter()
            loss = t.training_step(t.model, inputs)
            dt = time.perf_counter() - t0
            t.model.zero_grad(set_to_none=True)  # no optimizer step: the parameters stay at the start point
            losses[side].append(float(loss))
            if i >= warmup:
                times[side].append(dt)

    def ratio(side, base="trl"):  # per step: the base side's time / this side's time
        return summary([b / a for a, b in zip(times[side], times[base])])

    packed = trainers["ours"]._pack(batches["ours"][0], log=False)
    # Per training step (policy and reference pass), the mean over the timed batches.
    positions = {s: [_positions(s, trainers[s], b) for b in batches[s]] for s in sides}
    per_step = {s: {k: 2 * statistics.mean(p[k] for p in ps) for k in ("tokens", "real", "logits")}
                for s, ps in positions.items()}
    for s, ps in positions.items():
        per_step[s]["padding"] = 1 - per_step[s]["real"] / per_step[s]["tokens"]
        per_step[s]["pairs_per_row"] = statistics.mean(p["pairs"] / p.get("rows", 2 * p["pairs"]) for p in ps)
    out = {"loss_type": loss_type, "shape": shape, "same_batches": same, "sides": list(sides), "batch": batch,
           "step_s": {s: summary(v) for s, v in times.items()},
           "samples_per_s": {s: batch / summary(v)["median"] for s, v in times.items()},
           "per_step": per_step, "step1_loss": {s: v[0] for s, v in losses.items()},
           "ratios": {base: {s: ratio(s, base) for s in sides} for base in ("trl", "one_row") if base in sides},
           "tokens_per_batch": {"ours": packed.input_ids.numel() if packed is not None else None,
                                "trl": batches[sides[-1]][0]["input_ids"].numel()}}
    if "trl" in sides:  # the keys of the trainer section and the batch-4 realistic table
        out["paired_ratio"] = out["ratios"]["trl"]["ours"]
        if "ours_two_rows" in sides:
            out["two_rows_ratio"] = out["ratios"]["trl"]["ours_two_rows"]
    return out


def bench_trainer(*, loss_types=("aot_paired", "aot_unpaired"), steps=20, batch=64, repeats=3, warmup=3,
                  memory_steps=10, seed=0) -> dict:
    """Throughput: both trainers in one process, steps interleaved (``_steps_child``). Peak RSS, end-to-end
    samples/s of ``trainer.train()`` and the step-1 loss: each side in fresh processes, interleaved
    (``repeats`` each; 0 = skip)."""
    out = {}
    for loss_type in loss_types:
        steps_res = _child(["_steps", loss_type, str(steps), str(batch), str(seed), str(warmup)])
        runs = {"ours": [], "trl": []}
        for rep in range(repeats):
            for side in (("ours", "trl") if rep % 2 == 0 else ("trl", "ours")):  # interleaved, alternating order
                runs[side].append(_child(["_train", side, loss_type, str(memory_steps), str(batch), str(seed),
                                          str(min(warmup, memory_steps - 2))]))
        res = {"steps": steps_res, "throughput_ratio": steps_res["paired_ratio"]["median"],
               "step1_loss_diff": max(abs(steps_res["step1_loss"][s] - steps_res["step1_loss"]["trl"])
                                      for s in ("ours", "ours_two_rows"))}
        if repeats:
            for side, rs in runs.items():
                res[side] = {"samples_per_s": summary([r["samples_per_s"] for r in rs]),
                             "peak_rss_mb": summary([r["peak_rss_mb"] for r in rs]),
                             "step1_loss": rs[0]["step1_loss"]}
            res["memory_ratio"] = res["ours"]["peak_rss_mb"]["median"] / res["trl"]["peak_rss_mb"]["median"]
            res["e2e_ratio"] = res["ours"]["samples_per_s"]["median"] / res["trl"]["samples_per_s"]["median"]
            diff = abs(res["ours"]["step1_loss"] - res["trl"]["step1_loss"])
            res["step1_loss_diff"] = max(res["step1_loss_diff"], diff)
            # After step 1 the policy has moved away from the reference, so this compares real losses.
            pairs = zip(runs["ours"][0]["losses"], runs["trl"][0]["losses"])
            res["loss_diff_all_steps"] = max(abs(a - b) for a, b in pairs)
        out[loss_type] = res
    out["config"] = {"steps": steps, "batch": batch, "repeats": repeats, "warmup_steps": warmup,
                     "memory_steps": memory_steps, "seed": seed, "model": tiny_paths()["model_kind"],
                     "reference": "separate ref_model, forward every step", "threads": torch.get_num_threads()}
    return out


def trainer_table(res: dict) -> str:
    rows = []
    for lt, r in res.items():
        if lt == "config":
            continue
        st = r["steps"]
        tokens = st["tokens_per_batch"]
        row = [lt, {"aot_paired": "aot", "aot_unpaired": "aot_unpaired"}[lt],
               f"{st['samples_per_s']['ours']:.1f}", f"{st['samples_per_s']['trl']:.1f}",
               fmt(st["paired_ratio"], 3), fmt(st["two_rows_ratio"], 3), f"{tokens['ours']} vs {tokens['trl']}"]
        if "memory_ratio" in r:
            row += [f"{r['e2e_ratio']:.3f}", fmt(r["ours"]["peak_rss_mb"], 0), fmt(r["trl"]["peak_rss_mb"], 0),
                    f"{r['memory_ratio']:.3f}"]
        else:
            row += ["n/a (--quick)"] * 4
        all_steps = f"{r['loss_diff_all_steps']:.1e}" if "loss_diff_all_steps" in r else "n/a"
        rows.append(row + [f"{r['step1_loss_diff']:.1e}", all_steps])
    return table(["ours (AOTTrainer)", "TRL loss_type", "ours samples/s", "TRL samples/s",
                  "throughput ours/TRL, per-step pairs (>=1.0)", "ours with TRL's two rows/TRL", "tokens per batch",
                  "train() e2e ours/TRL", "ours peak RSS MB", "TRL peak RSS MB", "RSS ours/TRL (<=1.05)",
                  "|step-1 loss diff|", "max |loss diff|, train() steps"], rows)


# ---------------------------------------------------------------- 1b. the same on realistic shapes


LAYOUTS = ("trl", "two_rows", "packed", "padfree", "prefix")


def _layouts_child(steps: int, batch: int, seed: int, warmup: int) -> dict:
    """Where a step's time goes, per layout, on the realistic shapes: the policy's log-probs forward and backward
    and the reference's forward, timed apart, interleaved batch by batch on TRL's collated batches. ``trl``: TRL's
    fused head over every position (what DPOTrainer runs off CUDA); ``two_rows``: the head on completion
    positions only; ``packed``: one row per pair; ``padfree``: padding-free rows of several pairs (the default);
    ``prefix``: the prompt once through the KV cache (prefix.py)."""
    import copy

    from prefix import prefix_logps  # benchmarks/prefix.py, beside this file
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    from aot_handbook.packing import Layout, attention_tokens, completion_logps, pack_pairs

    tokenizer, data, model = realistic_assets(steps * batch, seed)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_", dir=work_dir()), per_device_train_batch_size=batch,
                     max_length=REALISTIC_LENGTHS["max_length"], use_cpu=True, bf16=False, report_to="none",
                     gradient_checkpointing=False, seed=seed, data_seed=seed, dataloader_num_workers=0)
    loader = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data,
                        processing_class=tokenizer).get_train_dataloader()
    for m in (model, ref):
        add_fused_lm_head(m)  # DPOTrainer added it to its own copies; these are the ones timed here
    model.train()

    def logps(m, layout, b):
        ids, att, comp = b["input_ids"], b["attention_mask"], b["completion_mask"]
        labels = ids.masked_fill(comp == 0, -100)
        if layout == "trl":
            return m(input_ids=ids, attention_mask=att, labels=labels, use_cache=False,
                     fused_lm_head=True).log_probs.sum(1).chunk(2)
        if layout == "two_rows":
            return completion_logps(m, m.base_model, labels, input_ids=ids, attention_mask=att)[0].sum(1).chunk(2)
        if layout == "prefix":
            return prefix_logps(m, m.base_model, ids, att, comp)
        rows = Layout(padding_free=layout == "padfree", attention_tokens=attention_tokens(m.config))
        packed = pack_pairs(ids, att, comp, layout=rows)
        lp = completion_logps(m, m.base_model, packed.labels, **packed.model_kwargs("sdpa"))[0]
        return packed.unpack(lp).sum(1).chunk(2)

    batches = [b for b, _ in zip(loader, range(steps))]
    parts = {lay: {"forward": [], "backward": [], "reference": [], "step": []} for lay in LAYOUTS}
    values = {}
    for i in range(warmup + steps):
        b = batches[i % len(batches)]
        for lay in LAYOUTS[i % len(LAYOUTS):] + LAYOUTS[:i % len(LAYOUTS)]:
            t0 = time.perf_counter()
            chosen, rejected = logps(model, lay, b)
            t1 = time.perf_counter()
            (chosen.sum() - rejected.sum()).backward()
            t2 = time.perf_counter()
            with torch.no_grad():
                ref_chosen, _ = logps(ref, lay, b)
            t3 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            values.setdefault(lay, torch.cat([chosen.detach(), ref_chosen]))
            if i >= warmup:
                for k, dt in zip(("forward", "backward", "reference", "step"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    parts[lay][k].append(dt)
    out = {lay: {k: summary(v) for k, v in p.items()} for lay, p in parts.items()}
    for lay in LAYOUTS:
        out[lay]["ratio"] = summary([a / b for a, b in zip(parts["trl"]["step"], parts[lay]["step"])])
        out[lay]["max_logp_diff"] = float((values[lay] - values["trl"]).abs().max())
    return out


def layouts_table(res: dict) -> str:
    names = {"trl": "TRL's two rows, head on every position", "two_rows": "two rows, head on completions",
             "packed": "one row per pair", "padfree": "padding-free rows",
             "prefix": "prompt once through the KV cache"}
    rows = [[names[lay], fmt(r["forward"], 3), fmt(r["backward"], 3), fmt(r["reference"], 3), fmt(r["step"], 3),
             fmt(r["ratio"], 2), f"{r['max_logp_diff']:.1e}"] for lay, r in res.items() if lay in LAYOUTS]
    return table(["layout", "policy forward s", "policy backward s", "reference forward s", "total s",
                  "TRL total / this", "max |log-prob diff| vs TRL (batch 1)"], rows)


REALISTIC_SIDES = ("ours", "one_row", "ours_two_rows", "trl")


def bench_realistic(*, loss_type="aot_paired", steps=8, batch=4, warmup=2, memory_steps=10, seed=0,
                    sides=("ours", "one_row", "ours_two_rows", "trl", "trl_pad64"), layouts=True,
                    padfree: dict | None = None) -> dict:
    """AOTTrainer in each layout against TRL on the realistic shapes (``realistic_assets``): throughput
    interleaved step by step in one process (``_steps_child``); peak RSS and the losses of ``train()`` for
    ``memory_steps`` steps, each side in a fresh process (``sides``; none: skipped)."""
    steps_res = _child(["_steps", loss_type, str(steps), str(batch), str(seed), str(warmup), "realistic",
                        ",".join(REALISTIC_SIDES)])
    layouts = _child(["_layouts", str(steps), str(batch), str(seed), str(warmup)]) if layouts else None
    runs = {side: _child(["_train", side, loss_type, str(memory_steps), str(batch), str(seed), "0", "realistic"])
            for side in sides}
    res = {"steps": steps_res, "train": runs, "layouts": layouts,
           "step1_loss_diff": max(abs(v - steps_res["step1_loss"]["trl"]) for v in steps_res["step1_loss"].values())}
    if "trl" in runs:
        for side in runs:
            runs[side]["rss_ratio"] = runs[side]["peak_rss_mb"] / runs["trl"]["peak_rss_mb"]
            runs[side]["loss_diff"] = max(abs(a - b) for a, b in zip(runs[side]["losses"], runs["trl"]["losses"]))
            diff = abs(runs[side]["losses"][0] - runs["trl"]["losses"][0])
            res["step1_loss_diff"] = max(res["step1_loss_diff"], diff)
    res["config"] = {"loss_type": loss_type, "steps": steps, "warmup_steps": warmup, "batch": batch,
                     "memory_steps": memory_steps, "seed": seed, "model": REALISTIC_MODEL,
                     "lengths": REALISTIC_LENGTHS, "threads": torch.get_num_threads()}
    res["padfree"] = bench_padfree(loss_type=loss_type, seed=seed, **padfree) if padfree is not None else None
    return res


def realistic_table(res: dict) -> str:
    st, runs = res["steps"], res["train"]
    names = {"ours": "ours, padding-free rows (default)",
             "one_row": "ours, one row per pair (aot_padding_free: false)",
             "ours_two_rows": "ours, two rows (aot_share_prompt: false)", "trl": "TRL DPOTrainer(loss_type=\"aot\")"}
    rows = []
    for side in st["sides"]:
        r = runs.get(side)
        rows.append([names[side], fmt(st["step_s"][side], 3), fmt(st["ratios"]["trl"][side], 3),
                     f"{st['per_step'][side]['tokens']:.0f}", f"{st['per_step'][side]['padding']:.1%}",
                     f"{st['per_step'][side]['logits']:.0f}",
                     f"{r['peak_rss_mb']:.0f} ({r['rss_ratio']:.3f})" if r and "rss_ratio" in r else "n/a",
                     f"{st['step1_loss'][side] - st['step1_loss']['trl']:.1e}",
                     f"{r['loss_diff']:.1e}" if r and "loss_diff" in r else "n/a"])
    if "trl_pad64" in runs:  # the control: no interleaved timing, only its losses and RSS
        r = runs["trl_pad64"]
        rows.append(["TRL, rows padded to a multiple of 64 (float-rounding control)", *["n/a"] * 5,
                     f"{r['peak_rss_mb']:.0f} ({r['rss_ratio']:.3f})",
                     f"{r['losses'][0] - runs['trl']['losses'][0]:.1e}",
                     f"{r['loss_diff']:.1e}"])
    return table(["side", "step s (median [min-max])", "TRL time / this side's, per step", "tokens per step",
                  "padding share", "logits per step", "peak RSS MB (/ TRL)", "step-1 loss - TRL's",
                  "max |loss diff| over train()"], rows)


# ---------------------------------------------------------------- 1c. padding-free rows at batch 4, 16, 32


PADFREE_SIDES = ("ours", "ours_rows", "one_row", "trl")


def _available_mb() -> float:
    try:
        line = next(x for x in open("/proc/meminfo") if x.startswith("MemAvailable:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return float("inf")


def bench_padfree(*, batches=(4, 16, 32), steps=4, warmup=1, memory_steps=10, seed=0, loss_type="aot_paired",
                  profile_batch: int | None = 16, memory_share=0.6) -> dict:
    """Padding-free (``ours``, the default: with SDPA one row, attention per segment), padding-free rows under a
    dense mask (``ours_rows``, the default before), one row per pair (``one_row``) and TRL on the realistic
    shapes, per batch size: training steps interleaved in one process (``_steps_child``); peak RSS and
    ``memory_steps`` steps' losses of ``train()``, each side in a fresh process; where a step's time goes
    (``_profile_child``) at ``profile_batch``. TRL's peak grows with its rows (its head keeps every
    position); where its peak, extrapolated from the smallest batch, would exceed ``memory_share`` of the
    memory available now, TRL is left out at that batch (and said so)."""
    out = {}
    trl_mb_per_pair = None
    for batch in sorted(batches):
        sides, note = list(PADFREE_SIDES), None
        if trl_mb_per_pair is not None and trl_mb_per_pair * batch > memory_share * _available_mb():
            sides.remove("trl")
            note = (f"TRL left out: ~{trl_mb_per_pair * batch / 1024:.0f} GB expected (from batch "
                    f"{min(batches)}), {_available_mb() / 1024:.0f} GB available")
        st = _child(["_steps", loss_type, str(steps), str(batch), str(seed), str(warmup), "realistic",
                     ",".join(sides)])
        runs = {side: _child(["_train", side, loss_type, str(memory_steps), str(batch), str(seed), "0", "realistic"])
                for side in sides} if memory_steps else {}
        for side, r in runs.items():
            r["loss_diff"] = max(abs(a - b) for a, b in zip(r["losses"], runs["one_row"]["losses"]))
        if "trl" in runs and trl_mb_per_pair is None:
            trl_mb_per_pair = runs["trl"]["peak_rss_mb"] / batch
        out[batch] = {"steps": st, "train": runs, "note": note}
    if profile_batch:
        out["profile"] = _child(["_profile", str(profile_batch), str(seed)])
        out["backbone"] = _child(["_backbone", str(steps), str(profile_batch), str(seed), str(warmup)])
    return out


def _backbone_child(steps: int, batch: int, seed: int, warmup: int,
                    sides: tuple = ("ours", "ours_rows", "one_row")) -> dict:
    """The layouts without the LM head: per training step the policy's transformer (``model.model``) forward
    and backward over the trainer's own packed rows (a loss on the scored positions' hidden states) and the
    reference's forward, the sides interleaved step by step on the same batches, as in ``_steps_child``. The
    part of a step that the layout changes, and what a 7B model on a GPU is mostly made of; the head, the same
    in every layout, is 68-80% of this CPU model's step."""
    from aot_handbook.packing import model_attention

    trainers = {side: _build_trainer(side, "aot_paired", steps, batch, seed, "realistic") for side in sides}
    batches = [b for b, _ in zip(trainers[sides[0]].get_train_dataloader(), range(steps))]
    times = {side: [] for side in sides}
    for t in trainers.values():
        t.model.train()
    for i in range(warmup + steps):
        b = batches[i % len(batches)]
        for side in sides[i % len(sides):] + sides[:i % len(sides)]:
            t = trainers[side]
            t0 = time.perf_counter()
            packed = t._pack(b, log=False)
            hidden = t.model.model(**packed.model_kwargs(model_attention(t.model)), use_cache=False).last_hidden_state
            hidden[:, :-1][packed.labels[:, 1:] != -100].square().mean().backward()
            with torch.no_grad():
                t.ref_model.model(**packed.model_kwargs(model_attention(t.ref_model)), use_cache=False)
            dt = time.perf_counter() - t0
            t.model.zero_grad(set_to_none=True)
            if i >= warmup:
                times[side].append(dt)
    return {"batch": batch, "seed": seed, "step_s": {s: summary(v) for s, v in times.items()},
            "ratios": {s: summary([b / a for a, b in zip(times[s], times["one_row"])]) for s in sides}}


def padfree_table(res: dict) -> str:
    names = {"ours": "padding-free, one row, SDPA per segment (default)",
             "ours_rows": "padding-free rows, dense mask (before)", "one_row": "one row per pair", "trl": "TRL"}
    rows = []
    for batch, r in res.items():
        if not isinstance(batch, int):
            continue
        st = r["steps"]
        for side in st["sides"]:
            run = r["train"].get(side, {})
            per = st["per_step"][side]
            rows.append([batch, names[side], fmt(st["step_s"][side], 2),
                         fmt(st["ratios"]["one_row"][side], 3),
                         fmt(st["ratios"]["trl"][side], 3) if "trl" in st["ratios"] else "n/a",
                         f"{per['tokens']:.0f}", f"{per['padding']:.1%}", f"{per['pairs_per_row']:.2f}",
                         f"{run['peak_rss_mb']:.0f}" if run else "n/a",
                         f"{run['loss_diff']:.1e}" if run else "n/a"])
    return table(["batch", "layout", "step s (median [min-max])", "one-row time / this, per step",
                  "TRL time / this", "positions per step", "padding share", "pairs per row", "peak RSS MB",
                  "max |loss - one row's| over train()"], rows)


def _profile_child(batch: int, seed: int, steps: int = 2) -> dict:
    """Where a training step's time goes, padding-free (one row of segments; rows under a dense mask) against one
    row per pair (same batches, interleaved):
    torch.profiler self CPU time of the attention kernels (SDPA forward and backward), the backbone's matrix
    products, the LM head (every op on a vocabulary-wide tensor: TRL's chunked head and its backward) and the
    layout's construction (``_pack`` and the mask, timed as named ranges); the rest (norms, rotary, activations,
    embedding, optimizer-free bookkeeping) is ``other``. Profiler overhead included."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from aot_handbook.packing import PackedRows

    vocab = REALISTIC_MODEL["vocab_size"]
    trainers = {side: _build_trainer(side, "aot_paired", steps + 1, batch, seed, "realistic")
                for side in ("ours", "ours_rows", "one_row")}
    make_mask = PackedRows.model_kwargs

    def timed_mask(self, attention):
        with record_function("layout"):
            return make_mask(self, attention)

    PackedRows.model_kwargs = timed_mask
    out = {}
    for side, t in trainers.items():
        pack = t._pack

        def timed_pack(*a, pack=pack, **k):
            with record_function("layout"):
                return pack(*a, **k)

        t._pack = timed_pack
        t.model.train()
        t.current_gradient_accumulation_steps = 1
        loader = iter(t.get_train_dataloader())
        batches = [next(loader) for _ in range(steps + 1)]
        t.training_step(t.model, batches[0])  # warm-up
        parts = {"attention": 0.0, "linear": 0.0, "lm_head": 0.0, "layout": 0.0, "total": 0.0}
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for b in batches[1:]:
                t0 = time.perf_counter()
                t.training_step(t.model, b)
                parts["total"] += time.perf_counter() - t0
                t.model.zero_grad(set_to_none=True)
        self_total = 0.0
        for e in prof.key_averages(group_by_input_shape=True):
            sec = e.self_cpu_time_total / 1e6
            self_total += sec
            if e.key == "layout":
                parts["layout"] += e.cpu_time_total / 1e6 - sec
            elif "scaled_dot_product" in e.key:
                parts["attention"] += sec
            elif any(vocab in shape for shape in e.input_shapes if isinstance(shape, (list, tuple))) \
                    or "ChunkedLogProb" in e.key:
                parts["lm_head"] += sec
            elif e.key in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul", "aten::linear"):
                parts["linear"] += sec
        # shares of the profiled CPU time, scaled to the measured step time
        known = parts["attention"] + parts["linear"] + parts["lm_head"] + parts["layout"]
        scale = parts["total"] / self_total
        out[side] = {k: (v * scale if k != "total" else v) / steps for k, v in parts.items()}
        out[side]["other"] = (self_total - known) * scale / steps
    PackedRows.model_kwargs = make_mask
    return {"batch": batch, "steps": steps, "parts": out}


def profile_table(res: dict) -> str:
    names = {"ours": "padding-free, SDPA per segment (default)", "ours_rows": "padding-free rows, dense mask",
             "one_row": "one row per pair"}
    rows = []
    for side, p in res["parts"].items():
        rows.append([names[side], f"{p['total']:.2f}",
                     *(f"{p[k]:.2f} ({p[k] / p['total']:.0%})" for k in ("attention", "linear", "lm_head", "layout",
                                                                          "other"))])
    return table(["layout", "step s", "attention (SDPA fwd+bwd) s", "backbone matmuls s", "LM head s",
                  "layout + mask construction s", "other s"], rows)


# ---------------------------------------------------------------- 2. reference log-prob cache


@contextlib.contextmanager
def ref_cache_probe(record: list):
    """Record, for every reference precompute, the cache file and whether it already existed."""
    from datasets.fingerprint import Hasher
    from trl import DPOTrainer, KTOTrainer

    saved = {cls: cls.__dict__["_precompute_ref_logps"] for cls in (DPOTrainer, KTOTrainer)}

    def patched(cls, original):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            key = (dataset._fingerprint, self._precompute_model_hash)
            if cls is KTOTrainer:
                key = (*key, self.calculate_KL)
            cache_file = dataset._get_cache_file_path(Hasher.hash(key))
            entry = {"split": name, "cache_file": cache_file, "reused": os.path.exists(cache_file), "forwards": 0}
            record.append(entry)
            inner = self.compute_ref_log_probs

            def counted(*a, **k):
                entry["forwards"] += 1
                return inner(*a, **k)

            self.compute_ref_log_probs = counted
            t0 = time.perf_counter()
            try:
                return original(self, dataset, name, batch_size)
            finally:
                entry["seconds"] = time.perf_counter() - t0
                del self.compute_ref_log_probs
        return _precompute_ref_logps

    for cls, original in saved.items():
        cls._precompute_ref_logps = patched(cls, original)
    try:
        yield
    finally:
        for cls, original in saved.items():
            cls._precompute_ref_logps = original


def _first_loss_recorder(losses: list):
    """Record the first training loss at full precision (the logs round it)."""
    from transformers import Trainer

    original = Trainer.training_step

    def training_step(self, *a, **k):
        loss = original(self, *a, **k)
        losses.append(float(loss.detach()))
        return loss

    return original, training_step


def train_probed(recipe: str, overrides: list[str]) -> dict:
    """``plan.train`` (a recipe's requires first, as ``aot-train``) with the cache probe; step-1 loss; in this
    process."""
    from transformers import Trainer

    from aot_handbook.plan import train

    record, losses = [], []
    original, step = _first_loss_recorder(losses)
    Trainer.training_step = step
    t0 = time.perf_counter()
    try:
        with ref_cache_probe(record):
            train(recipe, overrides)
    finally:
        Trainer.training_step = original
    return {"recipe": recipe, "overrides": overrides, "precompute": record,
            "step1_loss": losses[0] if losses else None, "seconds": time.perf_counter() - t0}


SWEEP_METHODS = ("aot_paired", "aot_unpaired_paired_data", "dpo", "ipo")


def sweep_runs(seeds=(0, 1), steps: int = 20, out_root: str | None = None) -> list[tuple[str, list[str]]]:
    """The sweep's (recipe, overrides); recipes relative to the repository root (the children's cwd)."""
    out_root = out_root or f"{work_dir()}/sweep"
    runs = []
    for seed in seeds:
        for method in SWEEP_METHODS:
            recipe = f"recipes/tiny/{'aot_paired' if method.startswith('aot') else method}.yaml"
            over = ["--seed", str(seed), "--max_steps", str(steps), "--summary", "false", "--logging_steps", "1",
                    # a rerun retrains
                    "--output_dir", f"{out_root}/{method}-s{seed}", "--overwrite_output_dir", "true"]
            if method == "aot_unpaired_paired_data":  # AOT unpaired on paired rows (AOTTrainer)
                over = ["--method", "aot_unpaired", *over]
            runs.append((recipe, over))
    return runs


def bench_cache(*, seeds=(0, 1), steps=20, repeats=2, root: str | None = None) -> dict:
    """The sweep end to end, each run a fresh process (as ``make sweep`` runs them): every run with its
    own empty datasets cache ("own": what TRL 1.16 amounts to, since its key changed with every seed,
    method, beta and output_dir) vs one cache shared by the sweep ("shared": ``trainer.SharedRefCache``).
    """
    root = root or f"{work_dir()}/cache_bench"
    results = {"own": [], "shared": []}
    for rep in range(repeats):
        for side in (("own", "shared") if rep % 2 == 0 else ("shared", "own")):
            cache = Path(root) / f"hf-{side}-{rep}"
            shutil.rmtree(cache, ignore_errors=True)
            t0 = time.perf_counter()
            runs = []
            for i, (recipe, over) in enumerate(sweep_runs(seeds, steps, f"{root}/runs-{side}-{rep}")):
                run_cache = cache / f"run{i}" if side == "own" else cache
                runs.append(_child(["_sweep_run", recipe, json.dumps(over)],
                                   env={"HF_DATASETS_CACHE": str(run_cache)}))
            results[side].append({"seconds": time.perf_counter() - t0, "runs": runs})
            shutil.rmtree(cache, ignore_errors=True)
    res = {side: {"sweep_s": summary([r["seconds"] for r in rs]),
                  "precompute_s": summary([sum(p["seconds"] for run in r["runs"] for p in run["precompute"])
                                           for r in rs]),
                  "computed": [sum(not p["reused"] for run in r["runs"] for p in run["precompute"]) for r in rs],
                  "runs": rs[0]["runs"]}
           for side, rs in results.items()}
    res["speedup"] = res["own"]["sweep_s"]["median"] / res["shared"]["sweep_s"]["median"]
    res["step1_loss_max_diff"] = max(abs(a["step1_loss"] - b["step1_loss"])
                                     for a, b in zip(res["own"]["runs"], res["shared"]["runs"]))
    res["config"] = {"runs": len(sweep_runs(seeds, steps)), "seeds": list(seeds), "max_steps": steps,
                     "repeats": repeats, "summary": False}
    return res


def cache_table(res: dict) -> str:
    rows = []
    for a, b in zip(res["own"]["runs"], res["shared"]["runs"]):
        name = Path(a["overrides"][a["overrides"].index("--output_dir") + 1]).name
        pa, pb = a["precompute"][0], b["precompute"][0]
        rows.append([name, "reused" if pa["reused"] else f"computed ({pa['seconds']:.1f} s)",
                     "reused" if pb["reused"] else f"computed ({pb['seconds']:.1f} s)",
                     f"{a['step1_loss']:.9f}", f"{b['step1_loss']:.9f}"])
    return table(["run", "own cache per run", "shared cache", "step-1 loss (own)", "step-1 loss (shared)"], rows)


def cache_summary_table(res: dict) -> str:
    rows = [[side, fmt(res[side]["sweep_s"]), fmt(res[side]["precompute_s"]), str(res[side]["computed"][0])]
            for side in ("own", "shared")]
    return table(["sweep", "end to end s (median [min-max])", "of which ref precompute s", "precomputes"], rows)


# ---------------------------------------------------------------- 3. loss micro-benchmarks


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward pass of ``fn()``."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def bench_loss(*, sizes=(64, 256, 1024, 4096, 16384, 65536), sorts=("hard", "soft", "soft_pav"), repeats=5,
               min_time=0.05, soft_max_n: int | None = None) -> dict:
    from aot_handbook.loss import aot_loss

    torch.manual_seed(0)
    out = {}
    for n in sizes:
        u0, v0 = torch.randn(n), torch.randn(n) - 0.5

        def step(sort, u0=u0, v0=v0):
            u, v = u0.clone().requires_grad_(), v0.clone()
            aot_loss(u, v, beta=0.1, sort=sort).backward()

        active = []
        for sort in sorts:
            if sort == "soft" and soft_max_n is not None and n > soft_max_n:
                out.setdefault(n, {})[sort] = {"skipped": f"not run above n={soft_max_n} in this mode"}
                continue
            if sort == "soft":
                # Sinkhorn keeps O(n_iter * n^2) for backward; measure it at small n and extrapolate.
                small = min(n, 128)
                est = _saved_bytes(lambda small=small: aot_loss(torch.randn(small, requires_grad=True),
                                                                torch.randn(small), sort="soft")) * (n / small) ** 2
                if est > SOFT_MEMORY_LIMIT:
                    out.setdefault(n, {})[sort] = {"skipped": f"autograd memory ~{est / 1024**3:.1f} GB > 2 GB"}
                    continue
                out.setdefault(n, {})[sort] = {"saved_mb": _saved_bytes(lambda: step("soft")) / 1024**2}
            active.append(sort)
        for sort in active:
            step(sort)  # warm-up
        times = {s: [] for s in active}
        for rep in range(repeats):
            for sort in (active if rep % 2 == 0 else active[::-1]):
                k, t0 = 0, time.perf_counter()
                while True:  # repeat fast calls so one timing covers >= min_time
                    step(sort)
                    k += 1
                    if time.perf_counter() - t0 >= min_time:
                        break
                times[sort].append((time.perf_counter() - t0) / k)
        for sort in active:
            out.setdefault(n, {}).setdefault(sort, {})["seconds"] = summary(times[sort])
    return out


def loss_table(res: dict) -> str:
    sorts = sorted({s for r in res.values() for s in r}, key=["hard", "soft", "soft_pav"].index)
    rows = []
    for n, r in res.items():
        cells = [str(n)]
        for s in sorts:
            x = r.get(s, {})
            if "skipped" in x:
                cells.append(f"skipped ({x['skipped']})")
            elif "seconds" in x:
                c = fmt(x["seconds"], 3, 1e3)
                cells.append(c + (f", {x['saved_mb']:.0f} MB saved" if "saved_mb" in x else ""))
            else:
                cells.append("-")
        rows.append(cells)
    return table(["n", *[f"{s} fwd+bwd ms (median [min-max])" for s in sorts]], rows)


def scaling_exponents(res: dict) -> dict:
    """Slope of log(time) against log(n) between the two largest measured sizes, per sort."""
    import math

    out = {}
    for s in ("hard", "soft", "soft_pav"):
        pts = [(n, r[s]["seconds"]["median"]) for n, r in res.items() if s in r and "seconds" in r[s]]
        if len(pts) >= 2:
            (n1, t1), (n2, t2) = pts[-2], pts[-1]
            out[s] = math.log(t2 / t1) / math.log(n2 / n1)
    return out


# ---------------------------------------------------------------- 4. generation


def bench_generate(*, n_prompts=256, n_single=64, repeats=3, batch_size=256, max_new_tokens=5) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aot_handbook.io import read_jsonl
    from aot_handbook.tasks.tiny.arithmetic import generate

    paths = tiny_paths()
    tok = AutoTokenizer.from_pretrained(paths["model"])
    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32)
    prompts = [r["prompt"] for r in read_jsonl(paths["eval_prompts"])][:n_prompts]
    single = prompts[:n_single]
    generate(model, tok, prompts[:8], batch_size=8, max_new_tokens=max_new_tokens)  # warm-up
    generate(model, tok, prompts[:2], batch_size=1, max_new_tokens=max_new_tokens)
    rates = {"batched": [], "one_at_a_time": []}
    outputs = {}
    for rep in range(repeats):
        for mode in (("batched", "one_at_a_time") if rep % 2 == 0 else ("one_at_a_time", "batched")):
            ps, bs = (prompts, batch_size) if mode == "batched" else (single, 1)
            t0 = time.perf_counter()
            outputs[mode] = generate(model, tok, ps, batch_size=bs, max_new_tokens=max_new_tokens)
            rates[mode].append(len(ps) / (time.perf_counter() - t0))
    same = outputs["batched"][:n_single] == outputs["one_at_a_time"]
    res = {m: summary(r) for m, r in rates.items()}
    res["speedup"] = res["batched"]["median"] / res["one_at_a_time"]["median"]
    res["same_outputs"] = same
    res["config"] = {"n_prompts_batched": len(prompts), "n_prompts_single": len(single), "batch_size": batch_size,
                     "max_new_tokens": max_new_tokens, "model": paths["model_kind"], "repeats": repeats}
    return res


def generate_table(res: dict) -> str:
    c = res["config"]
    return table(["mode", "prompts", "prompts/s (median [min-max])", "speedup (>=4)", "same greedy outputs"], [
        [f"batched, left padding, batch {c['batch_size']}", c["n_prompts_batched"], fmt(res["batched"]),
         f"{res['speedup']:.1f}x", str(res["same_outputs"])],
        ["one prompt at a time", c["n_prompts_single"], fmt(res["one_at_a_time"]), "1.0x", ""]])


# ---------------------------------------------------------------- driver


QUICK = {
    "trainer": dict(loss_types=("aot_paired",), steps=3, batch=16, repeats=0, warmup=1),
    "realistic": dict(steps=1, warmup=0, batch=2, sides=(), layouts=False,  # no train() processes, no layouts
                      padfree=dict(batches=(2,), steps=1, warmup=0, memory_steps=0, profile_batch=None)),
    "loss": dict(sizes=(64, 1024, 16384), repeats=3, min_time=0.01, soft_max_n=64),
    "generate": dict(n_prompts=32, n_single=4, repeats=1, batch_size=32),
    "accumulation": dict(pairs=8, micro=4, repeats=1, context=0),
}
FULL = {
    "trainer": dict(loss_types=("aot_paired", "aot_unpaired"), steps=20, batch=64, repeats=2, warmup=3),
    "realistic": dict(padfree=dict()),
    "padfree": dict(),  # also part of realistic; alone: make bench ARGS="--only padfree"
    "cache": dict(seeds=(0, 1), steps=10, repeats=2),
    "loss": dict(),
    "generate": dict(),
    "accumulation": dict(),
}


def run(sections: list[str], quick: bool) -> dict:
    plan = QUICK if quick else FULL
    results = {"machine": machine(), "quick": quick}
    fns = {"trainer": (bench_trainer, trainer_table), "realistic": (bench_realistic, realistic_table),
           "padfree": (bench_padfree, padfree_table),
           "cache": (bench_cache, cache_table),
           "loss": (bench_loss, loss_table), "generate": (bench_generate, generate_table)}
    if "accumulation" in sections:
        from bench_accumulation import accumulation_table, bench_accumulation

        fns["accumulation"] = (bench_accumulation, accumulation_table)
    for name in sections:
        if name not in plan:
            print(f"\n## {name}: not part of {'--quick' if quick else 'the full run'}", flush=True)
            continue
        t0 = time.perf_counter()
        res = fns[name][0](**plan[name])
        results[name] = res
        print(f"\n## {name} ({time.perf_counter() - t0:.0f} s)\n", flush=True)
        if name != "padfree":  # printed with its notes and profile below
            print(fns[name][1](res), flush=True)
        if name == "cache":
            print("\n" + cache_summary_table(res))
            print(f"\nspeedup {res['speedup']:.2f}x; max |step-1 loss diff| {res['step1_loss_max_diff']:.1e}")
        if name == "loss":
            print("\nlog-log slope between the two largest sizes:",
                  {k: round(v, 2) for k, v in scaling_exponents(res).items()})
            if "trainer" in results and 64 in res:
                step_s = results["trainer"]["aot_paired"]["steps"]["step_s"]["ours"]["median"]
                share = res[64]["hard"]["seconds"]["median"] / step_s
                results["loss_share"] = share
                print(f"hard-sort aot_loss at n=64: {share:.4%} of an AOTTrainer step (batch "
                      f"{results['trainer']['config']['batch']})")
        if name == "padfree":
            res = {"padfree": res}
        if name in ("realistic", "padfree"):
            if res["padfree"]:
                print("\npadding-free (one row of segments; rows under a dense mask) against one row per pair and "
                      "TRL, batch 4, 16, 32 (steps interleaved in one process per batch; RSS and losses: train(), a "
                      "fresh process per side):\n")
                print(padfree_table(res["padfree"]))
                for batch, r in res["padfree"].items():
                    if isinstance(batch, int) and r["note"]:
                        print(f"batch {batch}: {r['note']}")
                if "profile" in res["padfree"]:
                    print(f"\nwhere a step's time goes, batch {res['padfree']['profile']['batch']} (torch.profiler "
                          "self CPU time, scaled to the measured step):\n")
                    print(profile_table(res["padfree"]["profile"]))
                if "backbone" in res["padfree"]:
                    bb = res["padfree"]["backbone"]
                    print(f"\nthe layouts without the LM head, batch {bb['batch']} (one-row time / this, per step): "
                          + ", ".join(f"{side} {fmt(r, 3)}" for side, r in bb["ratios"].items()))
        if name == "realistic":
            if res["layouts"]:
                print("\nwhere the time goes, per layout "
                      "(policy log-probs forward and backward, reference forward):\n")
                print(layouts_table(res["layouts"]))
            c = res["config"]
            print(f"\n(realistic shapes: a {c['model']['num_hidden_layers']}-layer Llama, "
                  f"hidden {c['model']['hidden_size']}, "
                  f"vocabulary {c['model']['vocab_size']}, SDPA, random weights; prompt and answer tokens log-normal "
                  f"(median, sigma) {c['lengths']['prompt']} and {c['lengths']['answer']}, max_length "
                  f"{c['lengths']['max_length']}; {c['loss_type']}; batch {c['batch']}; "
                  f"{c['steps']} training steps per "
                  f"side after {c['warmup_steps']} warm-up, interleaved step by step in one process; a separate "
                  f"reference model; {c['threads']} thread(s); RSS and losses: train() for {c['memory_steps']} steps, "
                  f"a fresh process per side)")
        if name == "trainer":
            c = res["config"]
            print(f"\n(throughput: {c['steps']} training steps per side after {c['warmup_steps']} warm-up, "
                  "interleaved "
                  f"step by step in one process, batch {c['batch']}, {c['model']} model, {c['reference']}, "
                  f"{c['threads']} thread(s); memory: {c['repeats']} fresh processes per side, interleaved, "
                  f"train() for {c['memory_steps']} steps)")
    print(f"\nmachine: {json.dumps(results['machine'])}")
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run (< 1 min): one trainer pair, small n")
    p.add_argument("--only", default="trainer,realistic,cache,loss,generate,accumulation",
                   help="comma-separated sections (padfree: the padding-free part of realistic alone)")
    p.add_argument("--json", help="also write every number to this file")
    p.add_argument("--accumulation-pairs", type=int, default=None, metavar="N",
                   help="accumulation section: pairs per optimizer step (default 512; micro-batches of 8)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: on a shared machine, 2+ threads stall on each other)")
    p.add_argument("--root", type=Path, default=ROOT,
                   help="the repository checkout (its recipes/tiny and .cache/tiny); default: this file's checkout")
    p.add_argument("--work-dir", default=None,
                   help="scratch folder for runs and caches (default: a new temporary one)")
    a = p.parse_args(argv)
    set_roots(a.root, a.work_dir)
    set_threads(a.threads)
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if a.accumulation_pairs:
        (QUICK if a.quick else FULL)["accumulation"]["pairs"] = a.accumulation_pairs
    results = run([s.strip() for s in a.only.split(",") if s.strip()], a.quick)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def _child_main(argv: list[str]) -> None:
    cmd = argv[0]
    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    if cmd == "_train":
        side, loss_type, steps, batch, seed, warmup, *shape = argv[1:8]
        _emit(_train_child(side, loss_type, int(steps), int(batch), int(seed), int(warmup), *shape))
    elif cmd == "_steps":
        loss_type, steps, batch, seed, warmup, *rest = argv[1:8]
        sides = {"sides": tuple(rest[1].split(","))} if len(rest) > 1 else {}
        _emit(_steps_child(loss_type, int(steps), int(batch), int(seed), int(warmup), *rest[:1], **sides))
    elif cmd == "_backbone":
        _emit(_backbone_child(*(int(x) for x in argv[1:5])))
    elif cmd == "_profile":
        _emit(_profile_child(int(argv[1]), int(argv[2])))
    elif cmd == "_layouts":
        _emit(_layouts_child(*(int(x) for x in argv[1:5])))
    elif cmd in ("_accum_memory", "_accum_time"):
        import bench_accumulation

        if cmd == "_accum_memory":
            _emit(bench_accumulation.memory_child(int(argv[1]), int(argv[2]), int(argv[3]), argv[4], int(argv[5])))
        else:
            _emit(bench_accumulation.time_child(*(int(x) for x in argv[1:4])))
    elif cmd == "_sweep_run":
        _emit(train_probed(argv[1], json.loads(argv[2])))
    else:
        raise SystemExit(f"unknown child command {cmd}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        _child_main(sys.argv[1:])
    else:
        main()
