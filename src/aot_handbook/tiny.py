"""Tiny offline assets: a char tokenizer, a ~1M-parameter Llama and a checkable task.

The task is 2-digit addition (``47+38=`` -> ``085``) with a planted systematic flaw: in
the SFT data a carry problem gets the carry-dropped answer (``075``) with probability
``FLAW_RATE``. The SFT model learns the flaw, so preference data (correct vs flawed) has
something to fix, and a program can judge every answer.

Answers are zero-padded to 3 digits, so chosen and rejected answers differ in digits
only, never in length (with ``85`` / ``101``, preference training learned to stop early).

The run driver, the evaluation pipeline, the plots and the tables reach this module only through the task
interface (:mod:`aot_handbook.tasks`): :class:`TinyTask` is registered as ``tiny`` (recipe key ``tiny_assets``,
evaluation kind ``tiny_task``, tables ``tiny``, ``tiny1``, ``tiny7``, ``tiny10``, ``tiny-batch``, ``tiny-penalty``).
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
from .tasks import Task, register_task

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


def generate(model, tokenizer, prompts: list[str], *, batch_size: int = 256, max_new_tokens: int = 5,
             do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Completions (special tokens stripped), in batches of ``batch_size`` prompts, through the package's one
    generation loop (:func:`aot_handbook.evaluation.generation.hf_generate`); the model's train mode is restored."""
    from .evaluation.generation import build_prompt_ids, hf_generate

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


# make reproduce-tiny's layouts (recipes/tiny/reproduce.yaml): the paper's tables on the tiny task
REPRODUCE_TABLES = ("tiny1", "tiny7", "tiny10", "tiny-batch", "tiny-penalty")
NLL_VARIANTS = (("+ NLL", 1.0), ("no NLL", 0.0))
TABLE_DEFAULTS = {"base_model": "tiny", "batch_size": 64}  # the grid's shared settings
AOT_DEFAULTS = {"sort": "hard", "penalty": "logistic"}
WIN = ("Win rate vs SFT", "tiny:win_rate_vs_sft")
ACC = ("Accuracy", "tiny:accuracy")
FIG1 = [("Reward acc.", "tiny:reward_accuracy"), ("FSD viol. rewards", "tiny:rewards_fsd_violation"),
        ("Min gap rewards", "tiny:rewards_min_gap", {"digits": 3}),
        ("FSD viol. margins", "tiny:margins_fsd_violation"),
        ("Min gap margins", "tiny:margins_min_gap", {"digits": 2})]


def table(n: str):
    """The tiny task's table layouts: ``tiny`` (the evaluation chain) and :data:`REPRODUCE_TABLES`."""
    from .tables import METHODS, Row, Table, _alpaca

    def row(label: str, method: str, nll: tuple[str, float], **where) -> Row:
        base = {**TABLE_DEFAULTS, **(AOT_DEFAULTS if method.startswith("aot") else {})}
        return Row((label, nll[0]), {**base, "method": method, "nll_weight": nll[1], **where})

    if n == "tiny":
        rows = [Row((label,), {"method": m, "base_model": "tiny"}) for label, m in METHODS]
        rows += [Row(("NLL control",), {"method": "sft", "base_model": "tiny", "recipe_name": "nll_control"}),
                 Row(("SFT",), {"method": "sft", "base_model": "tiny", "recipe_name": "sft"})]
        cols = [("Accuracy", "tiny:accuracy"), ("Carry", "tiny:carry"), ("No carry", "tiny:no_carry"),
                ("Win rate vs SFT (program)", "tiny:win_rate_vs_sft"), _alpaca("program", "win_rate"),
                ("lm-eval MC", "tiny_mc"), ("lm-eval gen", "tiny_gen")]
        return Table(n, "Tiny offline task (2-digit addition), judged by program", ("Method",), cols, rows)
    control = [Row(("NLL control", "NLL only"), {**TABLE_DEFAULTS, "method": "sft", "recipe_name": "nll_control"}),
               Row(("SFT (start)", "-"), {"base_model": "tiny", "method": "sft", "recipe_name": "sft"})]
    if n == "tiny1":  # paper Table 1: methods x metrics, mean +- std over seeds
        rows = [row(label, m, nll) for nll in NLL_VARIANTS for label, m in METHODS] + control
        return Table(n, "Tiny task: every method from the same SFT model, with and without the NLL term "
                        "(mean ± std over seeds; Fig. 1 statistics on held-out pairs)",
                     ("Method", "NLL"), [WIN, ACC, ("Carry", "tiny:carry"), ("No carry", "tiny:no_carry"), *FIG1],
                     rows, std=True)
    if n == "tiny7":  # paper Table 7: hard vs soft sort
        rows = [row(label, m, nll, sort=sort) for nll in NLL_VARIANTS for label, m in METHODS[:2]
                for sort in ("hard", "soft")]
        for r in rows:
            r.labels = (*r.labels, r.where["sort"].capitalize())
        return Table(n, "Tiny task: hard vs soft (Sinkhorn) sort, mean ± std over seeds", ("Method", "NLL", "Sort"),
                     [WIN, ACC, *FIG1], rows, std=True)
    if n == "tiny10":  # paper Table 10: spread over seeds
        seeds = [(f"WR seed {s}", WIN[1], {"where": {"seed": s}, "std": False}) for s in (0, 1, 2)]
        rows = [row(label, m, nll) for nll in NLL_VARIANTS for label, m in METHODS] + control
        return Table(n, "Tiny task: win rate vs SFT per training seed, and mean ± std", ("Method", "NLL"),
                     [*seeds, ("WR mean ± std", WIN[1]), ("Accuracy mean ± std", ACC[1])], rows, std=True)
    if n == "tiny-batch":  # paper Fig. 2 (left), as a table
        rows = [Row((str(bs), nll[0]), {**TABLE_DEFAULTS, **AOT_DEFAULTS, "method": "aot_unpaired",
                                         "nll_weight": nll[1], "batch_size": bs})
                for nll in NLL_VARIANTS for bs in (16, 32, 64, 128)]
        return Table(n, "Tiny task: AOT unpaired by batch size, same number of samples (mean ± std over seeds)",
                     ("Batch size", "NLL"), [WIN, ACC, *FIG1], rows, std=True)
    if n == "tiny-penalty":  # paper Fig. 2 (right), as a table
        rows = [Row((p, nll[0]), {**TABLE_DEFAULTS, **AOT_DEFAULTS, "method": "aot_unpaired", "nll_weight": nll[1],
                                   "penalty": p})
                for nll in NLL_VARIANTS for p in ("logistic", "hinge", "squared_hinge", "least_squares")]
        return Table(n, "Tiny task: AOT unpaired by penalty (mean ± std over seeds)", ("Penalty", "NLL"),
                     [WIN, ACC, *FIG1], rows, std=True)
    raise ValueError(f"unknown tiny table {n!r}")


def figure2(results: list[dict], path: str | Path) -> Path:
    """Paper Fig. 2 on the tiny task: AOT unpaired by batch size (left) and by penalty (right); win rate
    vs SFT (top) and the smallest chosen-over-rejected reward quantile gap (bottom), mean and std over
    seeds, with and without the NLL term. Cells are the ``tiny-batch`` / ``tiny-penalty`` tables' own."""
    import statistics

    from .plots import draw_grid
    from .tables import cell_values

    metrics = {"tiny:win_rate_vs_sft": "win rate vs SFT (%)",
               "tiny:rewards_min_gap": "min quantile gap, chosen - rejected rewards"}
    data = {}
    for name in ("tiny-batch", "tiny-penalty"):
        rows_of = table(name).rows
        for key in metrics:
            for nll in dict.fromkeys(r.labels[1] for r in rows_of):
                rows = [r for r in rows_of if r.labels[1] == nll]
                values = [cell_values(results, r, key) for r in rows]
                data.setdefault(name, {}).setdefault(key, {})[nll] = {
                    "x": [r.labels[0] for r, v in zip(rows, values) if v],
                    "mean": [statistics.mean(v) for v in values if v],
                    "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values if v]}
    return draw_grid(data, path, ylabels=metrics, series="AOT unpaired {}", log2_x={"tiny-batch"},
                     xlabels={"tiny-batch": "batch size (same number of samples)", "tiny-penalty": "penalty"},
                     title="Fig. 2 (tiny task): batch size and penalty, mean ± std over seeds")


class TinyTask(Task):
    """The tiny task through the task interface (:mod:`aot_handbook.tasks`)."""

    name, assets_key, eval_kind = "tiny", "tiny_assets", "tiny_task"
    table_names = ("tiny", *REPRODUCE_TABLES)
    EVAL_KEYS = {"split", "limit", "max_new_tokens", "batch_size", "reference", "tiny_assets", "heldout_pairs"}

    def ensure_assets(self, root):
        return ensure_tiny_assets(root)

    def heldout_pairs(self, recipe):
        return read_jsonl(ensure_tiny_assets(self.assets_root(recipe))["paired_test"])

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
        from .evaluation.common import RunInfo, sha256
        from .evaluation.generation import generate_outputs
        from .evaluation.pipeline import _sft_of
        from .heldout import heldout_rows, heldout_scores

        cfg = recipe.get(self.eval_kind) or {}
        if set(cfg) - self.EVAL_KEYS:
            raise ValueError(f"{recipe['_path']}: unknown key(s) in {self.eval_kind!r}: "
                             f"{sorted(set(cfg) - self.EVAL_KEYS)} (known: {sorted(self.EVAL_KEYS)})")
        assets = ensure_tiny_assets(cfg.get("tiny_assets", run.recipe.get("tiny_assets") or ".cache/tiny"))
        split = cfg.get("split", "eval_prompts")
        gen = dict(instructions=str(assets[split]), limit=cfg.get("limit"),
                   max_new_tokens=cfg.get("max_new_tokens", 5), batch_size=cfg.get("batch_size", 256),
                   backend="hf", strip=False)
        reference_run = cfg.get("reference") or _sft_of(run)
        mine = json.loads(generate_outputs(run.model, work / "model_outputs.json", adapter=run.adapter,
                                           generator=run.name, **gen).read_text())
        ref_info = RunInfo.from_path(reference_run)
        # Cached per reference (and per training of it), so a changed or retrained reference is regenerated.
        ref_done = Path(reference_run) / "run.json"
        ref_tag = f"{ref_info.name}-{sha256(ref_done)[:12] if ref_done.is_file() else 'model'}"
        theirs = json.loads(generate_outputs(ref_info.model, work / f"reference_outputs--{ref_tag}.json",
                                             adapter=ref_info.adapter, generator=ref_info.name, **gen).read_text())
        scores, details = program_scores(mine, theirs)
        details.update(reference=reference_run, split=str(assets[split]))
        if _sft_of(run) != run.path:  # paper Fig. 1 statistics on held-out pairs, against the SFT run it started from
            rows = heldout_rows(run.path, max_rows=cfg.get("heldout_pairs", 512))
            scores.update(heldout_scores(run.path, rows, prefix="tiny:"))
        return scores, details, {"label": "program", "description": "aot_handbook.tiny.judge (exact sum)"}

    def lm_eval_include(self, cfg, work):
        if not cfg.pop("tiny_tasks", False):
            return None
        from .evaluation.harness import write_tiny_tasks

        rows = read_jsonl(ensure_tiny_assets(cfg.pop("tiny_assets", ".cache/tiny"))["eval_prompts"])
        return str(write_tiny_tasks(work / "tasks", rows[: cfg.pop("tiny_rows", len(rows))]))

    def table(self, name):
        return table(name)


register_task(TinyTask())


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
