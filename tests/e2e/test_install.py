"""The package installed (not the checkout): every console script has help with an example, training from
another folder, no repository paths read by the package, a quick install."""

import ast
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # every test here: make test-fast leaves them out

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("POSIX venv layout", allow_module_level=True)


TOOLING = ("scripts", "benchmarks", "tests", "recipes")


# `recipes/...` strings that are command-line defaults relative to the working directory, documented in --help
CWD_DEFAULTS = {("cli.py", "recipes")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, its bin folder, the seconds the install took): aot-handbook pip-installed into a new venv."""
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # This interpreter's packages (torch, transformers, pip, setuptools, ...), after the venv's own: a plain
    # path line, so this environment's .pth files (an editable install of the checkout) are not processed.
    ours = [p for p in [*site.getsitepackages(), sysconfig.get_path("purelib")] if Path(p).is_dir()]
    (purelib / "_test_env.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", str(source)], check=True, env=_env(root), cwd=root, timeout=300)
    return python, env_dir / "bin", time.perf_counter() - t0


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(home / "hf"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


COMMANDS = ["train", "eval", "generate", "table", "plot", "compare", "pairs", "sweep", "validate", "reproduce",
            "gpu-check", "judge-server"]


# In the venv: every console script's entry point, and its --help (prog, an example); one process, so the
# heavy imports are paid once.
HELP_CHECK = """
import contextlib, io, json, sys
from importlib.metadata import entry_points
points = {e.name: e for e in entry_points(group="console_scripts") if e.name.startswith("aot-")}
out = {}
for name in sys.argv[1:]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            points[f"aot-{name}"].load()(["--help"])
            code = None
        except SystemExit as exit:
            code = exit.code
    out[name] = [code, buf.getvalue()]
print(json.dumps({"points": sorted(points), "help": out}))
"""


def _literals(path: Path):
    """Every string constant of a module but its docstrings (module, class, function)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_installed_package_is_not_the_checkout(installed, tmp_path):
    python, _, _ = installed
    out = subprocess.run([str(python), "-c", "import aot_handbook, os; print(aot_handbook.__file__)"], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).is_relative_to(python.parent.parent), out
    assert not Path(out).is_relative_to(REPO), out
    launcher = Path(out).parent / "tooling" / "slurm_launch.sh"  # package data: aot-sweep --slurm submits it
    assert launcher.is_file()


def test_every_console_script_has_help(installed, tmp_path):
    python, bin_dir, _ = installed
    proc = subprocess.run([str(python), "-c", HELP_CHECK, *COMMANDS], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["points"] == sorted(f"aot-{name}" for name in COMMANDS)
    for name, (code, text) in result["help"].items():
        assert code == 0 and (bin_dir / f"aot-{name}").is_file(), (name, code)
        assert "example:" in text and f"aot-{name} " in text.split("example:")[1], (name, text)
    # the console script itself, from another folder: documents the recipe and the overrides
    train_help = subprocess.run([str(bin_dir / "aot-train"), "--help"], cwd=tmp_path, env=_env(tmp_path),
                                capture_output=True, text=True, check=True, timeout=120).stdout
    assert train_help.startswith("usage: aot-train") and "recipe" in train_help and "--key value" in train_help


def test_train_from_another_folder(installed, tiny, tmp_path):
    """aot-train on a copy of recipes/tiny/aot_unpaired.yaml, run from a folder that is not the checkout."""
    _, bin_dir, _ = installed
    assets = Path(tiny["base_model"]).parents[1]  # <root>/v2-seed0/base_model -> <root>
    recipe = yaml.safe_load((REPO / "recipes" / "tiny" / "aot_unpaired.yaml").read_text())
    recipe.pop("requires")  # the SFT stage: start from the tiny base model instead
    recipe["tiny_assets"] = str(assets)
    recipe["model_name_or_path"] = str(tiny["base_model"])
    recipe["dataset_mixture"] = yaml.safe_load(
        yaml.safe_dump(recipe["dataset_mixture"]).replace(".cache/tiny", str(assets)))
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "aot_unpaired.yaml").write_text(yaml.safe_dump(recipe))
    t0 = time.perf_counter()
    proc = subprocess.run([str(bin_dir / "aot-train"), "aot_unpaired.yaml", "--max_steps", "2", "--summary", "false",
                           "--per_device_train_batch_size", "8", "--precompute_ref_log_probs", "false",
                           "--output_dir", "runs/pip-user"],
                          cwd=work, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = work / "runs" / "pip-user"
    assert (run / "run.json").is_file() and list(run.glob("*.safetensors"))
    assert time.perf_counter() - t0 < 120


def test_package_reads_no_repository_paths(installed):
    """No module of the installed package names a path into the repository's tooling (scripts/, benchmarks/,
    tests/, recipes/) except a documented command-line default relative to the working directory, nor climbs
    from its own file to a checkout. Help texts and examples (strings with spaces) may mention recipes."""
    python, _, _ = installed
    package = Path(subprocess.run([str(python), "-c", "import aot_handbook; print(aot_handbook.__file__)"],
                                  env=_env(python.parent.parent), capture_output=True, text=True,
                                  check=True).stdout.strip()).parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 20 and not (package / "bench.py").exists()
    path_like = re.compile(rf"^(\./|\.\./)*({'|'.join(TOOLING)})/[\w.*/<>-]*$")  # "recipes/x.yaml", not "tests"
    bad = []
    for module in modules:
        for line, value in _literals(module):
            if path_like.match(value) and (module.name, value) not in CWD_DEFAULTS:
                bad.append(f"{module.relative_to(package)}:{line}: {value!r}")
        text = module.read_text()
        for match in re.finditer(r"__file__\)?[\w.()]*?\.parents\[(\d+)\]", text):
            # launchers.SETUP_CFG reads the checkout's setup.cfg when there is one (else the installed metadata)
            if not (module.name == "launchers.py" and match.group(1) == "3"):
                bad.append(f"{module.relative_to(package)}: climbs to {match.group(0)!r}")
    assert not bad, bad
    # the allowed defaults are documented as relative to the working directory
    for name, value in CWD_DEFAULTS:
        assert "working directory" in (package / name).read_text()


def test_install_is_quick(installed):
    assert installed[2] < 90, f"building the venv and installing took {installed[2]:.0f} s"
