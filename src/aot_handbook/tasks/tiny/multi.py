"""A tiny task with two independent, checkable attributes (issue 19): the multi-reward testbed.

Built on the tiny task (:mod:`.arithmetic`: same prompts ``47+38=``, tokenizer and ~1M-parameter base model).
An answer is judged on two attributes, each by a program:

- ``sum``: the number is the right sum, zero-padded to 3 digits (``085``); the planted flaw is the
  dropped carry (``075``), as in the tiny task;
- ``format``: the answer is the number alone; the planted flaw is a trailing period (``085.``).

The SFT data carries both flaws independently (carry dropped on 60% of carry problems, period on
60% of all answers), so the SFT model is flawed on both. The unpaired preference data draws each
attribute right or wrong independently with probability 1/2 and stores one 0/1 score per attribute
(``sum_ok``, ``format_ok``). The usual aggregated label (the HelpSteer recipe's: the sum of the
scores above its median) is positive only when both are right, so it scores "right sum, period"
and "dropped carry, no period" the same: one aggregated label trades one flaw against the other,
while multi-attribute AOT sees each attribute's own split.

Registered as the task ``tiny_multi`` (recipe key ``tiny_multi_assets``: the recipes under ``recipes/tiny/multi/``
build its assets on first use; evaluation kind ``tiny_multi_task``: ``recipes/eval/tiny_multi.eval.yaml``, the
per-attribute held-out accuracy and the per-prompt attribute vectors). ``experiments/tiny_multi.py`` runs the
experiment of docs/MULTI_REWARD.md on it.
"""

from __future__ import annotations

import random
from pathlib import Path

from ...io import read_jsonl, write_jsonl
from .. import Task, register_task
from .arithmetic import answer, ensure_tiny_assets, generate, has_carry, split_prompts, wrong_answer

TASK_VERSION = 1  # bump when the task changes, so stale caches are not reused
FLAW_RATES = {"sum": 0.6, "format": 0.6}  # SFT data: carry dropped (carry problems only), period appended
ATTRIBUTES = ("sum", "format")
SPLIT_SIZES = {"eval_prompts": 600, "unpaired_test": 256}
N_UNPAIRED_TRAIN = 4000
PERIOD = "."


def judge_attributes(prompt: str, completion: str) -> dict[str, bool]:
    """Each attribute of one answer, judged by program (surrounding whitespace and EOS ignored)."""
    text = completion.replace("<eos>", "").strip()
    return {"sum": text.removesuffix(PERIOD) == answer(prompt), "format": text.isdigit() and len(text) == 3}


def _answer(prompt: str, *, sum_ok: bool, format_ok: bool) -> str:
    number = answer(prompt) if sum_ok else wrong_answer(prompt)
    return number if format_ok else number + PERIOD


def build_task(seed: int = 0) -> dict[str, list[dict]]:
    """All splits as lists of rows; held-out prompts never appear in a train split."""
    rng = random.Random(seed)
    held, train = split_prompts(rng, SPLIT_SIZES)

    def sft_row(p):
        dropped = has_carry(p) and rng.random() < FLAW_RATES["sum"]
        period = rng.random() < FLAW_RATES["format"]
        return {"prompt": p, "completion": _answer(p, sum_ok=not dropped, format_ok=not period)}

    def unpaired_row(p):
        sum_ok, format_ok = rng.random() < 0.5, rng.random() < 0.5
        row = {"prompt": p, "completion": _answer(p, sum_ok=sum_ok, format_ok=format_ok)}
        judged = judge_attributes(p, row["completion"])
        assert judged == {"sum": sum_ok, "format": format_ok}, (p, row)  # the judges read what was planted
        return {**row, "sum_ok": int(sum_ok), "format_ok": int(format_ok),
                "category": "carry" if has_carry(p) else "no_carry"}

    return {
        "sft_train": [sft_row(p) for p in train],
        "unpaired_train": [unpaired_row(p) for p in rng.sample(train, N_UNPAIRED_TRAIN)],
        "unpaired_test": [unpaired_row(p) for p in held["unpaired_test"]],
        "eval_prompts": [{"prompt": p, "answer": answer(p), "category": "carry" if has_carry(p) else "no_carry"}
                         for p in held["eval_prompts"]],
    }


def ensure_assets(root: str | Path = ".cache/tiny_multi", *, tiny_root: str | Path | None = None,
                  seed: int = 0) -> dict[str, Path]:
    """The tiny base model (:mod:`.arithmetic`, under ``tiny_root``: default ``tiny`` beside ``root``, so
    ``.cache/tiny``) and this task's splits under ``root``; idempotent."""
    tiny_root = Path(root).parent / "tiny" if tiny_root is None else tiny_root
    paths = {"base_model": ensure_tiny_assets(tiny_root, seed=seed)["base_model"]}
    home = Path(root) / f"v{TASK_VERSION}-seed{seed}" / "data"
    home.mkdir(parents=True, exist_ok=True)
    splits = None
    for name in ("sft_train", "unpaired_train", "unpaired_test", "eval_prompts"):
        paths[name] = home / f"{name}.jsonl"
        if not paths[name].exists():
            splits = splits or build_task(seed)
            write_jsonl(paths[name], splits[name], sort_keys=True)
    return paths


def attribute_scores(model, tokenizer, rows: list[dict]) -> list[dict[str, bool]]:
    """Per held-out prompt: each attribute of the greedy answer (the per-sample vectors the
    multivariate dominance test ranks)."""
    prompts = [r["prompt"] for r in rows]
    return [judge_attributes(p, c) for p, c in zip(prompts, generate(model, tokenizer, prompts))]


def summarize_scores(scores: list[dict[str, bool]], rows: list[dict]) -> dict[str, float]:
    """Accuracy per attribute, both at once, and ``sum`` on carry and on no-carry problems."""
    n = len(scores)
    out = {a: sum(s[a] for s in scores) / n for a in ATTRIBUTES}
    out["both"] = sum(all(s.values()) for s in scores) / n
    for name, want in (("sum_carry", True), ("sum_no_carry", False)):
        sub = [s["sum"] for s, r in zip(scores, rows) if has_carry(r["prompt"]) == want]
        out[name] = sum(sub) / len(sub) if sub else float("nan")
    out["n"] = n
    return out


class TinyMultiTask(Task):
    """The tiny two-attribute task through the task interface (:mod:`aot_handbook.tasks`): recipes with
    ``tiny_multi_assets`` build it; evaluation recipes of ``kind: tiny_multi_task`` judge each held-out answer
    on both attributes (per-sample scores: the vectors the multivariate dominance test ranks)."""

    name, assets_key, eval_kind = "tiny_multi", "tiny_multi_assets", "tiny_multi_task"
    EVAL_KEYS = {"limit", "batch_size", "tiny_multi_assets"}

    def ensure_assets(self, root):
        return ensure_assets(root)

    def asset_folders(self, recipe):
        root = self.assets_root(recipe)
        return [Path(root), Path(root).parent / "tiny"] if root else []  # the tiny base model, beside it

    def heldout_pairs(self, recipe):
        """Per held-out prompt: the answer right on both attributes over one flawed on a single attribute (the
        sum on even rows, the format on odd ones), for the Fig. 1 statistics of the run summary."""
        rows = read_jsonl(ensure_assets(self.assets_root(recipe))["eval_prompts"])
        return [{"prompt": r["prompt"], "chosen": _answer(r["prompt"], sum_ok=True, format_ok=True),
                 "rejected": _answer(r["prompt"], sum_ok=i % 2 == 1, format_ok=i % 2 == 0)}
                for i, r in enumerate(rows)]

    def summarize(self, model, tokenizer, reference, recipe):
        import torch

        rows = read_jsonl(ensure_assets(self.assets_root(recipe))["eval_prompts"])
        out = {"aligned": summarize_scores(attribute_scores(model, tokenizer, rows), rows)}
        if isinstance(reference, torch.nn.Module):
            out["reference"] = summarize_scores(attribute_scores(reference, tokenizer, rows), rows)
        return out

    def evaluate(self, run, recipe, work):
        """Greedy answers on the held-out prompts, each judged on every attribute: accuracy per attribute and
        both at once (scores), and per prompt the attribute vector (``samples``)."""
        from ...generation import load_model_and_tokenizer

        cfg = recipe.get(self.eval_kind) or {}
        if set(cfg) - self.EVAL_KEYS:
            raise ValueError(f"{recipe['_path']}: unknown key(s) in {self.eval_kind!r}: "
                             f"{sorted(set(cfg) - self.EVAL_KEYS)} (known: {sorted(self.EVAL_KEYS)})")
        root = cfg.get("tiny_multi_assets", run.recipe.get(self.assets_key) or ".cache/tiny_multi")
        rows = read_jsonl(ensure_assets(root)["eval_prompts"])[: cfg.get("limit")]
        model, tokenizer = load_model_and_tokenizer(run.model, run.adapter, dtype="float32")
        judged = attribute_scores(model, tokenizer, rows)
        summary = summarize_scores(judged, rows)
        scores = {f"tiny_multi:{a}": 100.0 * summary[a] for a in (*ATTRIBUTES, "both")}
        samples = [{"id": r["prompt"], **{f"tiny_multi:{a}": 100.0 * j[a] for a in ATTRIBUTES},
                    "tiny_multi:both": 100.0 * all(j.values())} for r, j in zip(rows, judged)]
        return scores, {"n": len(rows), "samples": samples}, \
            {"label": "program", "description": "aot_handbook.tasks.tiny.multi.judge_attributes (sum, format)"}


register_task(TinyMultiTask())
