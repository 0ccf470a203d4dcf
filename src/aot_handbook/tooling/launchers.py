"""Packages and launchers: what a recipe, sweep or accelerate config needs installed, and which pairs run.

- packages: a recipe's optimizer (``optim``) and quantization (``load_in_4bit/8bit``) and a DeepSpeed accelerate
  config need only packages installed or named in setup.cfg (install_requires or an extra);
- launchers: a bitsandbytes optimizer runs with one process or DDP only (:func:`check_optimizer`);
- accelerate configs (:func:`validate_accelerate_config`): top-level keys known to accelerate's ``ClusterConfig``,
  ``fsdp_config`` / ``deepspeed_config`` keys known to ``accelerate launch``, the config loads through accelerate's
  own loader, an FSDP config builds accelerate's FSDP plugin and a DeepSpeed one DeepSpeed's own config, as
  ``accelerate launch`` would.

Offline, no GPU needed; ``aot-validate`` (:mod:`.validate`) runs these for every file it checks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..io import read_yaml
from . import fail

SETUP_CFG = Path(__file__).resolve().parents[3] / "setup.cfg"


# bitsandbytes #1633 ("illegal memory access with FSDP2"), torchtune #1856: paged optimizers on sharded
# (DTensor) parameters. Known to work: one process or plain DDP (each rank holds whole parameters).
BNB_LAUNCHERS = {"NO", "MULTI_GPU"}


def declared_packages(setup_cfg: str | Path | None = None) -> dict[str, str]:
    """Distribution name -> where the project declares it ('install_requires' or the extra's name)."""
    import configparser
    import re

    setup_cfg = Path(setup_cfg or SETUP_CFG)
    where: dict[str, str] = {}
    if setup_cfg.is_file():
        cfg = configparser.ConfigParser()
        cfg.read(setup_cfg)
        where["install_requires"] = cfg.get("options", "install_requires", fallback="")
        if cfg.has_section("options.extras_require"):
            where.update(cfg.items("options.extras_require"))
    else:  # an installed (not editable) package: its metadata lists the same requirements
        from importlib import metadata

        try:
            requires = metadata.requires("aot-handbook") or []
        except metadata.PackageNotFoundError:
            requires = []
        for req in requires:
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", req)
            place = extra.group(1) if extra else "install_requires"
            where[place] = where.get(place, "") + "\n" + req.split(";")[0]
    out: dict[str, str] = {}
    for place, block in where.items():
        for line in block.splitlines():
            name = re.match(r"\s*([A-Za-z0-9_.-]+)", line.split("#", 1)[0])
            if name:
                out.setdefault(re.sub(r"[-_.]+", "-", name.group(1)).lower(), place)
    return out


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def require_package(path, key: str, dist: str, what: str) -> None:
    """``dist`` must be installed here or declared by the project (install_requires or an extra)."""
    if _installed(dist) or dist in declared_packages():
        return
    raise fail(path, key, f"{what} needs the `{dist}` package, which is neither installed nor named in "
                           f"setup.cfg (install_requires or an extra)")


def optimizer_package(optim: str) -> str | None:
    """The package transformers' Trainer imports for optimizer ``optim`` (None: torch's own)."""
    from transformers import trainer_optimizer as opt

    groups = {"bitsandbytes": opt._BITSANDBYTES_OPTIMIZERS, "galore-torch": opt._GALORE_OPTIMIZERS,
              "apollo-torch": opt._APOLLO_OPTIMIZERS, "torchao": opt._TORCHAO_OPTIMIZERS,
              "schedulefree": opt._SCHEDULE_FREE_OPTIMIZERS}
    return next((dist for dist, names in groups.items() if optim in {n.value for n in names}), None)


def launcher_kind(accelerate_config: str | Path) -> str:
    """'NO', 'MULTI_GPU', 'FSDP1', 'FSDP2', 'DEEPSPEED', ... of an accelerate config file."""
    config = read_yaml(accelerate_config, "accelerate config")
    kind = str(config.get("distributed_type", "NO"))
    if kind == "FSDP":
        kind += str((config.get("fsdp_config") or {}).get("fsdp_version", 1))
    return kind


def check_optimizer(path, optim: str, launcher: str | Path | None = None) -> None:
    """The optimizer's package is installed or declared; with ``launcher`` (an accelerate config), the pair is
    one known to work."""
    optim = getattr(optim, "value", optim)
    dist = optimizer_package(optim)
    if dist:
        require_package(path, "optim", dist, f"optimizer {optim!r}")
    if dist == "bitsandbytes" and launcher is not None and launcher_kind(launcher) not in BNB_LAUNCHERS:
        kind = launcher_kind(launcher)
        why = (" (paged bitsandbytes optimizers fail on FSDP2's sharded parameters: bitsandbytes #1633, "
               "torchtune #1856)" if kind == "FSDP2" and optim.startswith("paged") else "")
        raise fail(path, "optim", f"{optim!r} is not known to work with {launcher} ({kind}){why}; use "
                                   "adamw_torch there, or a bitsandbytes optimizer with one process or DDP "
                                   "(recipes/accelerate_configs/ddp.yaml)")


def _launch_option_names() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {action.dest for action in launch_command_parser()._actions}


def validate_accelerate_config(path: str | Path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    path = str(path)
    config = read_yaml(path, "accelerate config")
    known = {f.name for f in dataclasses.fields(ClusterConfig)}
    for key in config:
        if key not in known:
            raise fail(path, key, f"not an accelerate config key (known: {sorted(known)})")
    distributed = config.get("distributed_type")
    if distributed not in {t.value for t in DistributedType}:
        raise fail(path, "distributed_type", f"{distributed!r} is not one of {[t.value for t in DistributedType]}")
    if config.get("mixed_precision") not in (None, "no", "fp16", "bf16", "fp8"):
        raise fail(path, "mixed_precision", f"{config['mixed_precision']!r} is not one of no, fp16, bf16, fp8")
    options = _launch_option_names()
    for block in ("fsdp_config", "deepspeed_config"):
        for key in config.get(block) or {}:
            if key not in options:
                raise fail(path, f"{block}.{key}", "not an option `accelerate launch` knows")
    try:
        cluster = ClusterConfig.from_yaml_file(path)
    except Exception as err:
        raise fail(path, None, f"accelerate cannot load it: {err}") from None
    if distributed == "FSDP":
        _check_fsdp_plugin(path)
    if distributed == "DEEPSPEED":
        require_package(path, "distributed_type", "deepspeed", "DeepSpeed")
        _check_deepspeed_config(path)
    return cluster


def _check_deepspeed_config(path: str) -> None:
    """With DeepSpeed installed (``pip install -e ".[deepspeed]"``): build the DeepSpeed config the way
    `accelerate launch` + the trainer would (config -> launch args -> ACCELERATE_DEEPSPEED_* environment ->
    accelerate's DeepSpeedPlugin) and parse it with DeepSpeed's own ``DeepSpeedConfig`` (its pydantic checks
    of the ZeRO stage, offload devices, ...). The trainer fills the "auto" batch sizes; 1 stands in here."""
    import importlib.util
    import json
    import os
    from unittest import mock

    if importlib.util.find_spec("deepspeed") is None:
        return
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    try:
        args = launch_command_parser().parse_args(["--config_file", path, "-m", "aot_handbook.cli", "train"])
        args, defaults, mixed_precision_from_config = _validate_launch_command(args)
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as accelerate's launch_command sets it
        _, env = prepare_deepspeed_cmd_env(args)
        with mock.patch.dict(os.environ, env):
            plugin = DeepSpeedPlugin()
        from deepspeed.runtime.config import DeepSpeedConfig

        DeepSpeedConfig(json.loads(json.dumps(plugin.deepspeed_config).replace('"auto"', "1")))
    except Exception as err:  # accelerate's ValueErrors, DeepSpeed's pydantic ValidationError, ...
        raise fail(path, "deepspeed_config", f"DeepSpeed rejects it: {err}") from None


def _check_fsdp_plugin(path: str) -> None:
    """Build accelerate's FSDP plugin the way `accelerate launch` would (config -> launch args -> FSDP_*
    environment -> plugin), which catches combinations the key check cannot (e.g. FSDP1-only options with
    fsdp_version 2). FSDP1's plugin needs an accelerator device, so on a CPU-only machine it is skipped."""
    import os
    from unittest import mock

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    try:
        args = launch_command_parser().parse_args(["--config_file", path, "-m", "aot_handbook.cli", "train"])
        args, _, _ = _validate_launch_command(args)
        env = prepare_multi_gpu_env(args)
        with mock.patch.dict(os.environ, env):
            FullyShardedDataParallelPlugin()
    except RuntimeError as err:
        if "no available devices" in str(err):
            return
        raise fail(path, "fsdp_config", f"accelerate rejects it: {err}") from None
    except (ValueError, TypeError, KeyError) as err:
        raise fail(path, "fsdp_config", f"accelerate rejects it: {err}") from None
