"""A graded regime of the tiny task (issue 28): the chosen answer is better, not right.

In the tiny task (:mod:`.arithmetic`) the chosen answer is the correct sum, so fine-tuning on the chosen
answers is the shortest way to the goal and no preference method can beat it. Real preference data is not like
that: the chosen answer is only the better of two imperfect ones. Here every answer carries a graded quality,
the number of its digits that are right (0-3; an answer that is not three digits has none right), and

- a preference pair's chosen answer has strictly more right digits than its rejected one, and is the exact sum in
  a stated share of pairs only (``gold_share``, default :data:`GOLD_SHARE`: never);
- unpaired rows (one answer a row) are labelled by their quality above the median of all rows (ties negative);
- the wrong digits are near misses (a digit off by 1 or 2), so the distance to the true sum is graded too.

Answers are written by a synthetic annotator (:func:`graded_pair`), in one of two ways:

- ``noisy``: the true sum with k of its three digits missed, k = 1 for the chosen answer with probability
  :data:`P_CHOSEN_ONE_WRONG` (else 2) and k drawn uniformly from the rest for the rejected one. The errors are
  unsystematic: no single chosen answer is right, but each digit's most common value among them is;
- ``systematic``: the same on problems without a carry; on carry problems the annotator shares the tiny SFT
  data's flaw (the dropped carry) in most chosen answers and in every rejected one, so the most common chosen
  answer is wrong while the pairs still say that a kept carry is better.

The held-out prompts are the tiny task's own (the same splits), so the tiny SFT model never saw them.

The judge is :func:`grade`; the on-policy variant scores the SFT model's own samples with it (``make pairs`` with
``scorer: tiny_graded``, :mod:`aot_handbook.scorers`; the data stage's score is the quality over 3, in [0, 1]).
:func:`data_quality` states what a data set holds: the share
of chosen (positive) answers that are right, their mean quality, and the best answer in the data per prompt.

Registered through the task interface as ``tiny_graded`` (recipe key ``tiny_graded_assets``, evaluation kind
``tiny_graded_task``): greedy answers on the held-out prompts, graded (accuracy, mean quality, mean distance, the
win rate on quality against the SFT model), and the Fig. 1 statistics on the graded held-out pairs.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from ...io import read_jsonl, write_jsonl
from .. import register_task
from .arithmetic import (
    FLAW_RATE,
    SPLIT_SIZES,
    TinyTask,
    answer,
    ensure_tiny_assets,
    flawed,
    generate,
    has_carry,
    split_prompts,
)

TASK_VERSION = 1  # bump when the task or the assets change, so stale caches are not reused
N_DIGITS = 3
GOLD_SHARE = 0.0  # the share of pairs whose chosen answer is the exact sum (issue 28: at most a small one)
P_CHOSEN_ONE_WRONG = 0.75  # a chosen answer misses one digit with this probability, else two
NEAR_MISSES = (-2, -1, 1, 2)  # a wrong digit is the right one moved by one of these (staying a digit)
ANNOTATORS = ("noisy", "systematic")  # how the annotator errs (graded_pair)
ANNOTATOR = "noisy"
DISTANCE_CAP = 100  # the distance to the true sum is capped here; an answer that is not 3 digits counts this
N_PAIRED_TRAIN = 4000
N_UNPAIRED_TRAIN = 4000


# ---------------------------------------------------------------- the graded judge


def _digits(completion: str) -> str | None:
    text = completion.replace("<eos>", "").strip()
    return text if len(text) == N_DIGITS and text.isdigit() else None


def grade(prompt: str, completion: str) -> dict:
    """``quality``: how many of the three digits are right (0-3; not three digits: 0); ``exact``: all three;
    ``distance``: |answer - sum|, capped at :data:`DISTANCE_CAP` (not three digits: the cap)."""
    truth, text = answer(prompt), _digits(completion)
    if text is None:
        return {"quality": 0, "exact": False, "distance": DISTANCE_CAP}
    right = sum(a == b for a, b in zip(text, truth))
    return {"quality": right, "exact": right == N_DIGITS,
            "distance": min(abs(int(text) - int(truth)), DISTANCE_CAP)}


def quality(prompt: str, completion: str) -> float:
    """The graded judge's score (higher is better): the number of right digits."""
    return float(grade(prompt, completion)["quality"])


# ---------------------------------------------------------------- the synthetic annotator


def _miss_at(text: str, i: int, rng: random.Random) -> str:
    """``text`` with its digit ``i`` replaced by a near miss (one of :data:`NEAR_MISSES` away, staying a digit)."""
    d = int(text[i])
    return text[:i] + str(d + rng.choice([m for m in NEAR_MISSES if 0 <= d + m <= 9])) + text[i + 1:]


def miss(prompt: str, k: int, rng: random.Random) -> str:
    """The true sum with exactly ``k`` of its digits (positions drawn at random) replaced by near misses."""
    text = answer(prompt)
    for i in rng.sample(range(N_DIGITS), k):
        text = _miss_at(text, i, rng)
    return text


def graded_pair(prompt: str, rng: random.Random, *, gold: bool = False, annotator: str = ANNOTATOR) -> dict:
    """One pair, chosen strictly better than rejected. ``noisy``: chosen with 0 (``gold``), 1 or 2 missed digits
    (random positions), rejected with strictly more. ``systematic``: the same on problems without a carry; on carry
    problems the annotator shares the tiny SFT data's flaw: the chosen answer drops the carry with probability
    :data:`.arithmetic.FLAW_RATE` (its other digits right), else keeps it and misses the units or the
    hundreds digit; the rejected answer drops the carry and misses the units. Imitating the chosen answers then
    keeps the flaw (dropped is their most common tens digit), while the pairs say a kept carry is better."""
    if annotator not in ANNOTATORS:
        raise ValueError(f"annotator must be one of {list(ANNOTATORS)}, got {annotator!r}")
    if annotator == "systematic" and has_carry(prompt) and not gold:
        dropped = flawed(prompt)
        chosen = dropped if rng.random() < FLAW_RATE else _miss_at(answer(prompt), rng.choice([0, 2]), rng)
        rejected = _miss_at(dropped, 2, rng)
    else:
        kc = 0 if gold else 1 if rng.random() < P_CHOSEN_ONE_WRONG else 2
        kr = rng.randint(kc + 1, N_DIGITS)
        chosen, rejected = miss(prompt, kc, rng), miss(prompt, kr, rng)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "chosen_score": quality(prompt, chosen), "rejected_score": quality(prompt, rejected)}


def _golden(n: int, share: float, rng: random.Random) -> set[int]:
    """Exactly round(share * n) indices, drawn at random: the stated share is the data's share."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"gold_share must lie in [0, 1], got {share}")
    return set(rng.sample(range(n), round(share * n)))


def paired_rows(prompts: list[str], rng: random.Random, gold_share: float, annotator: str = ANNOTATOR) -> list[dict]:
    gold = _golden(len(prompts), gold_share, rng)
    return [graded_pair(p, rng, gold=i in gold, annotator=annotator) for i, p in enumerate(prompts)]


def unpaired_rows(prompts: list[str], rng: random.Random, gold_share: float,
                  annotator: str = ANNOTATOR) -> list[dict]:
    """One answer a prompt, truly unpaired: the chosen side of a fresh pair on even rows, the rejected side on odd
    ones; label = quality above the median of all rows (ties negative), as the tiny task labels its scores."""
    chosen_side = range(0, len(prompts), 2)
    gold = {chosen_side[j] for j in _golden(len(chosen_side), gold_share, rng)}
    rows = []
    for i, p in enumerate(prompts):
        pair = graded_pair(p, rng, gold=i in gold, annotator=annotator)
        side = "chosen" if i % 2 == 0 else "rejected"
        rows.append({"prompt": p, "completion": pair[side], "score": pair[f"{side}_score"]})
    median = statistics.median(r["score"] for r in rows)
    return [{**r, "label": r["score"] > median} for r in rows]


def annotator_answers(prompts: list[str], *, seed: int = 1, gold_share: float = GOLD_SHARE,
                      annotator: str = ANNOTATOR) -> list[str]:
    """What the annotator would have chosen for each of ``prompts`` (the chosen side of a fresh pair, as in the
    training pairs): the per-prompt reference for "does a trained model answer better than the chosen answers it
    was trained on?" on held-out prompts, where the data has no chosen answer."""
    rng = random.Random(seed)
    return [r["chosen"] for r in paired_rows(prompts, rng, gold_share, annotator)]


def build_task(seed: int = 0, gold_share: float = GOLD_SHARE, annotator: str = ANNOTATOR) -> dict[str, list[dict]]:
    """All splits as lists of rows. The held-out prompts are the tiny task's (same seed, same split sizes), so a
    model trained on the tiny task's data never saw them; train prompts come from the rest."""
    rng = random.Random(seed)
    held, train = split_prompts(rng, SPLIT_SIZES)

    def category(rows):
        return [{**r, "category": "carry" if has_carry(r["prompt"]) else "no_carry"} for r in rows]

    return {
        "paired_train": category(paired_rows(rng.sample(train, N_PAIRED_TRAIN), rng, gold_share, annotator)),
        "paired_test": category(paired_rows(held["paired_test"], rng, gold_share, annotator)),
        "unpaired_train": category(unpaired_rows(rng.sample(train, N_UNPAIRED_TRAIN), rng, gold_share, annotator)),
        "unpaired_test": category(unpaired_rows(held["unpaired_test"], rng, gold_share, annotator)),
        "eval_prompts": category([{"prompt": p, "answer": answer(p)} for p in held["eval_prompts"]]),
        "val_prompts": category([{"prompt": p, "answer": answer(p)} for p in held["val_prompts"]]),
    }


def ensure_assets(root: str | Path = ".cache/tiny_graded", *, tiny_root: str | Path | None = None, seed: int = 0,
                  gold_share: float = GOLD_SHARE, annotator: str = ANNOTATOR) -> dict[str, Path]:
    """The tiny base model (:mod:`.arithmetic`, under ``tiny_root``: default ``tiny`` beside ``root``) and
    this task's splits under ``root/v<version>-seed<seed>-gold<share>[-<annotator>]/data`` (no suffix: noisy);
    idempotent, each file atomic."""
    tiny_root = Path(root).parent / "tiny" if tiny_root is None else tiny_root
    paths = {"base_model": ensure_tiny_assets(tiny_root, seed=seed)["base_model"]}
    suffix = "" if annotator == "noisy" else f"-{annotator}"
    home = Path(root) / f"v{TASK_VERSION}-seed{seed}-gold{gold_share:g}{suffix}" / "data"
    home.mkdir(parents=True, exist_ok=True)
    splits = None
    for name in ("paired_train", "paired_test", "unpaired_train", "unpaired_test", "eval_prompts", "val_prompts"):
        paths[name] = home / f"{name}.jsonl"
        if not paths[name].exists():
            splits = splits or build_task(seed, gold_share, annotator)
            write_jsonl(paths[name], splits[name], sort_keys=True)
    return paths


# ---------------------------------------------------------------- what a data set holds


def _mean(xs) -> float | None:
    xs = list(xs)
    return statistics.mean(xs) if xs else None


def data_quality(*, paired: list[dict] | None = None, unpaired: list[dict] | None = None,
                 samples: list[dict] | None = None) -> dict:
    """The quality of preference data, graded by :func:`grade`: for pairs, the share of chosen answers that are
    right and the mean quality of chosen and rejected answers; for unpaired rows, the same for the positives;
    for sampled answers (``make pairs``' samples.jsonl), the share right and their mean quality. And in each part,
    per prompt, the best answer it holds for that prompt (``best_per_prompt``): their mean quality, the share of
    prompts where it is right and the histogram of its quality (what imitating the data's best answers reaches)."""
    out = {}
    best: dict[str, dict[str, int]] = {}  # part -> prompt -> the best quality of its answers there

    def seen(part, prompt, completion):
        g = grade(prompt, completion)
        mine = best.setdefault(part, {})
        mine[prompt] = max(mine.get(prompt, -1), g["quality"])
        return g

    if paired:
        chosen = [seen("paired", r["prompt"], r["chosen"]) for r in paired]
        rejected = [seen("paired", r["prompt"], r["rejected"]) for r in paired]
        out["paired"] = {"pairs": len(paired), "chosen_exact": _mean(g["exact"] for g in chosen),
                         "chosen_quality": _mean(g["quality"] for g in chosen),
                         "chosen_distance": _mean(g["distance"] for g in chosen),
                         "rejected_quality": _mean(g["quality"] for g in rejected),
                         "strictly_better": _mean(c["quality"] > r["quality"] for c, r in zip(chosen, rejected))}
    if unpaired:
        graded = [(r["label"], seen("unpaired", r["prompt"], r["completion"])) for r in unpaired]
        pos = [g for label, g in graded if label]
        out["unpaired"] = {"rows": len(unpaired), "positives": len(pos),
                           "positive_exact": _mean(g["exact"] for g in pos),
                           "positive_quality": _mean(g["quality"] for g in pos),
                           "negative_quality": _mean(g["quality"] for label, g in graded if not label)}
    if samples:
        graded = [seen("samples", r["prompt"], c) for r in samples for c in r["completions"]]
        out["samples"] = {"answers": len(graded), "exact": _mean(g["exact"] for g in graded),
                          "quality": _mean(g["quality"] for g in graded)}
    for part, per_prompt in best.items():
        qs = list(per_prompt.values())
        out[part]["best_per_prompt"] = {"prompts": len(qs), "quality": _mean(qs),
                                        "exact": _mean(q == N_DIGITS for q in qs),
                                        "histogram": {q: qs.count(q) for q in range(N_DIGITS + 1)}}
    return out


# ---------------------------------------------------------------- evaluation


def graded_answers(model, tokenizer, rows: list[dict]) -> list[dict]:
    """Per held-out prompt: the greedy answer, graded."""
    prompts = [r["prompt"] for r in rows]
    return [{"prompt": p, "output": c, **grade(p, c)} for p, c in zip(prompts, generate(model, tokenizer, prompts))]


def summarize_graded(graded: list[dict]) -> dict:
    """Accuracy (exact), mean quality (right digits, of 3), mean distance; accuracy on carry / no-carry prompts."""
    out = {"accuracy": _mean(g["exact"] for g in graded), "quality": _mean(g["quality"] for g in graded),
           "distance": _mean(g["distance"] for g in graded), "n": len(graded)}
    for cat, want in (("carry", True), ("no_carry", False)):
        out[cat] = _mean(g["exact"] for g in graded if has_carry(g["prompt"]) == want)
    return out


def graded_scores(mine: list[dict], theirs: list[dict]) -> tuple[dict, dict]:
    """Scores of ``mine`` (alpaca_eval-format outputs) and the per-prompt samples; the win rate compares each
    answer's quality with the reference's (``theirs``): better = 100, equal = 50, worse = 0."""
    ref = {r["instruction"]: grade(r["instruction"], r["output"]) for r in theirs}
    samples = []
    for r in mine:
        p, g, b = r["instruction"], grade(r["instruction"], r["output"]), ref[r["instruction"]]
        c = has_carry(p)
        samples.append({"id": p, "tiny_graded:accuracy": 100.0 * g["exact"], "tiny_graded:quality": g["quality"],
                        "tiny_graded:distance": g["distance"],
                        "tiny_graded:carry": 100.0 * g["exact"] if c else None,
                        "tiny_graded:no_carry": None if c else 100.0 * g["exact"],
                        "tiny_graded:win_rate_vs_sft": 100.0 if g["quality"] > b["quality"]
                        else 50.0 if g["quality"] == b["quality"] else 0.0,
                        "length": len(r["output"])})
    keys = ("accuracy", "quality", "distance", "carry", "no_carry", "win_rate_vs_sft")
    scores = {f"tiny_graded:{k}": _mean(s[f"tiny_graded:{k}"] for s in samples
                                        if s[f"tiny_graded:{k}"] is not None) for k in keys}
    return scores, {"n": len(mine), "reference_accuracy": 100.0 * _mean(b["exact"] for b in ref.values()),
                    "reference_quality": _mean(b["quality"] for b in ref.values()), "samples": samples}


def training_data(results: list[dict]) -> tuple[Path | None, str, float]:
    """The folder of the graded data the runs of ``results`` trained on (the first run with one), its annotator
    and gold share (from the folder's name, ``v<version>-seed<seed>-gold<share>[-<annotator>]``); (None, the
    default annotator, :data:`GOLD_SHARE`) when no run trained on it."""
    from ...run_folder import RunInfo

    for r in results:
        if not r["run"].get("path") or not Path(r["run"]["path"], "recipe.json").is_file():
            continue
        for entry in (RunInfo.from_path(r["run"]["path"]).recipe.get("dataset_mixture") or {}).get("datasets") or []:
            train = (entry.get("data_files") or {}).get("train") if isinstance(entry, dict) else None
            home = Path(train).parent.parent.name if isinstance(train, str) else ""
            if home.startswith(f"v{TASK_VERSION}-") and "-gold" in home:
                gold, _, annotator = home.split("-gold", 1)[1].partition("-")
                return Path(train).parent, annotator or "noisy", float(gold)
    return None, ANNOTATOR, GOLD_SHARE


# ---------------------------------------------------------------- the task interface (aot_handbook.tasks)


class TinyGradedTask(TinyTask):
    """The graded regime through the task interface. Its held-out prompts are the tiny task's, so evaluation is the
    tiny task's (greedy answers on ``eval_prompts``, cached per reference) with the graded judge."""

    name, assets_key, eval_kind, scorer = "tiny_graded", "tiny_graded_assets", "tiny_graded_task", "tiny_graded"
    table_names = ()
    figure_names = ()
    judge_info = {"label": "program",
                  "description": "aot_handbook.tasks.tiny.graded.grade (right digits of the sum)"}

    def ensure_assets(self, root):
        """Both annotators' data (a recipe names one by its folder), the default one's paths returned."""
        for annotator in ANNOTATORS:
            paths = ensure_assets(root, annotator=annotator)
            if annotator == ANNOTATOR:
                out = paths
        return out

    def heldout_pairs(self, recipe):
        return read_jsonl(ensure_assets(self.assets_root(recipe))["paired_test"])

    def judge(self, prompt, completion):
        """The data stage's score (``scorer: tiny_graded``): the right digits over 3, in [0, 1] (1: right) as the
        task interface asks; pairs, labels at a threshold between levels and ranks are those of :func:`quality`."""
        return quality(prompt, completion) / N_DIGITS

    def summarize(self, model, tokenizer, reference, recipe):
        import torch

        rows = read_jsonl(ensure_assets(self.assets_root(recipe))["eval_prompts"])
        out = {"aligned": summarize_graded(graded_answers(model, tokenizer, rows))}
        if isinstance(reference, torch.nn.Module):
            out["reference"] = summarize_graded(graded_answers(reference, tokenizer, rows))
        return out

    def summary_lines(self, block):
        return [f"  graded task, {who:9s}: accuracy {a['accuracy']:.3f}, quality {a['quality']:.3f} of 3 digits, "
                f"distance {a['distance']:.2f} (greedy, judged by program, n={a['n']})"
                for who in ("reference", "aligned") if (a := block.get(who))]

    def score_outputs(self, mine, theirs):
        return graded_scores(mine, theirs)

    def lm_eval_include(self, cfg, work):
        return None

    def report(self, regime, results, out_dir, **context):
        """The graded grid's report (``recipes/tiny/graded/reproduce.grid.yaml``: its offline, tuned regime)."""
        if regime != "offline":
            raise ValueError(f"task {self.name!r} reports the offline (tuned) regime only, not {regime!r}")
        from .graded_report import graded_report  # the dominance test and tables load for the report only

        home, annotator, gold = training_data(results)
        data = None if home is None else \
            (home, annotator, data_quality(paired=read_jsonl(home / "paired_train.jsonl"))["paired"])

        def chosen(prompts):
            answers = annotator_answers(prompts, seed=1, gold_share=gold, annotator=annotator)
            return [grade(p, a) for p, a in zip(prompts, answers)]

        return graded_report(results, Path(out_dir), chosen=chosen, data=data)

    def table(self, name):
        raise ValueError(f"task {self.name!r} has no table {name!r}")


register_task(TinyGradedTask())


def main(argv=None):
    """``python -m aot_handbook.tasks.tiny.graded build|stats|eval``: build the assets and print their data quality,
    print the data quality of a ``make pairs`` folder, or grade runs' greedy answers on a held-out split."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--gold-share", type=float, default=GOLD_SHARE)
    b.add_argument("--annotator", default=ANNOTATOR, choices=ANNOTATORS)
    s = sub.add_parser("stats")
    s.add_argument("folder", help="a make pairs output folder (samples.jsonl, paired.jsonl, unpaired.jsonl)")
    e = sub.add_parser("eval")
    e.add_argument("runs", nargs="+")
    e.add_argument("--split", default="val_prompts", choices=["val_prompts", "eval_prompts"])
    for q in (b, e):
        q.add_argument("--root", default=".cache/tiny_graded")
    args = p.parse_args(argv)
    if args.command == "build":
        paths = ensure_assets(args.root, gold_share=args.gold_share, annotator=args.annotator)
        stats = data_quality(paired=read_jsonl(paths["paired_train"]), unpaired=read_jsonl(paths["unpaired_train"]))
        print(json.dumps({"paths": {k: str(v) for k, v in paths.items()}, "paired_train": stats}, indent=1))
        return
    if args.command == "stats":
        folder = Path(args.folder)
        parts = {k: read_jsonl(folder / f"{f}.jsonl") for k, f in
                 (("samples", "samples"), ("paired", "paired"), ("unpaired", "unpaired"))
                 if (folder / f"{f}.jsonl").is_file()}
        print(json.dumps(data_quality(**parts), indent=1))
        return
    from ...generation import load_model_and_tokenizer
    from ...run_folder import RunInfo

    rows = read_jsonl(ensure_assets(args.root)[args.split])
    for run in args.runs:
        info = RunInfo.from_path(run)
        model, tokenizer = load_model_and_tokenizer(info.model, info.adapter, dtype="float32")
        graded = summarize_graded(graded_answers(model, tokenizer, rows))
        print(json.dumps({"run": run, "split": args.split, **graded}))


if __name__ == "__main__":
    main()
