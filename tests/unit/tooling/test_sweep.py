"""aot_handbook.tooling.sweep: sweeps expanded into named runs, checked before any starts, skipped when done."""

import os
import subprocess
from pathlib import Path

import datasets  # noqa: E402
import pytest
import yaml

from aot_handbook.cli import sweep as sweep_main
from aot_handbook.tooling.sweep import SLURM_LAUNCHER, SweepError, expand, label  # noqa: E402
from tests.helpers import write_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets.disable_progress_bars()


def write_sweep(tmp_path, body: dict) -> str:
    path = tmp_path / "test.sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


def test_a_sweep_value_argparse_cannot_convert_names_the_run(tiny, tmp_path):
    from aot_handbook.tooling.sweep import SweepError, expand

    base = write_recipe(tmp_path, tiny)
    sweep = tmp_path / "bad.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": base, "grid": {"per_device_train_batch_size": ["two"]}}))
    with pytest.raises(SweepError, match=r"bad.sweep.yaml: run .*: .*argument --per_device_train_batch_size.*"
                                         r"invalid int value: 'two'"):
        expand(str(sweep))


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_slurm_launcher_dry_run():
    subprocess.run(["bash", "-n", str(SLURM_LAUNCHER)], check=True)
    out = subprocess.run(["bash", str(SLURM_LAUNCHER), "recipes/merlinite-7b/aot_unpaired.yaml", "--beta",
                          "0.05"],
                         env={**os.environ, "DRY_RUN": "1", "SLURM_NNODES": "2"}, capture_output=True, text=True,
                         check=True).stdout
    assert "srun" in out and "--num_machines 2 --num_processes 16" in out and "${SLURM_PROCID:-0}" in out
    assert "-m aot_handbook.cli train recipes/merlinite-7b/aot_unpaired.yaml --beta 0.05" in out


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_sweep_expansion_and_names(tmp_path):
    base = "recipes/merlinite-7b/aot_unpaired.yaml"
    path = write_sweep(tmp_path, {"base": base, "output_root": "runs/x", "fixed": {"aot_global_sort": True},
                             "runs": [{"aot_sort": "hard"}, {"aot_sort": "soft"}],
                             "grid": {"aot_penalty": ["logistic", "hinge"], "per_device_train_batch_size": [8, 16]}})
    runs = expand(path)
    assert len(runs) == 2 * 2 * 2
    first = runs[0]
    assert first.name == "merlinite-7b-aot_unpaired-sort_hard-penalty_logistic-bs_8"  # fixed keys stay out of names
    assert first.output_dir == f"runs/x/{first.name}"
    assert first.args == ["--aot_global_sort", "true", "--aot_sort", "hard", "--aot_penalty", "logistic",
                          "--per_device_train_batch_size", "8", "--output_dir", first.output_dir,
                          "--run_name", first.name]
    assert len({r.name for r in runs}) == len({r.output_dir for r in runs}) == 8
    assert label({"lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-5}) == \
        "lora_target_modules_q_proj+v_proj-lr_1e-05"


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
@pytest.mark.parametrize("body,key", [
    ({"grid": {"aot_penalti": ["hinge"]}}, "aot_penalti"),
    ({"runs": [{"learning_rat": 1e-5}]}, "learning_rat"),
    ({"fixed": {"desirable_weight": 2.0}, "grid": {"seed": [1]}},
     "desirable_weight"),  # a KTO key on a DPO-config base
    ({"runs": ["hinge"]}, "runs[0]"),
    ({"grid": {"output_dir": ["a"]}}, "output_dir"),
    ({"grid": {"aot_penalty": ["cubic"]}}, "aot_penalty"),
    ({"grid": {"aot_sort": []}}, "grid.aot_sort"),
    ({"grid": {"seed": [1]}, "launcher": "slurm"}, "launcher"),
])
def test_bad_sweep_fails_naming_file_and_key(tmp_path, body, key):
    path = write_sweep(tmp_path, {"base": "recipes/merlinite-7b/aot_paired.yaml", **body})
    with pytest.raises(SweepError) as err:
        expand(path)
    assert path in str(err.value) and key in str(err.value)


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_sweep_dry_run_prints_commands(capsys):
    assert sweep_main(["recipes/ablations/penalty.sweep.yaml", "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[sweep]")]
    assert len(lines) == 4
    assert lines[1] == ("accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 8 "
                        "-m aot_handbook.cli train recipes/merlinite-7b/aot_unpaired.yaml --aot_penalty hinge "
                        "--output_dir "
                        "runs/ablations/penalty/merlinite-7b-aot_unpaired-penalty_hinge --run_name "
                        "merlinite-7b-aot_unpaired-penalty_hinge")


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_sweep_skips_completed_runs(tmp_path, capsys):
    path = write_sweep(tmp_path, {"base": "recipes/merlinite-7b/aot_paired.yaml",
                                  "output_root": str(tmp_path / "runs"),
                             "grid": {"beta": [0.01, 0.1]}})
    for run in expand(path, check=False):
        Path(run.output_dir).mkdir(parents=True)
        (Path(run.output_dir) / "run.json").write_text("{}")
    assert sweep_main([path]) == 0  # nothing launched: both runs are complete
    out = capsys.readouterr().out
    assert out.count("skipped") == 2 and "beta_0.1: complete" in out


@pytest.mark.usefixtures("in_repo")
def test_a_finished_run_of_another_configuration_is_reported_not_skipped(tmp_path, capsys):
    """Issue 30: after the base recipe (or a fixed value) changed, a sweep skipped its finished runs, whose
    folders still held the old values. Now the change is named, the run counts as failed, nothing is written."""
    import json

    from aot_handbook.recipe import parse_recipe
    from aot_handbook.run_folder import config_identity

    def sweep(lr):
        return write_sweep(tmp_path, {"base": "recipes/tiny/sft.yaml", "output_root": str(tmp_path / "runs"),
                                      "fixed": {"learning_rate": lr}, "runs": [{"seed": 0}]})

    (run,) = expand(sweep(1e-3), check=False)
    Path(run.output_dir).mkdir(parents=True)
    (Path(run.output_dir) / "run.json").write_text("{}")
    identity = config_identity(parse_recipe(run.base, [*run.args, "--use_cpu", "true"]))
    (Path(run.output_dir) / "fingerprint.json").write_text(json.dumps({**identity, "data": "d", "sha256": "s"}))
    assert sweep_main([sweep(1e-3)]) == 0  # the same configuration: skipped
    assert "skipped" in capsys.readouterr().out
    before = sorted((p.name, p.read_bytes()) for p in Path(run.output_dir).iterdir())
    assert sweep_main([sweep(5e-4)]) == 1
    out, err = capsys.readouterr()
    assert "skipped" not in out and "is a finished run of another configuration; changed: " \
                                    "learning_rate: 0.001 -> 0.0005" in err
    assert sorted((p.name, p.read_bytes()) for p in Path(run.output_dir).iterdir()) == before
