"""Sweeps: one base recipe (or several) plus a file of overrides -> named runs, each its own output_dir.

A sweep file (``*.sweep.yaml``, e.g. recipes/ablations/penalty.sweep.yaml)::

    base: recipes/merlinite-7b/aot_unpaired.yaml   # a recipe path, or a list of them
    output_root: runs/ablations/penalty            # optional; default runs/sweeps/<sweep file stem>
    fixed: {aot_global_sort: false}                # optional: overrides applied to every run
    grid:                                          # optional: the cartesian product of these values
      aot_penalty: [logistic, hinge, squared_hinge, least_squares]
    runs:                                          # optional: a list of override mappings, one run each
      - {aot_sort: hard}                           #   (with a grid too: every run x every grid point)
    launch:                                        # optional: how to start each run
      accelerate_config: recipes/accelerate_configs/fsdp.yaml
      num_processes: 8

Each run is named after its base recipe and the overrides that vary (``fixed`` ones are left out of
the name), e.g. ``merlinite-7b-aot_unpaired-penalty_hinge``; its ``output_dir`` is
``<output_root>/<name>`` and its ``run_name`` is the name. Every override key is checked against the
base recipe's method before anything launches, and every run is parsed as it will run: an unknown
key or a bad value is an error naming the key and the sweep file.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..recipe import read_recipe
from ..run_folder import config_identity, fingerprint_changes, is_complete, read_fingerprint

SWEEP_KEYS = {"base", "output_root", "fixed", "grid", "runs", "launch"}
# `--slurm`: each run is one `sbatch` of this launcher (installed with the package; see its header)
SLURM_LAUNCHER = Path(__file__).with_name("slurm_launch.sh")
LAUNCH_KEYS = {"accelerate_config", "num_processes"}
DERIVED_KEYS = {"output_dir", "run_name"}  # set by the sweep from the run's name
ALIASES = {  # short names for run labels; other keys keep their own name
    "per_device_train_batch_size": "bs",
    "gradient_accumulation_steps": "ga",
    "learning_rate": "lr",
    "aot_penalty": "penalty",
    "aot_sort": "sort",
    "aot_sort_regularization": "sortreg",
    "aot_global_sort": "globalsort",
    "aot_nll_weight": "nll",
    "nll_weight": "nll",
    "num_train_epochs": "epochs",
    "model_name_or_path": "model",
}


class SweepError(UserError):
    """A bad sweep file: the message names the file and the key."""


@dataclass
class SweepRun:
    name: str
    base: str
    overrides: dict  # the sweep's overrides for this run (fixed + varying), without the derived keys
    output_dir: str
    launch: dict = field(default_factory=dict)

    @property
    def args(self) -> list[str]:
        """`--key value` arguments for aot-train, derived keys included."""
        return [*to_cli(self.overrides), "--output_dir", self.output_dir, "--run_name", self.name]

    def command(self, *, python: str = "python", slurm: bool = False) -> list[str]:
        if slurm:  # one sbatch job per run; the launcher script runs accelerate on every node
            env = "ALL"
            if self.launch.get("accelerate_config"):
                env += f",ACCELERATE_CONFIG={self.launch['accelerate_config']}"
            if self.launch.get("num_processes"):
                env += f",GPUS_PER_NODE={self.launch['num_processes']}"
            return ["sbatch", "--job-name", self.name, f"--export={env}", str(SLURM_LAUNCHER), self.base,
                    *self.args]
        if self.launch.get("accelerate_config"):
            head = ["accelerate", "launch", "--config_file", str(self.launch["accelerate_config"])]
            if self.launch.get("num_processes"):
                head += ["--num_processes", str(self.launch["num_processes"])]
            return [*head, "-m", "aot_handbook.cli", "train", self.base, *self.args]
        return [python, "-m", "aot_handbook.cli", "train", self.base, *self.args]


def format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def to_cli(overrides: dict) -> list[str]:
    """{key: value} -> ['--key', 'value', ...]; a list value becomes several arguments (nargs='+')."""
    args = []
    for key, value in overrides.items():
        args.append(f"--{key}")
        if isinstance(value, list):
            args.extend(format_value(v) for v in value)
        else:
            args.append(format_value(value))
    return args


def label(overrides: dict) -> str:
    """Readable, filesystem-safe label of the varying overrides, in the sweep file's key order."""
    parts = []
    for key, value in overrides.items():
        text = "+".join(map(format_value, value)) if isinstance(value, list) else format_value(value)
        text = text.replace("/", "-").replace(" ", "")
        parts.append(f"{ALIASES.get(key, key)}_{text}")
    return "-".join(parts)


def recipe_keys(method: str) -> set[str]:
    """Every key a recipe of this method may set (the same classes parse_recipe builds)."""
    from trl import ModelConfig

    from ..configs import RecipeArguments
    from ..methods import METHODS

    # aot_unpaired: paired and truly unpaired data use different config classes; a key of either is a recipe key
    classes = [RecipeArguments, ModelConfig, *METHODS[method].config_classes()]
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def _read(path: str) -> dict:
    try:
        return read_recipe(path, "sweep")
    except UserError as err:
        raise SweepError(str(err)) from None


def _override_sets(sweep: dict, path: str) -> list[dict]:
    """The varying overrides of every run: runs x product(grid), in file order."""
    grid = sweep.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"{path}: 'grid' must map recipe keys to lists of values")
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise SweepError(f"{path}: a 'grid' entry names no key: {key!r}: {values!r}")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: 'grid.{key}' must be a non-empty list of values, got {values!r}")
    runs = sweep.get("runs")
    if runs is None:
        runs = [{}]
    if not isinstance(runs, list) or not runs:
        raise SweepError(f"{path}: 'runs' must be a non-empty list of override mappings")
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise SweepError(f"{path}: 'runs[{i}]' names no key: {run!r} (expected a mapping like {{aot_sort: soft}})")
        for key in run:
            if not isinstance(key, str) or not key:
                raise SweepError(f"{path}: an override in 'runs[{i}]' names no key: {key!r}")
        overlap = set(run) & set(grid)
        if overlap:
            raise SweepError(f"{path}: key(s) {sorted(overlap)} set in both 'runs[{i}]' and 'grid'")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [{**run, **point} for run in runs for point in points]


def expand(path: str, *, check: bool = True) -> list[SweepRun]:
    """The runs of a sweep file. With check=True every run is parsed as it will run (no weights load)."""
    return expand_mapping(_read(path), path, check=check)


def expand_mapping(sweep: dict, path: str, *, check: bool = True) -> list[SweepRun]:
    """The runs of a sweep given as a mapping; ``path`` names it in errors (a file, or file:key)."""
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown sweep key(s) {unknown} (known: {sorted(SWEEP_KEYS)})")
    if not sweep.get("base"):
        raise SweepError(f"{path}: key 'base' (a recipe path or a list of them) is required")
    bases = sweep["base"] if isinstance(sweep["base"], list) else [sweep["base"]]
    fixed = sweep.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"{path}: 'fixed' must be a mapping of recipe keys to values")
    launch = sweep.get("launch") or {}
    if not isinstance(launch, dict) or set(launch) - LAUNCH_KEYS:
        raise SweepError(f"{path}: 'launch' takes {sorted(LAUNCH_KEYS)}, got {launch!r}")
    if launch.get("accelerate_config") and not Path(launch["accelerate_config"]).is_file():
        raise SweepError(f"{path}: 'launch.accelerate_config' file not found: {launch['accelerate_config']}")
    output_root = sweep.get("output_root") or f"runs/sweeps/{Path(path).name.split('.')[0]}"
    varying = _override_sets(sweep, path)
    runs, names = [], set()
    for base in bases:
        if not isinstance(base, str) or not Path(base).is_file():
            raise SweepError(f"{path}: 'base' recipe not found: {base!r}")
        try:
            raw = read_recipe(base, "train")
        except UserError as err:
            raise SweepError(f"{path}: 'base': {err}") from None
        for overrides in varying:
            merged = {**fixed, **overrides}
            for key in merged:
                if key is None or (isinstance(key, str) and not key):
                    raise SweepError(f"{path}: an override names no key (value {merged[key]!r})")
                if key in DERIVED_KEYS:
                    raise SweepError(f"{path}: key '{key}' is derived from the run's name; remove it")
                if merged[key] is None:
                    raise SweepError(f"{path}: key '{key}': null overrides are not supported")
            method = merged.get("method", raw.get("method"))
            try:
                known = recipe_keys(method)
            except KeyError:
                raise SweepError(f"{path}: base {base}: unknown method {method!r}") from None
            unknown = [k for k in merged if k not in known]
            if unknown:
                raise SweepError(f"{path}: override key '{unknown[0]}' is not a recipe key for method "
                                 f"'{method}' (base {base})")
            name = f"{Path(base).parent.name}-{Path(base).stem}"
            tag = label({k: v for k, v in merged.items() if k not in fixed or k in overrides})
            name = f"{name}-{tag}" if tag else name
            if name in names:
                raise SweepError(f"{path}: two runs named {name!r}; make their overrides differ")
            names.add(name)
            run = SweepRun(name, base, merged, f"{output_root}/{name}", dict(launch))
            if check:
                check_run(run, path)
            runs.append(run)
    return runs


def check_run(run: SweepRun, path: str) -> None:
    """Parse the run's recipe with its overrides (on a machine without a GPU, as if on CPU)."""
    import torch

    from ..recipe import parse_recipe  # the trainer configs load on first use, not with this module

    extra = [] if torch.cuda.is_available() or "--use_cpu" in run.args else ["--use_cpu", "true"]
    try:
        parse_recipe(run.base, [*run.args, *extra])
    except (ValueError, FileNotFoundError) as err:
        raise SweepError(f"{path}: run {run.name}: {err}") from None


def config_changes(run: SweepRun) -> list[str]:
    """What the configuration this sweep would train now differs in from the finished run in its folder (its
    fingerprint.json's config and base model; the data is checked by aot-train when it runs): a base recipe or
    a fixed value changed since (issue 30: such runs were skipped, the folders holding the old values). Empty when
    they agree, or when the folder has no fingerprint.json to compare with."""
    import torch

    from ..recipe import parse_recipe

    old = read_fingerprint(Path(run.output_dir))
    if not old:
        return []
    extra = [] if torch.cuda.is_available() or "--use_cpu" in run.args else ["--use_cpu", "true"]
    new = json.loads(json.dumps(config_identity(parse_recipe(run.base, [*run.args, *extra]))))
    if extra:  # checked on a machine without a GPU: where it trained is not a change
        new["config"]["use_cpu"] = old.get("config", {}).get("use_cpu", True)
    return fingerprint_changes(old, {**new, "data": old.get("data")})


def run_sweep(path: str, *, dry_run: bool = False, slurm: bool = False, only: str | None = None,
              force: bool = False) -> list[str]:
    """``aot-sweep``: every run of the sweep checked, then each started in turn (``python -m aot_handbook.cli
    train``, accelerate, or ``sbatch`` with ``slurm``), completed runs skipped unless ``force``; ``dry_run``
    prints the commands. Returns the names of the runs that failed."""
    runs = [r for r in expand(path) if only is None or only in r.name]
    print(f"[sweep] {path}: {len(runs)} run(s)")
    failed = []
    for run in runs:
        command = run.command(python="python" if dry_run else sys.executable, slurm=slurm)
        if dry_run:
            print(shlex.join(command))
            continue
        if is_complete(run.output_dir) and not force:
            changes = config_changes(run)
            if changes:  # the folder holds another configuration's run: neither skipped nor overwritten
                print(f"[sweep] {run.name}: {run.output_dir} is a finished run of another configuration; changed: "
                      f"{'; '.join(changes)}. Delete it, or use another output_root, to train this one",
                      file=sys.stderr)
                failed.append(run.name)
                continue
            print(f"[sweep] {run.name}: complete ({run.output_dir}/run.json), skipped")
            continue
        print(f"[sweep] {run.name}: {shlex.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(run.name)
    if failed:
        print(f"[sweep] {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return failed
