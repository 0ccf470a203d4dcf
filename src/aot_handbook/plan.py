"""What runs before what: a recipe's ``requires`` and a pairs recipe's ``rounds``, as a plan of stages run in order.

A stage builds one thing from one recipe: a training run (``training.train``: one recipe -> one run folder), a
dataset (``pairs.build``: one pairs recipe -> one data folder), or, between two rounds, a LoRA policy merged into
a plain model folder. :func:`plan` turns a recipe into its stages, every recipe it ``requires`` (recursively, each
once) before the recipe itself, and parses and checks them all before anything runs: a bad key in the last recipe
fails before the first stage trains. :func:`make` runs a plan: a stage whose output is complete already (a run
folder with ``run.json``, a data folder with ``provenance.json``) is skipped, so an interrupted plan resumes; the
last stage, the recipe asked for, always runs (a training run of the same fingerprint then does nothing).

Rounds (a pairs recipe with ``rounds: N`` and a ``train_recipe``) are a plan too: round r's data stage samples from
round r-1's policy (round 1 from ``model``), its training stage trains ``train_recipe`` from that policy on that
data (``train_overrides`` on top), and a LoRA policy is merged for the next round, which also takes it as its
reference; ``rounds.json`` summarizes them at the end. Folders: ``<output_dir>/round<r>/{data,policy}``.

    plan.train("recipes/tiny/onpolicy/aot_paired.yaml")   # SFT run, on-policy data, then the AOT run
    plan.make("recipes/tiny/onpolicy/rounds.pairs.yaml")  # the SFT run, then data/train/merge per round
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, user_errors
from .io import write_json
from .pairs import build, parse_pairs_recipe
from .pairs import check_inputs as check_data_inputs
from .recipe import NOUNS, parse_recipe, recipe_kind
from .run_folder import RunInfo, is_complete
from .training import check_paths, say
from .training import train as train_one

STAGE_KINDS = ("train", "data", "merge", "rounds")


@dataclass(frozen=True)
class Stage:
    """One step of a plan: ``kind`` (train, data, merge, rounds) of ``recipe`` with ``overrides``, writing
    ``output`` (a run folder, a data folder, a merged model folder, a rounds folder)."""

    kind: str
    recipe: str
    overrides: tuple[str, ...]
    output: Path

    def done(self) -> bool:
        """Whether the output is complete, so a plan may skip this stage."""
        if self.kind == "train":
            return is_complete(self.output)
        if self.kind == "data":
            return (self.output / "provenance.json").is_file()
        if self.kind == "merge":
            return (self.output / "config.json").is_file()
        return False  # rounds.json is rewritten from what the rounds left

    def run(self) -> Path:
        if self.kind == "train":
            return train_one(self.recipe, list(self.overrides))
        if self.kind == "data":
            return build(self.recipe, list(self.overrides))
        if self.kind == "merge":
            return merge_adapter(Path(self.recipe), self.output)
        return write_rounds(self.recipe, list(self.overrides))

    def describe(self) -> str:
        return f"{self.kind} {self.recipe}" + (f" ({' '.join(self.overrides)})" if self.overrides else "")


def plan(recipe_path: str, overrides: list[str] | tuple[str, ...] = (), *,
         parse_with: list[str] | tuple[str, ...] = (), check_inputs: bool = True) -> list[Stage]:
    """The stages that build ``recipe_path`` (a training or pairs recipe), its ``requires`` first; every recipe
    parsed (``UserError`` naming the file and key) and, with ``check_inputs``, every input (model, tokenizer,
    prompt file) that no earlier stage builds checked to exist. ``parse_with``: overrides added when parsing
    training recipes only (validation of GPU recipes on a CPU machine), not stored in the stages."""
    stages: list[Stage] = []
    with user_errors():
        _add(str(recipe_path), tuple(overrides), stages, _Options(tuple(parse_with), check_inputs), chain=())
    return stages


@dataclass(frozen=True)
class _Options:
    parse_with: tuple
    check_inputs: bool


def _add(path: str, overrides: tuple, stages: list[Stage], opts: _Options, chain: tuple) -> None:
    if path in chain:
        raise UserError(f"{path}: requires itself ({' -> '.join([*chain, path])})")
    kind = recipe_kind(path)
    if kind == "train":
        recipe = parse_recipe(path, [*overrides, *opts.parse_with])
        requires, output = recipe.recipe.requires, Path(recipe.training.output_dir)
    elif kind == "pairs":
        cfg = parse_pairs_recipe(path, list(overrides))
        requires, output = cfg.requires, Path(cfg.output_dir)
    else:
        where = f"{chain[-1]}: key 'requires': " if chain else ""
        raise UserError(f"{where}{path} is a {NOUNS[kind]}; a plan builds training and pairs recipes only")
    for required in requires or []:
        if not Path(required).is_file():
            raise UserError(f"{path}: key 'requires': recipe not found: {required}")
        if not any(s.recipe == str(required) and not s.overrides for s in stages):
            _add(str(required), (), stages, opts, (*chain, path))
    pending = tuple(s.output for s in stages)
    if kind == "train":
        _check_output(path, output, stages)
        if opts.check_inputs:
            check_paths(recipe, pending)
        stages.append(Stage("train", path, overrides, output))
    elif cfg.rounds:
        stages += _rounds(path, overrides, cfg, stages, opts)
    else:
        _check_output(path, output, stages)
        if opts.check_inputs:
            check_data_inputs(cfg, pending)
        stages.append(Stage("data", path, overrides, output))


def _check_output(path: str, output: Path, stages: list[Stage]) -> None:
    """An output folder that is an earlier stage's output, or inside it, would overwrite an input."""
    out = output.resolve()
    for s in stages:
        if s.kind in ("train", "data") and (out == s.output.resolve() or s.output.resolve() in out.parents):
            what = "run" if s.kind == "train" else "data stage"
            raise UserError(f"{path}: output_dir '{output}' is the output of the required {what} {s.recipe} "
                            "or inside it")


def _rounds(path: str, overrides: tuple, cfg, stages: list[Stage], opts: _Options) -> list[Stage]:
    """The stages of ``rounds`` iterations: data (from the current policy), train (from it, on that data), and a
    merge of a LoRA policy into the next round's model."""
    train_overrides = [str(x) for x in cfg.train_overrides or []]
    root, model, out = Path(cfg.output_dir), cfg.model, []
    for r in range(1, cfg.rounds + 1):
        data, policy = root / f"round{r}" / "data", root / f"round{r}" / "policy"
        data_args = (*overrides, "--rounds", "0", "--requires", "null", "--model", model, "--output_dir", str(data),
                     "--seed", str(cfg.seed + r - 1))
        mixture = {"datasets": [{"data_files": {"train": str(data / f"{cfg.round_data}.jsonl")}, "test_split": None}]}
        train_args = (*train_overrides, "--model_name_or_path", model, "--dataset_mixture", json.dumps(mixture),
                      "--output_dir", str(policy))
        recipe = parse_recipe(cfg.train_recipe, [*train_args, *opts.parse_with])  # checked before round 1
        for required in recipe.recipe.requires or []:  # the training recipe's own requires, each once
            if not any(s.recipe == str(required) and not s.overrides for s in [*stages, *out]):
                _add(str(required), (), stages, opts, (path,))
        round_cfg = parse_pairs_recipe(path, list(data_args))
        if opts.check_inputs:
            earlier = (*(s.output for s in stages), *(s.output for s in out))
            check_data_inputs(round_cfg, earlier)
            check_paths(recipe, (*earlier, data))
        out += [Stage("data", path, data_args, data), Stage("train", cfg.train_recipe, train_args, policy)]
        if recipe.model.use_peft:  # the next round samples from, and trains, a plain model folder
            out.append(Stage("merge", str(policy), (), policy / "merged"))
            model = str(policy / "merged")
        else:
            model = str(policy)
    return [*out, Stage("rounds", path, overrides, root)]


def merge_adapter(run: Path, out: Path) -> Path:
    """A LoRA run folder merged into a plain model folder ``out`` (written whole, then renamed into place)."""
    from .generation import load_model_and_tokenizer

    info = RunInfo.from_path(run)
    lm, tokenizer = load_model_and_tokenizer(info.model, info.adapter, dtype="float32")
    tmp = out.with_name(f".{out.name}.tmp")
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(out)
    return out


def write_rounds(recipe_path: str, overrides: list[str]) -> Path:
    """``rounds.json``: each round's data counts and the held-out task accuracy its policy reached; printed too."""
    cfg = parse_pairs_recipe(recipe_path, overrides)
    root, model, results = Path(cfg.output_dir), cfg.model, []
    for r in range(1, cfg.rounds + 1):
        data, policy = root / f"round{r}" / "data", root / f"round{r}" / "policy"
        metrics = json.loads((policy / "metrics.json").read_text())
        provenance = json.loads((data / "provenance.json").read_text())
        results.append({"round": r, "sampled_from": model, "data": str(data), "policy": str(policy),
                        "counts": provenance["counts"], "task_accuracy": metrics.get("task_accuracy")})
        model = str(policy / "merged") if (policy / "adapter_config.json").is_file() else str(policy)
    path = write_json(root / "rounds.json", results)
    for res in results:
        acc = (res["task_accuracy"] or {}).get("aligned", {}).get("accuracy")
        print(f"[aot-handbook] round {res['round']}: {res['counts']}"
              + (f", held-out task accuracy after training {acc:.3f}" if acc is not None else ""))
    return path


def make(recipe_path: str, overrides: list[str] | None = None, *, requires_only: bool = False) -> Path | None:
    """Build what a training or pairs recipe describes, after whatever it requires that is missing: the stages of
    :func:`plan`, run in order. Returns the last stage's output (the run folder, the data folder, ``rounds.json``).
    ``requires_only``: only what it requires that is missing (every stage but the last; e.g. the SFT run, built
    once before several runs that start from it train side by side, ``aot-reproduce --jobs``; None when it requires
    nothing)."""
    stages = plan(recipe_path, overrides or [])
    if requires_only:
        stages = stages[:-1]
        if not stages:
            return None
    result = None
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1 and not requires_only
        if stage.kind == "train":  # every rank of a multi-process launch trains
            if last or not stage.done():
                if not last:
                    say(f"[aot-handbook] {recipe_path} requires {stage.recipe}: training it first")
                result = stage.run()
            continue
        with _main_process_first():  # data and merges: the main process builds, the others find them done
            if last or not stage.done():
                if stage.kind == "data" and not last and stage.recipe != recipe_path:
                    say(f"[aot-handbook] {recipe_path} requires {stage.recipe}: building its data first")
                result = stage.run()
    return Path(result) if result is not None else stages[-1].output


def train(recipe_path: str, overrides: list[str] | None = None) -> Path:
    """Train a training recipe into its run folder, after whatever it ``requires`` that is missing (``aot-train``;
    ``from aot_handbook import train``). Returns the run folder."""
    if recipe_kind(recipe_path) != "train":
        raise UserError(f"{recipe_path}: a {NOUNS[recipe_kind(recipe_path)]}, not a training recipe")
    return make(recipe_path, overrides)


class _main_process_first:
    """Run the block on the main process first, then on the others (a multi-process launch), else just run it."""

    def __enter__(self):
        self._ctx = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self._ctx = PartialState().main_process_first()
            self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc) if self._ctx is not None else False
