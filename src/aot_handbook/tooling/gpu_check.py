"""`make gpu-check`: what only a GPU exercises, in one command, under 10 minutes on one GPU.

- bf16 AOT paired and unpaired training steps of small real-architecture models (Llama and Mistral
  configs, random weights, built here) with LoRA and gradient checkpointing;
- one row per pair under SDPA: packed log-probs equal to TRL's two rows within bf16 tolerance;
- the flash-attention fallback with aot_padding_free off (TRL's two rows, with its warning), when flash-attn is
  installed; padding-free rows through flash-attention's varlen path and FlexAttention (check_padding_free);
- ``optim: paged_adamw_32bit`` (the paper's optimizer) and 4-bit QLoRA loading, when bitsandbytes is;
- vLLM generation (``evaluation.generation``'s backend), when vllm is installed;
- peak GPU memory per training step, padding-free rows against TRL's two rows (check_memory).

It ends with a table; the exit status is 1 when a check failed. Without a GPU it prints
"no GPU: skipped" and exits 0. ``run_checks(device="cpu", dtype=torch.float32)`` runs every check that
does not need CUDA on the CPU (the tests do), so only the CUDA-only parts are new on a GPU machine.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import math
import random
import tempfile
import time
import traceback
from dataclasses import dataclass

import torch
from datasets import Dataset
from transformers import TrainerCallback

# Model shapes: "small" for the GPU (about 20M parameters, a few seconds a step), "toy" for CPU tests.
SHAPES = {
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4),
    "toy": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}
# Prompt and completion lengths (characters = tokens) of the random data, per model shape.
LENGTHS = {"small": (384, 96), "toy": (48, 16)}
ARCHITECTURES = ("llama", "mistral")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# Packed vs two-row sequence log-probs: max |difference| over max |value|. bf16 keeps 8 mantissa bits
# (relative step 2^-8 = 3.9e-3); sums over ~100 tokens in two different layouts stay within ~1e-2.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-5}


@dataclass
class CheckResult:
    name: str
    status: str  # "ok", "FAIL", "skipped"
    detail: str = ""
    seconds: float = 0.0
    peak_mib: float | None = None


# ---------------------------------------------------------------- models and data


ALPHABET = list("0123456789+-*/=()., ?:\n") + [chr(c) for c in range(ord("a"), ord("z") + 1)]


def build_tokenizer():
    """A character tokenizer over ``ALPHABET`` (the random data's and the prompts' characters), built locally."""
    from ..model_utils import char_tokenizer

    return char_tokenizer(ALPHABET)


def build_model(arch: str, tokenizer, *, shape: str = "small", dtype=torch.bfloat16, attn: str = "sdpa", seed=0):
    """A random-weight LlamaForCausalLM or MistralForCausalLM (transformers' own classes)."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                 "mistral": (MistralConfig, MistralForCausalLM)}[arch]
    config = config_class(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          max_position_embeddings=2048, **SHAPES[shape])
    if arch == "mistral":
        config.sliding_window = 4096  # Mistral-7B-v0.1's window; longer than every row here
    torch.manual_seed(seed)
    model = model_class(config).to(dtype)
    model.set_attn_implementation(attn)  # transformers checks that the kernel is there (flash-attn, ...)
    return model


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 +=") for _ in range(n))


def paired_rows(n: int, prompt_len: int, completion_len: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": _text(rng, prompt_len), "chosen": _text(rng, completion_len),
             "rejected": _text(rng, rng.randint(completion_len // 2, completion_len))} for _ in range(n)]


def unpaired_rows(n: int, prompt_len: int, completion_len: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": _text(rng, prompt_len), "completion": _text(rng, completion_len), "label": i % 2 == 0}
            for i in range(n)]


# ---------------------------------------------------------------- training steps


class PeakMemory(TrainerCallback):
    """Peak GPU memory of each training step (reset at its start)."""

    def __init__(self):
        self.peaks: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            self.peaks.append(torch.cuda.max_memory_allocated() / 2**20)


def aot_trainer(arch: str, variant: str, *, device: str, dtype, shape: str = "small", attn: str = "sdpa",
                optim: str = "adamw_torch", share_prompt: bool = True, model=None, steps: int = 2,
                batch_size: int = 8, out_dir: str | None = None, padding_free: bool = True):
    """An AOT trainer (ours) on random data: LoRA + gradient checkpointing, bf16 on GPU."""
    from peft import LoraConfig

    from ..configs import AOTConfig, AOTUnpairedConfig
    from ..trainers import AOTTrainer, UnpairedAOTTrainer

    tokenizer = build_tokenizer()
    model = model if model is not None else build_model(arch, tokenizer, shape=shape, dtype=dtype, attn=attn)
    prompt_len, completion_len = LENGTHS[shape]
    common = dict(output_dir=out_dir or tempfile.mkdtemp(prefix="gpu-check-"), max_steps=steps,
                  per_device_train_batch_size=batch_size, learning_rate=1e-3, beta=0.1, optim=optim,
                  bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device == "cpu",
                  gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
                  report_to="none", save_strategy="no", logging_steps=1, max_length=prompt_len + completion_len + 8,
                  dataloader_num_workers=0, precompute_ref_log_probs=False, seed=0, disable_tqdm=True)
    n = batch_size * steps
    if variant == "aot_unpaired_kto":  # truly unpaired rows: the KTO-based trainer
        args, trainer_class = AOTUnpairedConfig(**common), UnpairedAOTTrainer
        data = Dataset.from_list(unpaired_rows(n, prompt_len, completion_len))
    else:
        args = AOTConfig(loss_type=variant, aot_share_prompt=share_prompt, aot_padding_free=padding_free, **common)
        trainer_class, data = AOTTrainer, Dataset.from_list(paired_rows(n, prompt_len, completion_len))
    peft = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    memory = PeakMemory()
    trainer.add_callback(memory)
    return trainer, memory


def _lora_state(model) -> dict:
    return {k: v.detach().float().clone() for k, v in model.named_parameters() if "lora_" in k}


def check_aot_steps(arch: str, variant: str, *, device: str, dtype, shape: str = "small", optim: str = "adamw_torch",
                    model=None) -> str:
    """Train ``steps`` steps; the losses are finite, the LoRA weights move, the base weights do not."""
    trainer, memory = aot_trainer(arch, variant, device=device, dtype=dtype, shape=shape, optim=optim, model=model)
    before = _lora_state(trainer.model)
    trainer.train()
    after = _lora_state(trainer.model)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if len(losses) != trainer.args.max_steps or not all(torch.isfinite(torch.tensor(losses))):
        raise AssertionError(f"losses {losses}")
    if not before or not any(not torch.equal(before[k], after[k]) for k in before):
        raise AssertionError("the LoRA weights did not change")
    if trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.requires_grad:
        raise AssertionError("the base weights are trainable (LoRA should freeze them)")
    packing = getattr(trainer, "_packing", {}).get("off", "n/a (unpaired rows)") or "one row per pair"
    mem = f", peak {max(memory.peaks):.0f} MiB/step" if memory.peaks else ""
    return f"losses {', '.join(f'{x:.3f}' for x in losses)}; {packing}{mem}"


def packed_vs_two_rows(arch: str, *, device: str, dtype, shape: str = "small", attn: str = "sdpa") -> float:
    """Max |packed - two-row| sequence log-prob over max |two-row|, on one batch through our trainer."""
    trainer, _ = aot_trainer(arch, "aot_paired", device=device, dtype=dtype, shape=shape, attn=attn, steps=1)
    if trainer._packing["off"]:
        raise AssertionError(f"packing is off: {trainer._packing['off']}")
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model
    model.eval()
    with torch.no_grad(), trainer.accelerator.autocast():
        packed = trainer._pack(batch)
        if packed is None:
            raise AssertionError("the batch was not packed")
        chosen, rejected, _, _ = trainer._pair_logps(model, packed)
        mask = batch["completion_mask"]
        labels = batch["input_ids"].masked_fill(mask == 0, -100)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True)
        two = (out.log_probs[:, -(mask.size(1) - 1):] * mask[:, 1:]).sum(1)  # as the trainer slices them
    two_chosen, two_rejected = two.float().chunk(2)
    packed_logps, two_logps = torch.cat([chosen, rejected]).float(), torch.cat([two_chosen, two_rejected])
    return float((packed_logps - two_logps).abs().max() / two_logps.abs().max())


def check_packing(arch: str, *, device: str, dtype, shape: str = "small") -> str:
    err = packed_vs_two_rows(arch, device=device, dtype=dtype, shape=shape)
    if not err <= TOLERANCE[dtype]:
        raise AssertionError(f"packed vs two-row log-probs: relative error {err:.2e} > {TOLERANCE[dtype]:g}")
    return f"relative error {err:.1e} (tolerance {TOLERANCE[dtype]:g}, SDPA)"


def check_flash_fallback(*, device: str, dtype, shape: str = "small") -> str:
    """flash_attention_2 cannot take one row per pair's mask (aot_padding_free off): TRL's two rows, one warning,
    and the step trains. (With aot_padding_free it runs one varlen row: check_padding_free.)"""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("aot_handbook.trainers")
    log.addHandler(handler)
    try:
        trainer, _ = aot_trainer("llama", "aot_paired", device=device, dtype=dtype, shape=shape,
                                 attn="flash_attention_2", steps=1, padding_free=False)
        trainer.train()
    finally:
        log.removeHandler(handler)
    warned = [r.getMessage() for r in records if "two rows per pair" in r.getMessage()]
    if not warned or "flash_attention_2" not in warned[0]:
        raise AssertionError(f"no fallback warning naming flash_attention_2 (got {[r.getMessage() for r in records]})")
    loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return f"warned: {warned[0][:90]}...; loss {loss[0]:.3f}"


def check_padding_free(*, device: str, dtype, shape: str = "small") -> str:
    """aot_padding_free through the attentions that cannot run on a CPU: flash_attention_2 (one varlen row, no
    mask: transformers cuts it into sequences where the position ids restart) when flash-attn is installed,
    flex_attention (rows with a BlockMask; torch has no flex backward on CPU) and SDPA (one row of segments,
    ``segment_sdpa``, on the GPU's kernels: the CPU tests cover its math). Per attention, through our trainer
    (LoRA, gradient checkpointing, TRL's fused head): the packed layout is the one expected, its sequence
    log-probs and its LoRA gradients equal TRL's two rows (same kernel, the padded path) within ``TOLERANCE``,
    and a training step runs with a finite loss."""
    attentions = ["flash_attention_2"] if importlib.util.find_spec("flash_attn") else []
    details = [] if attentions else ["flash-attn not installed: varlen not checked"]
    for attn in [*attentions, "flex_attention", "sdpa"]:
        trainer, _ = aot_trainer("llama", "aot_paired", device=device, dtype=dtype, shape=shape, attn=attn, steps=1)
        layout = trainer._packing["layout"]
        kind = {"flash_attention_2": "varlen", "sdpa": "segments"}.get(attn, "rows")
        if layout is None or kind != ("varlen" if layout.varlen else "segments" if layout.segments else "rows"):
            raise AssertionError(f"{attn}: layout {layout} ({trainer._packing['off']})")
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        packed, model = trainer._pack(batch), trainer.model
        model.train()

        def sums_and_grads(packed, trainer=trainer, model=model, batch=batch):
            model.zero_grad()
            with trainer.accelerator.autocast():
                pair = trainer._pair_logps(model, packed) if packed else trainer._two_row_logps(model, batch)
            sums = torch.cat(pair[:2]).float()
            (sums * torch.linspace(-1, 1, sums.numel(), device=sums.device)).sum().backward()
            grads = [p.grad.float().flatten() for p in model.parameters() if p.grad is not None]
            return sums.detach(), torch.cat(grads)

        (ours, ours_grad), (two, two_grad) = sums_and_grads(packed), sums_and_grads(None)
        err = float((ours - two).abs().max() / two.abs().max())
        grad_err = float((ours_grad - two_grad).norm() / two_grad.norm())
        if not (err <= TOLERANCE[dtype] and grad_err <= 5 * TOLERANCE[dtype]):
            raise AssertionError(f"{attn}: log-probs {err:.2e}, LoRA gradients {grad_err:.2e} (relative) vs two rows")
        trainer.train()
        loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if not (loss and math.isfinite(loss[0])):
            raise AssertionError(f"{attn}: loss {loss}")
        stats = packed.stats()
        details.append(f"{attn}: {stats['rows']} row(s) for {packed.n_sources // 2} pairs, padding "
                       f"{stats['padding']:.1%}, log-probs {err:.1e}, grads {grad_err:.1e}, loss {loss[0]:.3f}")
    return "; ".join(details)


def check_memory(*, device: str, dtype, shape: str = "small") -> tuple[str, float | None]:
    """Peak memory per AOT paired step, the default packed layout (padding-free rows of several pairs, each
    prompt once) vs TRL's two rows per pair (same data, same model)."""
    peaks = {}
    for share in (True, False):
        trainer, memory = aot_trainer("llama", "aot_paired", device=device, dtype=dtype, shape=shape,
                                      share_prompt=share, steps=3, batch_size=16)
        trainer.train()
        peaks[share] = max(memory.peaks) if memory.peaks else None
        del trainer
        gc.collect()  # the trainer holds reference cycles: free its model before the other run is measured
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if peaks[True] is None:
        return "3 steps each way ran (no CUDA: memory not measured)", None
    return (f"padding-free rows {peaks[True]:.0f} MiB, TRL's two rows {peaks[False]:.0f} MiB "
            f"({peaks[True] / peaks[False]:.2f}x); batch 16, prompt {LENGTHS[shape][0]} + completions "
            f"{LENGTHS[shape][1]} tokens"), peaks[True]


def check_qlora(*, dtype) -> str:
    """4-bit NF4 loading through our load_model (TRL's ModelConfig), LoRA on top, one AOT step."""
    from trl import ModelConfig

    from ..model_utils import load_model

    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory() as folder:
        build_model("llama", tokenizer, dtype=dtype).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        args = ModelConfig(model_name_or_path=folder, dtype="bfloat16", load_in_4bit=True,
                           bnb_4bit_quant_type="nf4", use_bnb_nested_quant=True, attn_implementation="sdpa")
        model = load_model(args)
        kind = type(model.model.layers[0].self_attn.q_proj).__name__
        if kind != "Linear4bit":
            raise AssertionError(f"q_proj is {kind}, not bitsandbytes' Linear4bit")
        detail = check_aot_steps("llama", "aot_paired", device="cuda", dtype=dtype, model=model)
    return f"{kind}; {detail}"


def check_vllm() -> str:
    """Greedy generation with vLLM from a saved random Llama, as ``evaluation.generation``'s vLLM backend calls
    it (LLM + SamplingParams), with a memory share left for this process; its greedy tokens vs transformers'."""
    from vllm import LLM, SamplingParams

    from ..generation import build_prompt_ids, hf_generate

    tokenizer = build_tokenizer()
    prompts = ["12+34=", "56+78=", "90+11=", "hello world "]
    with tempfile.TemporaryDirectory() as folder:
        model = build_model("llama", tokenizer, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        expected = hf_generate(model.cuda().eval(), tokenizer, build_prompt_ids(tokenizer, prompts), max_new_tokens=8)
        del model
        torch.cuda.empty_cache()
        llm = LLM(model=folder, tokenizer=folder, dtype="bfloat16", gpu_memory_utilization=0.3, enforce_eager=True,
                  max_model_len=256)
        outs = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0))
    texts = [o.outputs[0].text for o in outs]
    if len(texts) != len(prompts) or not all(len(o.outputs[0].token_ids) for o in outs):
        raise AssertionError(f"vLLM outputs {texts}")
    same = sum(a == b for a, b in zip(texts, expected))  # bf16 kernels differ: near-ties may break differently
    return f"{len(texts)} greedy completions, {same}/{len(texts)} equal to transformers' (e.g. {texts[0]!r})"


# ---------------------------------------------------------------- the run


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _run(name: str, fn, results: list, needs: str | None = None) -> None:
    if needs:
        results.append(CheckResult(name, "skipped", needs))
        print(f"[gpu-check] {name}: skipped ({needs})", flush=True)
        return
    print(f"[gpu-check] {name} ...", flush=True)
    start = time.time()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        detail = fn()
        peak = None
        if isinstance(detail, tuple):
            detail, peak = detail
        status = "ok"
    except Exception as err:  # a failed check is reported in the table; the others still run
        traceback.print_exc()
        status, detail, peak = "FAIL", f"{type(err).__name__}: {err}", None
    if peak is None and torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    results.append(CheckResult(name, status, detail, time.time() - start, peak))
    print(f"[gpu-check] {name}: {status} ({time.time() - start:.1f} s) {detail}", flush=True)
    gc.collect()  # this check's trainer and model, before the next one is measured
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_checks(*, device: str = "cuda", dtype=torch.bfloat16, shape: str = "small", vllm: bool = True) -> list:
    """Every check, in order; the CUDA-only ones are skipped (with the reason) on CPU."""
    results: list[CheckResult] = []
    cuda = device != "cpu"
    dt = str(dtype).removeprefix("torch.")
    for arch in ARCHITECTURES:
        for variant in ("aot_paired", "aot_unpaired", "aot_unpaired_kto"):
            label = variant if variant != "aot_unpaired_kto" else "aot_unpaired (unpaired rows)"
            _run(f"{arch} {label} {dt} LoRA+GC", lambda a=arch, v=variant: check_aot_steps(
                a, v, device=device, dtype=dtype, shape=shape), results)
        _run(f"{arch} one row per pair = two rows (SDPA)",
             lambda a=arch: check_packing(a, device=device, dtype=dtype, shape=shape), results)
    no_flash = None if cuda and _installed("flash_attn") else "flash-attn not installed" if cuda else "needs CUDA"
    _run("flash-attention fallback + warning", lambda: check_flash_fallback(device=device, dtype=dtype, shape=shape),
         results, needs=no_flash)
    no_bnb = None if cuda and _installed("bitsandbytes") else "bitsandbytes not installed" if cuda else "needs CUDA"
    _run("paged_adamw_32bit", lambda: check_aot_steps("llama", "aot_paired", device=device, dtype=dtype, shape=shape,
                                                       optim="paged_adamw_32bit"), results, needs=no_bnb)
    _run("4-bit QLoRA load + step", lambda: check_qlora(dtype=dtype), results, needs=no_bnb)
    _run("padding-free: flash varlen, flex, SDPA segments",
         lambda: check_padding_free(device=device, dtype=dtype, shape=shape), results,
         needs=None if cuda else "needs CUDA")
    _run("peak memory per step", lambda: check_memory(device=device, dtype=dtype, shape=shape), results)
    no_vllm = None if cuda and vllm and _installed("vllm") else "vllm not installed" if cuda and vllm else \
        "not asked" if cuda else "needs CUDA"
    _run("vLLM generation", check_vllm, results, needs=no_vllm)  # last: vLLM takes most of the GPU memory
    return results


def render_table(results: list[CheckResult]) -> str:
    rows = [("check", "status", "time", "peak GPU MiB", "detail")]
    for r in results:
        rows.append((r.name, r.status, f"{r.seconds:.1f} s" if r.status != "skipped" else "-",
                     f"{r.peak_mib:.0f}" if r.peak_mib is not None else "-", r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + f" | {row[4]} |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
    return "\n".join(lines)


def gpu_check(*, vllm: bool = True) -> int:
    """``aot-gpu-check``: every check on the GPU, then the table; 1 when a check failed, 0 otherwise (and without
    a GPU, where it prints "no GPU: skipped")."""
    if not torch.cuda.is_available():
        print("no GPU: skipped")
        return 0
    start = time.time()
    print(f"[gpu-check] {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    results = run_checks(device="cuda", dtype=torch.bfloat16, vllm=vllm)
    print("\n" + render_table(results))
    failed = [r.name for r in results if r.status == "FAIL"]
    print(f"\n{len(results) - len(failed)} of {len(results)} checks ok or skipped, {len(failed)} failed "
          f"({time.time() - start:.0f} s)" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
