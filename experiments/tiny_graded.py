#!/usr/bin/env python
"""Probes of the graded tiny regime (issue 28, phase 1), resumable and seeded:

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/tiny_graded.py start [--sft runs/tiny-sft]
    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/tiny_graded.py run dpo --seeds 0 --set beta=0.1
    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/tiny_graded.py report [--match dpo]

``start`` grades the SFT model the runs start from: greedy answers on the validation (300) and held-out (600)
prompts, and one answer sampled at temperature 1 per validation prompt (how much probability it puts on right
answers). ``run`` trains one recipe of ``recipes/tiny/graded/`` (or the on-policy graded data with
``--data onpolicy``) with ``--set`` overrides, once per seed, into ``runs/graded/<tag>`` (a finished run is not
retrained), and grades its greedy answers on both prompt sets into ``results/graded/<tag>.json`` with the
wall-clock and CPU seconds of training and evaluation. ``report`` prints every result as one table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RECIPES = {m: f"recipes/tiny/graded/{m}.yaml" for m in ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto",
                                                         "nll_control")}
PAIRED = {"aot_paired", "dpo", "ipo", "nll_control"}
RUNS, RESULTS = Path("runs/graded"), Path("results/graded")
ASSETS = ".cache/tiny_graded"


def _assets(gold_share: float, annotator: str = "noisy"):
    from aot_handbook.tasks.tiny.graded import ensure_assets

    return ensure_assets(ASSETS, gold_share=gold_share, annotator=annotator)


def _data(data: str) -> tuple[float, str]:
    """``gold<share>[-<annotator>]`` -> (gold share, annotator)."""
    share, _, annotator = data[4:].partition("-")
    return float(share), annotator or "noisy"


def _grade_model(path: str, rows_by_split: dict, *, sample: bool = False) -> dict:
    from aot_handbook.generation import load_model_and_tokenizer
    from aot_handbook.run_folder import RunInfo
    from aot_handbook.tasks.tiny.graded import grade, graded_answers, summarize_graded

    info = RunInfo.from_path(path)
    model, tokenizer = load_model_and_tokenizer(info.model, info.adapter, dtype="float32")
    out = {}
    for split, rows in rows_by_split.items():
        graded = graded_answers(model, tokenizer, rows)
        out[split] = {**summarize_graded(graded), "answers": [g["output"] for g in graded]}
    if sample:
        import torch

        from aot_handbook.tasks.tiny.arithmetic import generate

        prompts = [r["prompt"] for r in rows_by_split["val_prompts"]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            texts = generate(model, tokenizer, prompts, do_sample=True)
        graded = [grade(p, t) for p, t in zip(prompts, texts)]
        out["val_sampled_t1"] = {"exact": statistics.mean(g["exact"] for g in graded),
                                 "quality": statistics.mean(g["quality"] for g in graded)}
    return out


def _rows(gold_share: float) -> dict:
    from aot_handbook.io import read_jsonl

    paths = _assets(gold_share)
    return {s: read_jsonl(paths[s]) for s in ("val_prompts", "eval_prompts")}


def start(args):
    out = RESULTS / f"start-{Path(args.sft).name}.json"
    if not out.is_file():
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_grade_model(args.sft, _rows(0.0), sample=True)))
    res = json.loads(out.read_text())
    print(json.dumps({k: {m: v for m, v in s.items() if m != "answers"} for k, s in res.items()}, indent=1))


def _tag(method: str, sets: dict, data: str, seed: int, start: str) -> str:
    keys = "-".join(f"{k}{v}" for k, v in sorted(sets.items()))
    data = f"pairs-{Path(data[len('pairs:'):]).name}" if data.startswith("pairs:") else data
    head = data if start == "runs/tiny-sft" else f"{data}@{Path(start).name}"
    return f"{head}-{method}{'-' + keys if keys else ''}-s{seed}"


def _mixture(method: str, data: str) -> str | None:
    """The dataset_mixture of a data set (always given, so the recipes' own data files do not matter)."""
    if data.startswith("gold"):
        home = Path(_assets(*_data(data))["paired_train"]).parent
        train, test = (("paired_train", "paired_test") if method in PAIRED else ("unpaired_train", "unpaired_test"))
    elif data.startswith("pairs:"):  # a make pairs folder: its paired.jsonl / unpaired.jsonl
        home = Path(data[len("pairs:"):])
        train, test = ("paired", None) if method in PAIRED else ("unpaired", None)
    else:
        raise SystemExit(f"--data: gold<share>[-<annotator>] or pairs:<make pairs folder>, got {data!r}")
    files = {"train": str(home / f"{train}.jsonl")}
    if method != "nll_control" and test:
        files["test"] = str(home / f"{test}.jsonl")
    entry = {"data_files": files} if "test" in files else {"data_files": files, "test_split": None}
    return json.dumps({"datasets": [entry]})


def run(args):
    from aot_handbook.training import train

    sets = dict(s.split("=", 1) for s in args.set)
    rows = _rows(0.0)  # the held-out prompts are the same in every data set
    for seed in args.seeds:
        tag = _tag(args.method, sets, args.data, seed, args.start)
        result = RESULTS / f"{tag}.json"
        if result.is_file():
            print(f"{tag}: done")
            continue
        overrides = ["--seed", str(seed), "--output_dir", str(RUNS / tag), "--summary", "false",
                     "--disable_tqdm", "true", "--model_name_or_path", args.start]
        for k, v in sets.items():
            overrides += [f"--{k}", v]
        mixture = _mixture(args.method, args.data)
        if mixture:
            overrides += ["--dataset_mixture", mixture]
        wall, cpu = time.time(), time.process_time()
        train(RECIPES[args.method], overrides)
        train_s = (time.time() - wall, time.process_time() - cpu)
        wall, cpu = time.time(), time.process_time()
        res = _grade_model(str(RUNS / tag), rows)
        eval_s = (time.time() - wall, time.process_time() - cpu)
        res.update(method=args.method, sets=sets, data=args.data, seed=seed, start=args.start, train_wall_s=train_s[0],
                   train_cpu_s=train_s[1], eval_wall_s=eval_s[0], eval_cpu_s=eval_s[1])
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        tmp.replace(result)
        print(f"{tag}: val acc {res['val_prompts']['accuracy']:.3f} q {res['val_prompts']['quality']:.3f} | "
              f"eval acc {res['eval_prompts']['accuracy']:.3f} q {res['eval_prompts']['quality']:.3f} "
              f"dist {res['eval_prompts']['distance']:.2f} | train {train_s[0]:.0f}s wall {train_s[1]:.0f}s cpu",
              flush=True)


def _cells(grid: list[str]) -> list[dict]:
    """``["beta=0.1,1", "learning_rate=1e-4,3e-4"]`` -> every combination, in grid order."""
    import itertools

    axes = [(k, v.split(",")) for k, v in (g.split("=", 1) for g in grid)]
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[vs for _, vs in axes])]


def tune(args):
    """The fair-tuning protocol: every cell of the method's grid with seed 0, the cell with the best validation
    score chosen (mean quality, then accuracy; earlier cell on a tie), then the other seeds at that cell; the
    choice and every cell's validation score go to results/graded/tuned-<data>[@start]-<method>.json."""
    cells = _cells(args.grid)
    for sets in cells:
        run(argparse.Namespace(method=args.method, seeds=[0], set=[f"{k}={v}" for k, v in sets.items()],
                               data=args.data, start=args.start))
    val = []
    for sets in cells:
        r = json.loads((RESULTS / f"{_tag(args.method, sets, args.data, 0, args.start)}.json").read_text())
        val.append({"sets": sets, "quality": r["val_prompts"]["quality"], "accuracy": r["val_prompts"]["accuracy"]})
    best = max(range(len(cells)), key=lambda i: (val[i]["quality"], val[i]["accuracy"], -i))
    run(argparse.Namespace(method=args.method, seeds=args.seeds, set=[f"{k}={v}" for k, v in cells[best].items()],
                           data=args.data, start=args.start))
    head = _tag("x", {}, args.data, 0, args.start).rsplit("-x-s0", 1)[0]
    out = {"method": args.method, "data": args.data, "start": args.start, "grid": args.grid, "cells": val,
           "chosen": cells[best], "runs": [_tag(args.method, cells[best], args.data, s, args.start)
                                           for s in sorted({0, *args.seeds})]}
    (RESULTS / f"tuned-{head}-{args.method}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("method", "chosen", "runs")}))


def _per_prompt(tag: str, split: str = "eval_prompts") -> dict[str, list]:
    from aot_handbook.tasks.tiny.graded import grade

    r = json.loads((RESULTS / f"{tag}.json").read_text())
    prompts = [row["prompt"] for row in _rows(0.0)[split]]
    graded = [grade(p, a) for p, a in zip(prompts, r[split]["answers"])]
    return {"quality": [g["quality"] for g in graded], "accuracy": [100.0 * g["exact"] for g in graded]}


def final(args):
    """Held-out results of the tuned methods: mean +- std over seeds, a 95% bootstrap interval over prompts (each
    prompt's score averaged over seeds), and the relative test (aot_handbook.dominance.relative_test, paired over
    prompts) of each method against the SFT start, the NLL-only control and the annotator's chosen answers."""
    import numpy as np

    from aot_handbook.dominance import relative_test
    from aot_handbook.tasks.tiny.graded import annotator_answers, grade

    head = _tag("x", {}, args.data, 0, args.start).rsplit("-x-s0", 1)[0]
    prompts = [row["prompt"] for row in _rows(0.0)["eval_prompts"]]
    start = json.loads((RESULTS / f"start-{Path(args.start).name}.json").read_text())["eval_prompts"]["answers"]
    chosen = annotator_answers(prompts, seed=1, annotator=_data(args.data)[1]) if args.data.startswith("gold") else []
    rows = {"SFT start": {"quality": [grade(p, a)["quality"] for p, a in zip(prompts, start)],
                          "accuracy": [100.0 * grade(p, a)["exact"] for p, a in zip(prompts, start)]}}
    if chosen:
        rows["chosen answers"] = {"quality": [grade(p, a)["quality"] for p, a in zip(prompts, chosen)],
                                  "accuracy": [100.0 * grade(p, a)["exact"] for p, a in zip(prompts, chosen)]}
    seeds, picked = {}, {}
    for m in RECIPES:
        f = RESULTS / f"tuned-{head}-{m}.json"
        if not f.is_file():
            continue
        t = json.loads(f.read_text())
        per = [_per_prompt(tag) for tag in t["runs"]]
        seeds[m] = per
        picked[m] = t["chosen"]
        rows[m] = {k: list(np.mean([p[k] for p in per], axis=0)) for k in ("quality", "accuracy")}
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(prompts), (2000, len(prompts)))
    lines = [f"data {head}; per method: the tuned cell, held-out mean +- std over seeds [95% bootstrap over "
             "prompts of the seed-averaged score]; relative test (quality per prompt, seed-averaged) vs SFT start, "
             "NLL-only control, chosen answers: + better, - worse, = not significant", "",
             "| method | cell | seeds | accuracy | quality | vs SFT (acc/q) | vs NLL (acc/q) | vs chosen (acc/q) |",
             "|---|---|---|---|---|---|---|---|"]
    verdicts = {}
    for metric in ("accuracy", "quality"):
        res = relative_test({k: v[metric] for k, v in rows.items()}, paired=True, seed=0, n_boot=2000)
        verdicts[metric] = res

    def verdict(metric, a, b):
        res = verdicts[metric]
        if b not in res.names or a not in res.names:
            return "."
        return "+" if res.beats(a, b) else "-" if res.beats(b, a) else "="

    for name, v in rows.items():
        cell = ",".join(f"{k}={x}" for k, x in picked.get(name, {}).items()) or "-"
        n = len(seeds.get(name, [None]))
        stats = []
        for metric in ("accuracy", "quality"):
            per_seed = ([float(np.mean(p[metric])) for p in seeds[name]] if name in seeds
                        else [float(np.mean(v[metric]))])
            arr = np.asarray(v[metric])
            lo, hi = np.percentile(arr[idx].mean(axis=1), [2.5, 97.5])
            sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
            digits = 1 if metric == "accuracy" else 3
            stats.append(f"{np.mean(per_seed):.{digits}f} ± {sd:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]")
        cmp = [f"{verdict('accuracy', name, b)}/{verdict('quality', name, b)}" if name != b else "·"
               for b in ("SFT start", "nll_control", "chosen answers")]
        lines.append(f"| {name} | {cell} | {n} | {stats[0]} | {stats[1]} | " + " | ".join(cmp) + " |")
    lines += ["", "ranking (accuracy): " + " > ".join(verdicts["accuracy"].ranking),
              "ranking (quality): " + " > ".join(verdicts["quality"].ranking), "",
              "claim 2 after fair tuning (relative test, Holm over all pairs; accuracy/quality):"]
    for a in ("aot_paired", "aot_unpaired"):
        for b in ("dpo", "ipo", "kto"):
            if a in rows and b in rows:
                words = {"+": "AOT better", "-": "AOT worse", "=": "not significant"}
                v = [words[verdict(m, a, b)] for m in ("accuracy", "quality")]
                p = [verdicts[m].p_value[verdicts[m].names.index(a), verdicts[m].names.index(b)]
                     for m in ("accuracy", "quality")]
                lines.append(f"- {a} vs {b}: {v[0]} (p = {p[0]:.3g}) / {v[1]} (p = {p[1]:.3g})")
    print("\n".join(lines))


def report(args):
    lines = ["| run | beta | lr | val acc | val q | eval acc | eval q | eval dist | carry | no carry | train s (cpu) "
             "|",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in sorted(RESULTS.glob("*.json")):
        if (args.match and args.match not in f.stem) or f.stem.startswith("tuned-"):
            continue
        r = json.loads(f.read_text())
        v, e = r["val_prompts"], r["eval_prompts"]
        cpu = f"{r['train_wall_s']:.0f} ({r['train_cpu_s']:.0f})" if "train_wall_s" in r else "-"
        made = RUNS / f.stem / "recipe.json"  # what the run was trained with (the recipe's values at the time)
        resolved = json.loads(made.read_text())["resolved"] if made.is_file() else {}
        beta = resolved.get("beta", "-") if r.get("method") != "nll_control" else "-"
        lr = resolved.get("learning_rate", "-")
        lines.append(f"| {f.stem} | {beta} | {lr} | {100 * v['accuracy']:.1f} | {v['quality']:.3f} | "
                     f"{100 * e['accuracy']:.1f} | "
                     f"{e['quality']:.3f} | {e['distance']:.2f} | {100 * e['carry']:.1f} | "
                     f"{100 * e['no_carry']:.1f} | {cpu} |")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start")
    s.add_argument("--sft", default="runs/tiny-sft")
    r = sub.add_parser("run")
    r.add_argument("method", choices=sorted(RECIPES))
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--set", nargs="*", default=[], help="recipe overrides key=value")
    r.add_argument("--data", default="gold0", help="gold<share> (offline graded data) or onpolicy")
    r.add_argument("--start", default="runs/tiny-sft", help="the SFT run every run starts from")
    t = sub.add_parser("tune")
    t.add_argument("method", choices=sorted(RECIPES))
    t.add_argument("--grid", nargs="+", required=True, help="key=v1,v2 ... (crossed)")
    t.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="seeds at the chosen cell (0: tuning)")
    f = sub.add_parser("final")
    for x in (t, f):
        x.add_argument("--data", default="gold0")
        x.add_argument("--start", default="runs/tiny-sft")
    q = sub.add_parser("report")
    q.add_argument("--match", default="")
    args = p.parse_args(argv)
    {"start": start, "run": run, "report": report, "tune": tune, "final": final}[args.command](args)


if __name__ == "__main__":
    main()
