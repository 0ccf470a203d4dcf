"""aot_handbook.tooling.launchers: packages and launchers a recipe needs; accelerate configs checked as
`accelerate launch` would."""

import os
import re
from pathlib import Path

import datasets  # noqa: E402
import pytest
import yaml

from aot_handbook.cli import validate as validate_command
from aot_handbook.tooling import launchers
from aot_handbook.tooling.validate import (  # noqa: E402
    ValidationError,
    check_optimizer,
    validate_accelerate_config,
    validate_file,
    validate_recipe,
)
from tests.helpers import REPO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets.disable_progress_bars()


def write_launch_recipe(tmp_path, **changes) -> Path:
    raw = yaml.safe_load((RECIPES / "merlinite-7b/aot_unpaired.yaml").read_text())
    raw.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


RECIPES = REPO / "recipes"


LAUNCHERS = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))


FSDP2 = RECIPES / "accelerate_configs" / "fsdp.yaml"


DDP = RECIPES / "accelerate_configs" / "ddp.yaml"


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_the_project_declares_bitsandbytes_in_an_extra():
    assert launchers.declared_packages()["bitsandbytes"] == "bnb"
    assert launchers.optimizer_package("paged_adamw_32bit") == "bitsandbytes"
    assert launchers.optimizer_package("adamw_torch") is None


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_paged_adamw_needs_bitsandbytes_installed_or_declared(tmp_path, no_bnb_declared, monkeypatch):
    path = write_launch_recipe(tmp_path, optim="paged_adamw_32bit")
    with pytest.raises(ValidationError, match=rf"{re.escape(str(path))}: key 'optim': .*`bitsandbytes`"):
        validate_recipe(path)
    monkeypatch.setattr(launchers, "SETUP_CFG", REPO / "setup.cfg")  # with the bnb extra: accepted
    validate_recipe(path, launchers=[DDP])


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_qlora_needs_bitsandbytes(tmp_path, no_bnb_declared):
    path = write_launch_recipe(tmp_path, load_in_4bit=True)
    with pytest.raises(ValidationError, match=r"key 'load_in_4bit': .*`bitsandbytes`"):
        validate_recipe(path)


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_paged_adamw_is_rejected_with_fsdp2_and_accepted_with_ddp(tmp_path):
    path = write_launch_recipe(tmp_path, optim="paged_adamw_32bit")
    assert launchers.launcher_kind(FSDP2) == "FSDP2" and launchers.launcher_kind(DDP) == "MULTI_GPU"
    with pytest.raises(ValidationError, match=r"key 'optim': 'paged_adamw_32bit' is not known to work .*FSDP2.*#1633"):
        validate_recipe(path, launchers=[FSDP2])
    validate_recipe(path, launchers=[DDP])
    # the script checks each recipe against the accelerate configs validated with it
    assert validate_command([str(path), str(DDP), "-q"]) == 0
    assert validate_command([str(path), str(FSDP2), "-q"]) == 1
    assert validate_command([str(path), "--launcher", str(FSDP2), "-q"]) == 1


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_a_sweep_is_checked_with_its_launcher(tmp_path):
    sweep = tmp_path / "optim.sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": ["recipes/merlinite-7b/dpo.yaml"], "output_root": str(tmp_path / "runs"),
                                     "grid": {"optim": ["adamw_torch", "paged_adamw_32bit"]},
                                     "launch": {"accelerate_config": str(FSDP2), "num_processes": 8}}))
    with pytest.raises(ValidationError, match=r"run .*paged_adamw_32bit.*key 'optim'.*FSDP2"):
        validate_file(sweep)


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_the_new_defaults_run_under_every_launcher():
    spec = __import__("importlib").util.spec_from_file_location("gen", RECIPES / "_generate.py")
    gen = __import__("importlib").util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    optims = {yaml.safe_load(text)["optim"] for text in gen.all_recipes().values()}
    assert optims == {"adamw_torch"}
    for launcher in LAUNCHERS:
        check_optimizer("recipe", "adamw_torch", launcher)
    validate_recipe(RECIPES / "merlinite-7b/aot_paired.yaml", launchers=LAUNCHERS)


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_deepspeed_launcher_needs_deepspeed(no_bnb_declared):
    with pytest.raises(ValidationError, match=r"zero3.yaml: key 'distributed_type': DeepSpeed needs the `deepspeed`"):
        validate_file(RECIPES / "accelerate_configs" / "zero3.yaml")


RECIPES = REPO / "recipes"


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_accelerate_configs(tmp_path):
    for name in ("ddp", "fsdp", "fsdp_qlora", "zero3"):
        validate_accelerate_config(RECIPES / "accelerate_configs" / f"{name}.yaml")
    raw = yaml.safe_load((RECIPES / "accelerate_configs/fsdp.yaml").read_text())
    folder = tmp_path / "accelerate_configs"
    folder.mkdir()
    for changes, key in [({"num_procs": 8}, "num_procs"), ({"fsdp_config": {"fsdp_shard": 1}},
                                                           "fsdp_config.fsdp_shard"),
                         ({"distributed_type": "MULTI_TPU_X"}, "distributed_type"),
                         ({"fsdp_config": {**raw["fsdp_config"], "fsdp_auto_wrap_policy": "EVERY_OTHER"}},
                          "fsdp_config")]:
        path = folder / "bad.yaml"
        path.write_text(yaml.safe_dump({**raw, **changes}))
        with pytest.raises(ValidationError, match=re.escape(f"{path}: key '{key}'")):
            validate_file(path)




def test_validate_checks_zero3_config_with_deepspeed(tmp_path):
    """`make validate-recipes` parses the ZeRO-3 config with DeepSpeed's own config classes when installed."""
    pytest.importorskip("deepspeed")
    from aot_handbook.tooling.validate import ValidationError, validate_accelerate_config

    good = REPO / "recipes" / "accelerate_configs" / "zero3.yaml"
    validate_accelerate_config(good)
    bad = tmp_path / "accelerate_configs" / "zero3.yaml"
    bad.parent.mkdir()
    bad.write_text(good.read_text().replace("offload_param_device: none", "offload_param_device: gpu"))
    with pytest.raises(ValidationError, match=r"(?s)zero3.yaml: key 'deepspeed_config'.*offload_param"):
        validate_accelerate_config(bad)
