"""Tiny offline assets: a char tokenizer, a ~1M-parameter Llama and a checkable task.

The task is 2-digit addition (``47+38=`` -> ``085``) with a planted systematic flaw: in
the SFT data a carry problem gets the carry-dropped answer (``075``) with probability
``FLAW_RATE``. The SFT model learns the flaw, so preference data (correct vs flawed) has
something to fix, and a program can judge every answer.

Answers are zero-padded to 3 digits, so chosen and rejected answers differ in digits
only, never in length (with ``85`` / ``101``, preference training learned to stop early).

Everything else reaches this module only through the task interface (:mod:`aot_handbook.tasks`): :class:`TinyTask`
is registered as ``tiny`` (recipe key ``tiny_assets``, evaluation kind ``tiny_task``, scorer ``tiny_judge``, its
lm-eval tasks ``tiny_arith_mc`` / ``tiny_arith_gen``, the tables and figures of :mod:`.report`).
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

from ...io import read_jsonl, write_jsonl
from ...model_utils import CHAR_SPECIALS, char_tokenizer
from .. import Task, register_task

TASK_VERSION = 2  # bump when the task or the assets change, so stale caches are not reused
FLAW_RATE = 0.6
SPLIT_SIZES = {"eval_prompts": 600, "val_prompts": 300, "paired_test": 256, "unpaired_test": 256}
N_PAIRED_TRAIN = 4000
N_UNPAIRED_TRAIN = 4000

SPECIALS = CHAR_SPECIALS
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


def split_prompts(rng: random.Random, sizes: dict[str, int]) -> tuple[dict[str, list[str]], list[str]]:
    """Every ``a+b=`` prompt of two 2-digit numbers, shuffled by ``rng``: the held-out splits of ``sizes`` (name ->
    count) first, then the rest for training, so held-out prompts never appear in a train split."""
    prompts = [f"{a}+{b}=" for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(prompts)
    held, start = {}, 0
    for name, n in sizes.items():
        held[name], start = prompts[start:start + n], start + n
    return held, prompts[start:]


def build_task(seed: int = 0, flaw_rate: float = FLAW_RATE) -> dict[str, list[dict]]:
    """All splits as lists of rows. Held-out prompts never appear in a train split."""
    rng = random.Random(seed)
    held, train = split_prompts(rng, SPLIT_SIZES)

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
    """The task's character tokenizer (46 symbols: the specials, digits, operators, letters)."""
    return char_tokenizer(CHARS)


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


def generate(model, tokenizer, prompts: list[str], *, batch_size: int = 256, max_new_tokens: int = 5,
             do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Completions (special tokens stripped), in batches of ``batch_size`` prompts, through the package's one
    generation loop (:func:`aot_handbook.evaluation.generation.hf_generate`); the model's train mode is restored."""
    from ...generation import build_prompt_ids, hf_generate

    was_training = model.training
    model.eval()
    out = []
    try:
        ids = build_prompt_ids(tokenizer, prompts)
        for i in range(0, len(ids), batch_size):
            out += hf_generate(model, tokenizer, ids[i:i + batch_size], max_new_tokens=max_new_tokens,
                               do_sample=do_sample, temperature=temperature)
    finally:
        model.train(was_training)
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


# ---------------------------------------------------------------- the task interface (aot_handbook.tasks)


def program_scores(mine: list[dict], theirs: list[dict], *, judge=judge, has_carry=has_carry) -> tuple[dict, dict]:
    """Accuracy (overall, carry, no-carry) and the program-judged win rate of ``mine`` over ``theirs``."""
    ref = {r["instruction"]: r["output"] for r in theirs}
    wins = ties = losses = 0
    ok, carry, no_carry, samples = [], [], [], []
    for r in mine:
        a = judge(r["instruction"], r["output"])
        b = judge(r["instruction"], ref[r["instruction"]])
        wins, ties, losses = wins + (a and not b), ties + (a == b), losses + (b and not a)
        ok.append(a)
        (carry if has_carry(r["instruction"]) else no_carry).append(a)
        # per prompt, in the units of the scores (their mean over prompts is the score); the
        # program judge's preference over the SFT answer is the tiny task's per-prompt reward
        c = has_carry(r["instruction"])
        samples.append({"id": r["instruction"], "tiny:accuracy": 100.0 * a, "tiny:carry": 100.0 * a if c else None,
                        "tiny:no_carry": None if c else 100.0 * a,
                        "tiny:win_rate_vs_sft": 100.0 if a and not b else 50.0 if a == b else 0.0,
                        "length": len(r["output"])})
    n = len(mine)
    pct = lambda xs: 100.0 * sum(xs) / len(xs) if xs else None  # noqa: E731
    scores = {"tiny:accuracy": pct(ok), "tiny:carry": pct(carry), "tiny:no_carry": pct(no_carry),
              "tiny:win_rate_vs_sft": 100.0 * (wins + 0.5 * ties) / n}
    return scores, {"n": n, "wins": wins, "ties": ties, "losses": losses,
                    "reference_accuracy": pct([judge(r["instruction"], r["output"]) for r in theirs]),
                    "samples": samples}


# ---------------------------------------------------------------- lm-eval task files


def write_lm_eval_tasks(directory: str | Path, rows: list[dict]) -> Path:
    """lm-eval task files for the tiny arithmetic task, on local data (no hub):

    - ``tiny_arith_mc``: multiple choice (log-likelihood) between the sum, the carry-dropped
      answer and a spurious carry; metric acc;
    - ``tiny_arith_gen``: ``generate_until``, greedy, exact match with the sum.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = []
    for r in rows:
        p = r["prompt"]
        wrong = [flawed(p) if flawed(p) != answer(p) else f"{int(answer(p)) - 1:03d}", spurious_carry(p)]
        data.append({"prompt": p, "answer": answer(p), "choices": [answer(p), *wrong], "gold": 0})
    (d / "tiny_arith.jsonl").write_text("".join(json.dumps(x) + "\n" for x in data))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {(d / 'tiny_arith.jsonl').resolve()}\n"
              "test_split: test\ndoc_to_text: \"{{prompt}}\"\ntarget_delimiter: \"\"\n")
    (d / "tiny_arith_mc.yaml").write_text(
        "task: tiny_arith_mc\noutput_type: multiple_choice\n" + common
        + "doc_to_choice: \"{{choices}}\"\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (d / "tiny_arith_gen.yaml").write_text(
        "task: tiny_arith_gen\noutput_type: generate_until\n" + common
        + "doc_to_target: \"{{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\", \"=\"]\n  max_gen_toks: 5\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return d


# ---------------------------------------------------------------- the task interface (aot_handbook.tasks)


class TinyTask(Task):
    """The tiny task through the task interface (:mod:`aot_handbook.tasks`)."""

    name, assets_key, eval_kind, scorer = "tiny", "tiny_assets", "tiny_task", "tiny_judge"
    figure_names = ("fig2",)
    EVAL_KEYS = {"split", "limit", "max_new_tokens", "batch_size", "reference", "tiny_assets", "heldout_pairs"}

    @property
    def table_names(self):
        from . import report  # the report (dominance, tables) loads when a table is asked for, not with the task

        return ("tiny", *report.REPRODUCE_TABLES)

    def ensure_assets(self, root):
        return ensure_tiny_assets(root)

    def heldout_pairs(self, recipe):
        return read_jsonl(ensure_tiny_assets(self.assets_root(recipe))["paired_test"])

    def judge(self, prompt, completion):
        return float(judge(prompt, completion))

    def summarize(self, model, tokenizer, reference, recipe):
        rows = read_jsonl(ensure_tiny_assets(self.assets_root(recipe))["eval_prompts"])
        out = {"aligned": task_accuracy(model, tokenizer, rows)}
        if isinstance(reference, torch.nn.Module):
            out["reference"] = task_accuracy(reference, tokenizer, rows)
        return out

    def summary_lines(self, block):
        return [f"  task accuracy, {who:9s}: {a['accuracy']:.3f} (carry {a['carry']:.3f}, "
                f"no-carry {a['no_carry']:.3f}; greedy, judged by program, n={a['n']})"
                for who in ("reference", "aligned") if (a := block.get(who))]

    def evaluate(self, run, recipe, work):
        """Greedy accuracy judged by program, the win rate against the run it started from (per prompt: right
        where that one is wrong = win, equal = tie), and the Fig. 1 statistics on the held-out pairs."""
        from ...generation import generate_outputs
        from ...heldout import heldout_rows, heldout_scores
        from ...provenance import sha256
        from ...run_folder import RunInfo

        cfg = recipe.get(self.eval_kind) or {}
        if set(cfg) - self.EVAL_KEYS:
            raise ValueError(f"{recipe['_path']}: unknown key(s) in {self.eval_kind!r}: "
                             f"{sorted(set(cfg) - self.EVAL_KEYS)} (known: {sorted(self.EVAL_KEYS)})")
        assets = ensure_tiny_assets(cfg.get("tiny_assets", run.recipe.get("tiny_assets") or ".cache/tiny"))
        split = cfg.get("split", "eval_prompts")
        gen = dict(instructions=str(assets[split]), limit=cfg.get("limit"),
                   max_new_tokens=cfg.get("max_new_tokens", 5), batch_size=cfg.get("batch_size", 256),
                   backend="hf", strip=False)
        reference_run = cfg.get("reference") or run.parent_run()
        mine = json.loads(generate_outputs(run.model, work / "model_outputs.json", adapter=run.adapter,
                                           generator=run.name, **gen).read_text())
        ref_info = RunInfo.from_path(reference_run)
        # Cached per reference (and per training of it), so a changed or retrained reference is regenerated.
        ref_done = Path(reference_run) / "run.json"
        ref_tag = f"{ref_info.name}-{sha256(ref_done)[:12] if ref_done.is_file() else 'model'}"
        theirs = json.loads(generate_outputs(ref_info.model, work / f"reference_outputs--{ref_tag}.json",
                                             adapter=ref_info.adapter, generator=ref_info.name, **gen).read_text())
        scores, details = self.score_outputs(mine, theirs)
        details.update(reference=reference_run, split=str(assets[split]))
        if run.parent_run() != run.path:  # paper Fig. 1 statistics on held-out pairs, against the SFT run it started
            rows = heldout_rows(run.path, max_rows=cfg.get("heldout_pairs", 512))
            scores.update(heldout_scores(run.path, rows, prefix=f"{self.name}:"))
        return scores, details, self.judge_info

    judge_info = {"label": "program", "description": "aot_handbook.tasks.tiny.arithmetic.judge (exact sum)"}

    def score_outputs(self, mine: list[dict], theirs: list[dict]) -> tuple[dict, dict]:
        """The scores and per-prompt samples of greedy outputs against the reference's (the graded variant
        of the task, :mod:`.graded`, overrides this)."""
        return program_scores(mine, theirs)

    def lm_eval_include(self, cfg, work):
        if not cfg.pop("tiny_tasks", False):
            return None
        rows = read_jsonl(ensure_tiny_assets(cfg.pop("tiny_assets", ".cache/tiny"))["eval_prompts"])
        return str(write_lm_eval_tasks(work / "tasks", rows[: cfg.pop("tiny_rows", len(rows))]))

    def table(self, name):
        from . import report

        return report.table(name)

    def figure(self, name, results, path):
        if name != "fig2":
            return super().figure(name, results, path)
        from . import report

        return report.figure2(results, path)

    def report(self, regime, results, out_dir, **context):
        from . import report

        return report.reproduction_report(regime, results, out_dir, **context)


register_task(TinyTask())
