"""Tiny offline assets: a char tokenizer, a ~1M-parameter Llama and a checkable task.

The task is 2-digit addition (``47+38=`` -> ``085``) with a planted systematic flaw: in
the SFT data a carry problem gets the carry-dropped answer (``075``) with probability
``FLAW_RATE``. The SFT model learns the flaw, so preference data (correct vs flawed) has
something to fix, and a program can judge every answer.

Answers are zero-padded to 3 digits, so chosen and rejected answers differ in digits
only, never in length (with ``85`` / ``101``, preference training learned to stop early).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from .io import read_jsonl, write_jsonl

TASK_VERSION = 2  # bump when the task or the assets change, so stale caches are not reused
FLAW_RATE = 0.6
SPLIT_SIZES = {"eval_prompts": 600, "val_prompts": 300, "paired_test": 256, "unpaired_test": 256}
N_PAIRED_TRAIN = 4000
N_UNPAIRED_TRAIN = 4000

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = list("0123456789+-*/=()., ?:\n") + [chr(c) for c in range(ord("a"), ord("z") + 1)]
MODEL_SHAPE = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=512, max_position_embeddings=64, tie_word_embeddings=True)


# ---------------------------------------------------------------- the task


def _operands(prompt: str) -> tuple[int, int]:
    a, b = prompt.strip().rstrip("=").split("+")
    return int(a), int(b)


def has_carry(prompt: str) -> bool:
    a, b = _operands(prompt)
    return a % 10 + b % 10 >= 10


def _fmt(n: int) -> str:
    return f"{n:03d}"


def answer(prompt: str) -> str:
    a, b = _operands(prompt)
    return _fmt(a + b)


def judge(prompt: str, completion: str) -> bool:
    """True iff the completion is exactly the sum (surrounding whitespace and EOS ignored)."""
    text = completion.replace(SPECIALS[2], "").strip()
    return text == answer(prompt)


def flawed(prompt: str) -> str:
    """The planted flaw: the carry from the units into the tens is dropped."""
    a, b = _operands(prompt)
    return _fmt(a + b - 10 if has_carry(prompt) else a + b)


def spurious_carry(prompt: str) -> str:
    """The over-correction a flaw fix risks: a carry added where there is none."""
    a, b = _operands(prompt)
    return _fmt(a + b + 10)


def wrong_answer(prompt: str) -> str:
    """The subtly wrong answer each prompt is paired with: the flaw on carry problems,
    a spurious carry otherwise. The latter are anchor pairs: without them preference
    training fixed carries by moving probability off answers that were already right."""
    return flawed(prompt) if has_carry(prompt) else spurious_carry(prompt)


def score(prompt: str, completion: str) -> float:
    """Numeric quality (closeness to the truth); the unpaired label is this at its median."""
    try:
        return float(-abs(int(completion.strip()) - int(answer(prompt))))
    except ValueError:
        return -100.0


def build_task(seed: int = 0, flaw_rate: float = FLAW_RATE) -> dict[str, list[dict]]:
    """All splits as lists of rows. Held-out prompts never appear in a train split."""
    rng = random.Random(seed)
    prompts = [f"{a}+{b}=" for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(prompts)
    held, start = {}, 0
    for name, n in SPLIT_SIZES.items():
        held[name], start = prompts[start:start + n], start + n
    train = prompts[start:]

    def sft_row(p):
        wrong = has_carry(p) and rng.random() < flaw_rate
        return {"prompt": p, "completion": flawed(p) if wrong else answer(p)}

    def pair(p):
        return {"prompt": p, "chosen": answer(p), "rejected": wrong_answer(p)}

    def unpaired(ps):
        # Exactly half correct, so the median lies strictly between the classes and
        # median binarization splits them cleanly, as for HelpSteer in the paper.
        rows = [{"prompt": p, "completion": answer(p) if i % 2 == 0 else wrong_answer(p)}
                for i, p in enumerate(ps)]
        for r in rows:
            r["score"] = score(r["prompt"], r["completion"])
        median = statistics.median(r["score"] for r in rows)
        for r in rows:
            r["label"] = r["score"] > median
        return rows

    def category(rows):
        return [{**r, "category": "carry" if has_carry(r["prompt"]) else "no_carry"} for r in rows]

    return {
        "sft_train": [sft_row(p) for p in train],
        "paired_train": category([pair(p) for p in rng.sample(train, N_PAIRED_TRAIN)]),
        "paired_test": category([pair(p) for p in held["paired_test"]]),
        "unpaired_train": category(unpaired(rng.sample(train, N_UNPAIRED_TRAIN))),
        "unpaired_test": category(unpaired(held["unpaired_test"])),
        "eval_prompts": category([{"prompt": p, "answer": answer(p)} for p in held["eval_prompts"]]),
        "val_prompts": category([{"prompt": p, "answer": answer(p)} for p in held["val_prompts"]]),
    }


# ---------------------------------------------------------------- tokenizer and model


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    # BPE with no merges and no pre-tokenizer is a pure character model; Fuse joins the
    # characters back without the spaces the default decoder would put between tokens.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    # Left padding is what batched generation needs; TRL's collators pad on their own.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left")


def build_base_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **MODEL_SHAPE)
    with torch.random.fork_rng(devices=[]):  # deterministic init without disturbing the caller's RNG
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


# ---------------------------------------------------------------- atomic, idempotent build


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError:  # another process published first: keep theirs
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def ensure_tiny_assets(root: str | Path = ".cache/tiny", *, seed: int = 0) -> dict[str, Path]:
    """Build whatever of the tiny assets is missing under ``root`` and return their paths.

    ``base_model`` is one folder holding the untrained model and its tokenizer (so it is
    also ``tokenizer``); every split is a jsonl file. Each piece is written to a temporary
    name and renamed into place, so an interrupted build never looks complete.
    """
    home = Path(root) / f"v{TASK_VERSION}-seed{seed}"
    (home / "data").mkdir(parents=True, exist_ok=True)
    model_dir = home / "base_model"
    if not model_dir.exists():
        tmp = Path(tempfile.mkdtemp(dir=home, prefix=".base_model."))
        try:
            tokenizer = build_tokenizer()
            tokenizer.save_pretrained(tmp)
            build_base_model(tokenizer, seed).save_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _publish(tmp, model_dir)
    paths = {"base_model": model_dir, "tokenizer": model_dir}
    splits = None
    for name in ("sft_train", "paired_train", "paired_test", "unpaired_train", "unpaired_test",
                 "eval_prompts", "val_prompts"):
        paths[name] = home / "data" / f"{name}.jsonl"
        if not paths[name].exists():
            splits = splits or build_task(seed)
            write_jsonl(paths[name], splits[name], sort_keys=True)
    return paths


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, batch_size: int = 256, max_new_tokens: int = 5,
             do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Completions (special tokens stripped), decoded from left-padded batches."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True).to(model.device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 temperature=temperature if do_sample else None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    return out


def task_accuracy(model, tokenizer, rows: list[dict], *, batch_size: int = 256,
                  max_new_tokens: int = 5) -> dict[str, float]:
    """Greedy accuracy judged by :func:`judge`, overall and per category (carry / no_carry)."""
    prompts = [r["prompt"] for r in rows]
    ok = [judge(p, c) for p, c in zip(prompts, generate(model, tokenizer, prompts, batch_size=batch_size,
                                                          max_new_tokens=max_new_tokens))]
    result = {"accuracy": sum(ok) / len(ok), "n": len(ok)}
    for cat, want in (("carry", True), ("no_carry", False)):
        sub = [o for p, o in zip(prompts, ok) if has_carry(p) == want]
        result[cat] = sum(sub) / len(sub) if sub else float("nan")
    return result


def on_policy_pairs(model, tokenizer, rows: list[dict], *, k: int = 4, seed: int = 0) -> list[dict]:
    """Pairs whose rejected answer is the model's own: the first wrong one among ``k``
    samples (temperature 1), else the offline one. Pure AOT from the SFT model was stable
    across seeds with these and not with the offline rejected answers."""
    prompts, wrong = [r["prompt"] for r in rows], [None] * len(rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(k):
            todo = [i for i, w in enumerate(wrong) if w is None]
            samples = generate(model, tokenizer, [prompts[i] for i in todo], do_sample=True) if todo else []
            for i, text in zip(todo, samples):
                wrong[i] = None if judge(prompts[i], text) else text.strip()
    return [{**r, "rejected": w if w is not None else r["rejected"]} for r, w in zip(rows, wrong)]


def main(argv=None):
    """``python -m aot_handbook.tiny RUN [--split val_prompts]``: greedy task accuracy of a run folder (full
    weights or a LoRA adapter) on one held-out split; choose settings on ``val_prompts``, report ``eval_prompts``."""
    import argparse

    from .evaluation.common import RunInfo
    from .evaluation.generation import load_model_and_tokenizer

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--split", default="val_prompts", choices=["val_prompts", "eval_prompts"])
    p.add_argument("--assets", default=".cache/tiny")
    args = p.parse_args(argv)
    info = RunInfo.from_path(args.run)
    model, tokenizer = load_model_and_tokenizer(info.model, info.adapter, dtype="float32")
    result = task_accuracy(model, tokenizer, read_jsonl(ensure_tiny_assets(args.assets)[args.split]))
    print(json.dumps({"run": args.run, "split": args.split, **result}))


if __name__ == "__main__":
    main()
