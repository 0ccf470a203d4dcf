"""The command line: every ``aot-*`` console script (setup.cfg ``[options.entry_points]``), in one place.

Each command is a parser-builder and a run function (:data:`COMMANDS`); the run function parses nothing and
calls the library (``plan``, ``evaluation``, ``tables``, ``tooling``, ...). Its docstring is the command's
``--help``: a description, then its examples. Each command is also ``python -m aot_handbook.cli <command> ...``
(command: the name without ``aot-``), which is what multi-process launches use (``accelerate launch -m
aot_handbook.cli train RECIPE``) and what sweeps run. Paths given on the command line (recipes, runs, results)
are relative to the working directory; nothing here looks for a repository checkout.

Errors (:func:`run_command`, the one place): the convention of ``aot_handbook.errors``. A ``UserError`` (a
``ValueError`` for something the user can fix: a recipe key, a file, a column, a run), an ``OSError`` (a path, a
disk), a YAML error, a JSON file that does not parse or a safetensors file that cannot be read or written (a
corrupt or cut-short file, a full disk) is printed as ``error: <message>``, on one line, and the command exits 1;
an interrupt (Ctrl-C) exits 130 with ``interrupted``; a usage error exits 2 (argparse). Anything else is a bug or
a failure of long work (a NaN during training) and keeps its traceback; ``AOT_HANDBOOK_TRACEBACK=1`` shows the
traceback of user errors too. Library code raises ``UserError``, or runs its input checks inside
``errors.user_errors()``.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError, user_errors

# ---------------------------------------------------------------- the commands


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--key value",
                   help="any recipe key overridden, e.g. --beta 0.05 --output_dir runs/x "
                        "(a bare --flag sets a boolean key true)")


def train_parser(p):
    p.add_argument("recipe", help="a training recipe (YAML), e.g. one under recipes/<model>/")
    _overrides(p)


def run_train(args) -> None:
    """Train one recipe into its run folder (output_dir): the recipe's `method` picks the trainer; a recipe it
    `requires` whose run (or data) is missing is built first (aot_handbook.plan).

    Example:
      aot-train recipes/tiny/aot_unpaired.yaml --max_steps 20 --beta 0.05
      accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml -m aot_handbook.cli train \\
          recipes/merlinite-7b/aot_unpaired.yaml
    """
    from .plan import train

    train(args.recipe, args.overrides)


def pairs_parser(p):
    p.add_argument("recipe", help="a pairs recipe (*.pairs.yaml; keys: aot_handbook.pairs.PairsConfig)")
    _overrides(p)


def run_pairs(args) -> None:
    """On-policy preference data: sample k answers per prompt from a model or run folder, score them (a task's
    program judge, a reward model, or an OpenAI-compatible judge) and write paired and unpaired training data with
    provenance; resumable. A recipe it `requires` is built first; with `rounds: N` it alternates this stage and
    training (aot_handbook.plan).

    Example:
      aot-pairs recipes/tiny/sft.pairs.yaml --num_samples 4
      aot-pairs recipes/tiny/onpolicy/rounds.pairs.yaml
    """
    from .plan import make
    from .recipe import read_recipe

    read_recipe(args.recipe, "pairs")
    make(args.recipe, args.overrides)


def eval_parser(p):
    p.add_argument("run", help="a run folder, or a base model (folder or hub id: the tables' base row)")
    p.add_argument("eval", help="an evaluation recipe (*.eval.yaml), e.g. one under recipes/eval/")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--allow-incomplete", action="store_true", help="evaluate a run folder without run.json")


def run_eval(args) -> None:
    """Evaluate one run with one evaluation recipe: writes results/<run name>/<eval name>.json (and its
    per-sample scores) and prints a summary.

    Example:
      aot-eval runs/tiny-aot_unpaired recipes/eval/tiny.eval.yaml
      aot-eval runs/merlinite-7b-aot_unpaired recipes/eval/alpaca_eval_llama3_70b.eval.yaml
    """
    from .evaluation import evaluate

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    evaluate(args.run, args.eval, results_dir=args.results_dir, allow_incomplete=args.allow_incomplete)


def generate_parser(p):
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


def run_generate(args) -> None:
    """AlpacaEval generations of a run (or a model), in alpaca_eval's format; resumable.

    Example:
      aot-generate runs/merlinite-7b-aot_unpaired --out results/merlinite-7b-aot_unpaired/outputs.json
      aot-generate runs/tiny-sft --instructions .cache/tiny/v2-seed0/data/eval_prompts.jsonl --max-new-tokens 5
    """
    from .evaluation.pipeline import check_run_path
    from .generation import generate_outputs
    from .run_folder import RunInfo

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        check_run_path(args.run)
        run = RunInfo.from_path(args.run)
    out = args.out or f"results/{run.name}/alpaca_eval_outputs.json"
    path = generate_outputs(run.model, out, adapter=run.adapter, generator=run.name, instructions=args.instructions,
                            limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
                            backend=args.backend, dtype=args.dtype, chat_template=run.chat_template)
    print(f"outputs: {path}")


def table_parser(p):
    p.add_argument("table", help="1-10 (the paper's), or a layout a task provides")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out-dir", default=None, help="default: <results-dir>/tables")
    p.add_argument("--alpaca-metric", choices=["lc_win_rate", "win_rate"], default="lc_win_rate",
                   help="AlpacaEval column: length-controlled (the paper's Table 1, default) or raw win rate")


def run_table(args) -> None:
    """Render one of the paper's tables (1-10), or a task's layout (e.g. tiny, tiny1), from the result files to
    Markdown, CSV and LaTeX (<results-dir>/tables/table<N>.{md,csv,tex}); the Markdown is printed.

    Example:
      aot-table 1
      aot-table 1 --alpaca-metric win_rate
      aot-table tiny1 --results-dir results/reproduce-tiny
    """
    from .tables import render

    with user_errors():
        paths = render(args.table, args.results_dir, args.out_dir, alpaca_metric=args.alpaca_metric)
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))


def plot_parser(p):
    p.add_argument("runs", nargs="*")
    p.add_argument("--figure", metavar="NAME", default=None,
                   help="a task's figure drawn from --results-dir instead (e.g. fig2) -> <results-dir>/plots/NAME.png")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--data", default=None)
    p.add_argument("--max-rows", type=int, default=512)
    p.add_argument("--beta", type=float, default=None, help="default: each run's recipe beta")
    p.add_argument("--out-dir", default="results/plots")


def run_plot(args) -> None:
    """Paper Fig. 1 for one or several runs: held-out reward quantiles (1a) and margin quantiles (1b); or, with
    --figure, a figure a task draws from results (e.g. fig2: Fig. 2, batch size and penalty, from the results of
    aot-reproduce). Held-out pairs: --data (json/jsonl with prompt, chosen, rejected), else the run's task's
    held-out pairs, else the test split of the first run's recipe; all runs are scored on the same rows.

    Example:
      aot-plot runs/tiny-aot_unpaired runs/tiny-dpo      # -> results/plots/fig1{a,b}.png
      aot-plot runs/merlinite-7b-aot_unpaired --data heldout_pairs.jsonl --max-rows 1000
      aot-plot --figure fig2 --results-dir results/reproduce-tiny   # -> results/reproduce-tiny/plots/fig2.png
    """
    if args.figure:
        from .evaluation.results import load_results
        from .tasks import task_for_figure, tasks

        task = task_for_figure(args.figure)
        if task is None:
            raise UserError(f"--figure {args.figure!r}: no task draws it (figures: "
                            f"{sorted(f for t in tasks() for f in t.figure_names)})")
        path = Path(args.results_dir) / "plots" / f"{args.figure}.png"
        print(f"{args.figure}: {task.figure(args.figure, load_results(args.results_dir), path)}")
        return
    if not args.runs:
        raise UserError("give one or more run folders (Fig. 1), or --figure NAME")
    from .heldout import heldout_rows, run_statistics
    from .plots import figure1

    for run in args.runs:  # before anything loads: each is a run folder
        if not (Path(run) / "recipe.json").is_file():
            raise UserError(f"{run}: not a run folder (no recipe.json)" if Path(run).is_dir()
                            else f"{run}: no such run folder")
    with user_errors():
        rows = heldout_rows(args.runs[0], args.data, max_rows=args.max_rows)
    stats = {}
    for run in args.runs:
        stats[run.rstrip("/").split("/")[-1]] = s = run_statistics(run, rows, beta=args.beta)
        print(f"{run}: reward accuracy {s['reward_accuracy']:.3f}, FSD violation (rewards) "
              f"{s['rewards_fsd']['fsd_violation_share']:.3f}, "
              f"(margins) {s['margins_fsd']['fsd_violation_share']:.3f}")
    paths = figure1(stats, args.out_dir)
    print(f"Fig. 1a: {paths['a']}\nFig. 1b: {paths['b']}")


def compare_parser(p):
    from .evaluation.results import RESULTS_DIR

    p.add_argument("runs", nargs="*", help="run folders (or their names under results/), or NAME=RUN,RUN,... for "
                                           "one model of several runs (seeds)")
    p.add_argument("--eval", default=None, help="evaluation recipe (*.eval.yaml) or its name; "
                                                "default: the one evaluation all runs share")
    p.add_argument("--metrics", nargs="*", default=None, help="score columns (default: all in the per-sample scores)")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--out-dir", default=None, help="default: <results-dir>/compare/<eval>")
    p.add_argument("--order", type=int, choices=[1, 2], default=1, help="first- or second-order dominance")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error level, in (0, 1)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="A > B when eps(A, B) is significantly below this (in (0, 0.5]; 0.5: A dominates B on more "
                        "than half the squared distance; 0.2-0.4: a stronger claim)")
    p.add_argument("--n-boot", type=int, default=1000, help="resamples (raised to what Holm over the pairs needs)")
    p.add_argument("--paired", choices=["auto", "yes", "no"], default="auto",
                   help="auto/yes: paired over prompts, an error when the runs answered different prompts; "
                        "no: unpaired")
    p.add_argument("--intersect", action="store_true",
                   help="runs with different prompt sets: pair them on the prompts every run answered (the count "
                        "is printed and written under the tables)")
    p.add_argument("--correction", choices=["holm", "bonferroni", "none"], default="holm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--joint", action="store_true",
                   help="also rank on all metrics at once (multivariate dominance; e.g. per-attribute scores)")
    g = p.add_argument_group("--plan (power and planning; docs/DOMINANCE.md)")
    g.add_argument("--plan", action="store_true",
                   help="report the smallest difference detectable (mean score, the metric's units) with the prompts "
                        "and seeds at hand, and the prompts or seeds a --target difference needs; from the runs' "
                        "scores as a pilot, or from --sd/--seed-sd without runs")
    g.add_argument("--target", type=float, default=None, help="the difference of means to detect")
    g.add_argument("--power", type=float, default=0.8, help="the power wanted (default 0.8)")
    g.add_argument("--prompts", type=int, default=None, help="plan for this many prompts (default: the pilot's)")
    g.add_argument("--seeds", type=int, default=None, help="plan for this many runs per model (default: the pilot's)")
    g.add_argument("--pairs", type=int, default=None,
                   help="pairs in the planned comparison (Holm's first step: alpha / pairs); default: the pilot's")
    g.add_argument("--sd", type=float, default=None, help="stated: sd over prompts of the per-prompt difference")
    g.add_argument("--seed-sd", type=float, default=None, help="stated: sd of a run's mean score over seeds")


def run_compare(args) -> None:
    """Which run is better, and how sure: every pair of runs tested on its own violation ratio (directional
    verdicts, Holm over the pairs), on their per-sample scores (docs/DOMINANCE.md). A model trained with several
    seeds is NAME=RUN,RUN,...: its verdicts then include the seed variance. --plan: how many prompts or seeds a
    difference needs, instead of a test.

    Example:
      aot-compare runs/a runs/b runs/c --eval recipes/eval/tiny.eval.yaml --metrics tiny:accuracy
      aot-compare aot=runs/aot-s0,runs/aot-s1,runs/aot-s2 dpo=runs/dpo-s0,runs/dpo-s1,runs/dpo-s2 --eval tiny
      aot-compare --plan runs/a runs/b --eval tiny --target 2       # from pilot runs
      aot-compare --plan --sd 45 --seed-sd 1 --prompts 805 --seeds 3 --target 3   # stated sizes
    """
    from .compare import compare, plan

    with user_errors(KeyError):  # a run, metric or evaluation that is not there; bad scores, alpha, sizes
        if args.plan:
            print(plan(args.runs, eval_name=args.eval, metrics=args.metrics, results_dir=args.results_dir,
                       alpha=args.alpha, power_wanted=args.power, target=args.target, prompts=args.prompts,
                       seeds=args.seeds, pairs=args.pairs, sd=args.sd, seed_sd=args.seed_sd))
            return
        res = compare(args.runs, eval_name=args.eval, metrics=args.metrics, results_dir=args.results_dir,
                      out_dir=args.out_dir, order=args.order, alpha=args.alpha, threshold=args.threshold,
                      n_boot=args.n_boot, paired=args.paired, intersect=args.intersect,
                      correction=args.correction, seed=args.seed, joint=args.joint)
    for note in res["notes"]:
        print(note)
    print(res["paths"]["compare.md"].read_text())
    print(res["paths"]["compare_pairs.md"].read_text())
    if args.joint:
        print(res["paths"]["compare_joint.md"].read_text())
    print("written: " + ", ".join(str(x) for x in [*res["paths"].values(), *res["figures"].values()]))


def sweep_parser(p):
    p.add_argument("sweep", help="a sweep (*.sweep.yaml), e.g. recipes/ablations/penalty.sweep.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--slurm", action="store_true",
                   help="submit each run with sbatch slurm_launch.sh (installed with the package)")
    p.add_argument("--only", default=None, help="run only the runs whose name contains this text")
    p.add_argument("--force", action="store_true", help="rerun runs that already completed")


def run_sweep(args) -> int:
    """Run a sweep: one training run per override set of the sweep file (format: aot_handbook.tooling.sweep), each
    named after its overrides with its own output_dir; completed runs are skipped. Every run is checked before any
    starts; exit 1 when a run failed.

    Example:
      aot-sweep recipes/ablations/penalty.sweep.yaml --dry-run
    """
    from .tooling.sweep import run_sweep

    return 1 if run_sweep(args.sweep, dry_run=args.dry_run, slurm=args.slurm, only=args.only, force=args.force) else 0


def validate_parser(p):
    p.add_argument("paths", nargs="*", default=["recipes"],
                   help="files or folders (default: recipes, relative to the working directory)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the total")
    p.add_argument("--launcher", action="append", default=None, metavar="ACCELERATE_CONFIG",
                   help="check recipes and sweeps against this accelerate config (repeatable; default: "
                        "every accelerate config among the files validated)")


def run_validate(args) -> None:
    """Validate recipes, pairs recipes, sweeps, grids, evaluation recipes and accelerate configs offline (each by
    its file name's kind): loads no weights and no data, downloads nothing; stops at the first bad file with an
    error naming the file and the key (exit 1).

    Example:
      aot-validate recipes/tiny recipes/accelerate_configs
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the hub libraries are imported: nothing is downloaded
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .tooling.validate import validate_paths

    checked = validate_paths(args.paths, args.launcher, say=(lambda _: None) if args.quiet else print)
    print(f"{len(checked)} file(s) valid")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {text!r}")
    return int(text)


def reproduce_parser(p):
    p.add_argument("spec", help="the grid's spec file (*.grid.yaml), relative to the working directory")
    p.add_argument("--quick", action="store_true", help="the spec's smoke grid (one seed, a few steps)")
    p.add_argument("--only", default=None, help="only the runs whose name contains this text")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")
    p.add_argument("--regime", choices=("all", "offline", "onpolicy"), default="all",
                   help="the offline grid, the on-policy regime (data stage, runs, rounds), or both")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="train N runs at a time, each in a child process on one thread (what they require, e.g. "
                        "the SFT run, is built first; the outputs are those of --jobs 1); default 1")


def run_reproduce(args) -> int:
    """Reproduce the paper's claims on a task: train and evaluate a grid's runs, then the task's tables, figures
    and judged claims (resumable: finished cells are skipped); exit 1 when a cell failed.

    Example:
      aot-reproduce recipes/tiny/reproduce.grid.yaml --dry-run
      aot-reproduce recipes/tiny/reproduce.grid.yaml --quick     # one seed, 3 steps per run
      aot-reproduce recipes/tiny/reproduce.grid.yaml --jobs 2    # two runs at a time (2 cores)
    """
    from .tooling.reproduce import dry_run, load, reproduce

    grid = load(args.spec, quick=args.quick)
    offline, onpolicy = args.regime in ("all", "offline"), args.regime in ("all", "onpolicy")
    if args.dry_run:
        dry_run(grid, offline=offline, onpolicy=onpolicy)
        return 0
    return 1 if reproduce(grid, offline=offline, onpolicy=onpolicy, only=args.only, jobs=args.jobs) else 0


def gpu_check_parser(p):
    p.add_argument("--no-vllm", action="store_true", help="skip the vLLM check")


def run_gpu_check(args) -> int:
    """What only a GPU exercises: bf16 AOT steps, one row per pair, the flash-attention fallback, paged AdamW,
    QLoRA, vLLM, peak memory (< 10 min). Without a GPU it prints 'no GPU: skipped' and exits 0; 1 when a check
    failed.

    Example:
      aot-gpu-check --no-vllm
    """
    from .tooling.gpu_check import gpu_check

    return gpu_check(vllm=not args.no_vllm)


def judge_server_parser(p):
    p.add_argument("--task", required=True, help="the registered task (aot_handbook.tasks) whose judge answers")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--model-name", default="program-judge")


def run_judge_server(args) -> None:
    """An OpenAI-compatible judge server on 127.0.0.1 answering with a task's program judge, for offline
    AlpacaEval runs and the data stage's openai_judge scorer (aot_handbook.evaluation.judge_server); Ctrl-C
    stops it.

    Example:
      aot-judge-server --task tiny --port 8011 &
    """
    from .evaluation.judge_server import serve_forever
    from .tasks import get_task

    with user_errors():
        task = get_task(args.task)
    serve_forever(task.judge, args.port, args.model_name)


@dataclass(frozen=True)
class Command:
    add_arguments: Callable  # the parser-builder: adds the command's arguments to a parser
    run: Callable  # args -> exit code (None: 0); its docstring is the command's help


COMMANDS: dict[str, Command] = {
    "train": Command(train_parser, run_train),
    "pairs": Command(pairs_parser, run_pairs),
    "eval": Command(eval_parser, run_eval),
    "generate": Command(generate_parser, run_generate),
    "table": Command(table_parser, run_table),
    "plot": Command(plot_parser, run_plot),
    "compare": Command(compare_parser, run_compare),
    "sweep": Command(sweep_parser, run_sweep),
    "validate": Command(validate_parser, run_validate),
    "reproduce": Command(reproduce_parser, run_reproduce),
    "gpu-check": Command(gpu_check_parser, run_gpu_check),
    "judge-server": Command(judge_server_parser, run_judge_server),
}


# ---------------------------------------------------------------- the one place errors become messages


def parser(name: str) -> argparse.ArgumentParser:
    """``aot-<name>``'s parser: the run function's docstring is its description and examples."""
    command = COMMANDS[name]
    doc = inspect.getdoc(command.run) or ""
    description, _, example = doc.partition("\nExample:\n")
    p = argparse.ArgumentParser(prog=f"aot-{name}", description=description.strip(),
                                epilog=f"example:\n{example}" if example else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(p)
    return p


def one_line(err: BaseException) -> str:
    """The error's message on one line (a YAML error's marks and a subprocess's output included)."""
    return re.sub(r"\s*\n\s*", " ", str(err)).strip() or type(err).__name__


def run_command(name: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` for ``aot-<name>`` and run it; user errors become one line and exit code 1, an interrupt
    130 (see the module docstring). Returns the exit code."""
    import json

    import yaml
    from safetensors import SafetensorError

    args = parser(name).parse_args(argv)
    try:
        return COMMANDS[name].run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError, yaml.YAMLError, json.JSONDecodeError, SafetensorError) as err:
        if os.environ.get("AOT_HANDBOOK_TRACEBACK"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m aot_handbook.cli <command> [args]``: the console script ``aot-<command>``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m aot_handbook.cli {{{','.join(COMMANDS)}}} [args]  (the console scripts "
              f"aot-<command>; aot-<command> --help for each)", file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:])


# The console scripts (setup.cfg): aot-<command> = aot_handbook.cli:<command, - as _>
def train(argv=None): return run_command("train", argv)  # noqa: E704
def pairs(argv=None): return run_command("pairs", argv)  # noqa: E704
def evaluate(argv=None): return run_command("eval", argv)  # noqa: E704
def generate(argv=None): return run_command("generate", argv)  # noqa: E704
def table(argv=None): return run_command("table", argv)  # noqa: E704
def plot(argv=None): return run_command("plot", argv)  # noqa: E704
def compare(argv=None): return run_command("compare", argv)  # noqa: E704
def sweep(argv=None): return run_command("sweep", argv)  # noqa: E704
def validate(argv=None): return run_command("validate", argv)  # noqa: E704
def reproduce(argv=None): return run_command("reproduce", argv)  # noqa: E704
def gpu_check(argv=None): return run_command("gpu-check", argv)  # noqa: E704
def judge_server(argv=None): return run_command("judge-server", argv)  # noqa: E704


if __name__ == "__main__":
    sys.exit(main())
