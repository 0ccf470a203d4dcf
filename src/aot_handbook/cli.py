"""The console scripts (setup.cfg ``[options.entry_points]``): ``aot-train``, ``aot-eval``, ``aot-generate``,
``aot-table``, ``aot-plot``, ``aot-compare``, ``aot-pairs``, ``aot-sweep``, ``aot-validate``, ``aot-reproduce``,
``aot-gpu-check``. Each is also ``python -m aot_handbook.cli <command> ...`` (command: the name without
``aot-``), which is what multi-process launches use (``accelerate launch -m aot_handbook.cli train RECIPE``)
and what sweeps run. Paths given on the command line (recipes, runs, results) are relative to the working
directory; nothing here looks for a repository checkout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=f"example:\n{example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def train(argv: list[str] | None = None) -> int:
    from .methods import METHODS

    p = _parser("aot-train", "Train one recipe into its run folder (output_dir): the recipe's `method` picks the "
                f"trainer ({', '.join(METHODS)}); a recipe it `requires` whose run is missing is trained first.",
                "  aot-train recipes/tiny/aot_unpaired.yaml --max_steps 20 --beta 0.05\n"
                "  accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml -m aot_handbook.cli train \\\n"
                "      recipes/merlinite-7b/aot_unpaired.yaml")
    p.add_argument("recipe", help="a training recipe (YAML; e.g. recipes/tiny/aot_unpaired.yaml)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--key value",
                   help="any recipe key overridden, e.g. --beta 0.05 --output_dir runs/x "
                        "(a bare --flag sets a boolean key true)")
    args = p.parse_args(argv)
    from .run import RecipeError
    from .run import train as run_train

    try:
        run_train(args.recipe, args.overrides)
    except RecipeError as err:  # a bad recipe, override or data file: the message says which
        sys.exit(f"error: {err}")
    return 0


def evaluate(argv: list[str] | None = None) -> int:
    p = _parser("aot-eval", "Evaluate one run with one evaluation recipe: writes results/<run name>/<eval name>.json "
                "and prints a summary. RUN is a run folder or a base model (folder or hub id: the tables' base row).",
                "  aot-eval runs/tiny-aot_unpaired recipes/eval/tiny.yaml")
    p.add_argument("run")
    p.add_argument("eval", nargs="?", default="recipes/eval/tiny.yaml",
                   help="an evaluation recipe (default: recipes/eval/tiny.yaml, relative to the working directory)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--allow-incomplete", action="store_true", help="evaluate a run folder without run.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .evaluation import evaluate as run_evaluate
    from .evaluation.pipeline import check_run_path

    try:
        check_run_path(args.run)
    except ValueError as err:  # a RUN that is no run, model folder or hub id: one line, nothing written
        sys.exit(f"error: {err}")
    run_evaluate(args.run, args.eval, results_dir=args.results_dir, allow_incomplete=args.allow_incomplete)
    return 0


def generate(argv: list[str] | None = None) -> int:
    p = _parser("aot-generate", "AlpacaEval generations of a run (or a model), in alpaca_eval's format; resumable.",
                "  aot-generate runs/merlinite-7b-aot_unpaired --out results/merlinite-7b-aot_unpaired/outputs.json\n"
                "  aot-generate runs/tiny-sft --instructions .cache/tiny/v2-seed0/data/eval_prompts.jsonl "
                "--max-new-tokens 5")
    p.add_argument("run", help="run folder (full model or LoRA adapter) or a model folder / hub id")
    p.add_argument("--instructions", default="tatsu-lab/alpaca_eval",
                   help="tatsu-lab/alpaca_eval or a .json/.jsonl file")
    p.add_argument("--out", default=None, help="default: results/<run name>/alpaca_eval_outputs.json")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .evaluation.common import RunInfo
    from .evaluation.generation import generate_outputs

    run = RunInfo.from_path(args.run)
    out = args.out or f"results/{run.name}/alpaca_eval_outputs.json"
    path = generate_outputs(run.model, out, adapter=run.adapter, generator=run.name, instructions=args.instructions,
                            limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
                            backend=args.backend, dtype=args.dtype, chat_template=run.chat_template)
    print(f"outputs: {path}")
    return 0


def table(argv: list[str] | None = None) -> int:
    p = _parser("aot-table", "Render one of the paper's tables (1-10, or 'tiny') from results/ to Markdown, CSV "
                "and LaTeX (<results-dir>/tables/table<N>.{md,csv,tex}); the Markdown is printed.",
                "  aot-table 1\n  aot-table 1 --alpaca-metric win_rate")
    p.add_argument("table", help="1-10 or tiny")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out-dir", default=None, help="default: <results-dir>/tables")
    p.add_argument("--alpaca-metric", choices=["lc_win_rate", "win_rate"], default="lc_win_rate",
                   help="AlpacaEval column: length-controlled (the paper's Table 1, default) or raw win rate")
    args = p.parse_args(argv)
    from .tables import render

    paths = render(args.table, args.results_dir, args.out_dir, alpaca_metric=args.alpaca_metric)
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def plot(argv: list[str] | None = None) -> int:
    p = _parser("aot-plot", "Paper Fig. 1 for one or several runs: held-out reward quantiles (1a) and margin "
                "quantiles (1b); or Fig. 2 (batch size, penalty) from the results of aot-reproduce. Held-out "
                "pairs: --data (json/jsonl with prompt, chosen, rejected), else the tiny task's paired test split "
                "(tiny runs), else the test split of the first run's recipe; all runs are scored on the same rows.",
                "  aot-plot runs/tiny-aot_unpaired runs/tiny-dpo      # -> results/plots/fig1{a,b}.png\n"
                "  aot-plot runs/merlinite-7b-aot_unpaired --data heldout_pairs.jsonl --max-rows 1000\n"
                "  aot-plot --fig2 results/reproduce-tiny             # -> results/reproduce-tiny/plots/fig2.png")
    p.add_argument("runs", nargs="*")
    p.add_argument("--fig2", metavar="RESULTS_DIR", default=None, help="Fig. 2 from this results folder instead")
    p.add_argument("--data", default=None)
    p.add_argument("--max-rows", type=int, default=512)
    p.add_argument("--beta", type=float, default=None, help="default: each run's recipe beta")
    p.add_argument("--out-dir", default="results/plots")
    args = p.parse_args(argv)
    if args.fig2:
        from .evaluation.common import load_results
        from .tiny import figure2

        print(f"Fig. 2: {figure2(load_results(args.fig2), f'{args.fig2}/plots/fig2.png')}")
        return 0
    if not args.runs:
        p.error("give one or more run folders (Fig. 1), or --fig2 RESULTS_DIR")
    from .heldout import heldout_rows, run_statistics
    from .plots import figure1

    rows = heldout_rows(args.runs[0], args.data, max_rows=args.max_rows)
    stats = {}
    for run in args.runs:
        stats[run.rstrip("/").split("/")[-1]] = s = run_statistics(run, rows, beta=args.beta)
        print(f"{run}: reward accuracy {s['reward_accuracy']:.3f}, FSD violation (rewards) "
              f"{s['rewards_fsd']['fsd_violation_share']:.3f}, "
              f"(margins) {s['margins_fsd']['fsd_violation_share']:.3f}")
    paths = figure1(stats, args.out_dir)
    print(f"Fig. 1a: {paths['a']}\nFig. 1b: {paths['b']}")
    return 0


def pairs(argv: list[str] | None = None) -> int:
    p = _parser("aot-pairs", "On-policy preference data: sample k answers per prompt from a model or run folder, "
                "score them (tiny program judge, a reward model, or an OpenAI-compatible judge) and write paired "
                "and unpaired training data with provenance; resumable. With `rounds: N` it alternates this stage "
                "and training (see aot_handbook.pairs).",
                "  aot-pairs recipes/tiny/pairs.yaml --k 4")
    p.add_argument("recipe", help="a pairs recipe (YAML; keys: aot_handbook.pairs.PairsConfig)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--key value", help="any recipe key overridden")
    args = p.parse_args(argv)
    from .pairs import main as pairs_main

    try:
        pairs_main(args.recipe, args.overrides)
    except (ValueError, FileNotFoundError) as err:  # a bad recipe, override, file, column or key: the message names it
        sys.exit(f"error: {err}")
    return 0


def compare(argv: list[str] | None = None) -> int:
    from .compare import main

    return main(argv)


def sweep(argv: list[str] | None = None) -> int:
    from .sweep import main

    return main(argv)


def validate(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the hub libraries are imported: nothing is downloaded
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .validate import main

    return main(argv)


def reproduce(argv: list[str] | None = None) -> int:
    from .reproduce import main

    return main(argv)


def gpu_check(argv: list[str] | None = None) -> int:
    from .gpu_check import main

    return main(argv)


COMMANDS = {"train": train, "eval": evaluate, "generate": generate, "table": table, "plot": plot,
            "compare": compare, "pairs": pairs, "sweep": sweep, "validate": validate, "reproduce": reproduce,
            "gpu-check": gpu_check}


def main(argv: list[str] | None = None) -> int:
    """``python -m aot_handbook.cli <command> [args]``: the console script ``aot-<command>``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python -m aot_handbook.cli {{{','.join(COMMANDS)}}} [args]  (the console scripts "
                 f"aot-<command>; aot-<command> --help for each)")
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
