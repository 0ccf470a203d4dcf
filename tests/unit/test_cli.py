"""aot_handbook.cli: every command's errors are one line and an exit code, from one place; errors of long work
keep their traceback."""

import os
import subprocess
import sys

import datasets  # noqa: E402
import pytest

from aot_handbook.cli import validate as validate_main
from tests.helpers import REPO, write_recipe, write_validation_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets.disable_progress_bars()


RECIPES = REPO / "recipes"


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_validate_script_stops_at_first_bad_file(tmp_path, capsys):
    good = str(RECIPES / "merlinite-7b/aot_paired.yaml")
    bad = write_validation_recipe(tmp_path, unknown_key=1)
    assert validate_main([good, str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown_key" in err
    assert validate_main([good, "-q"]) == 0


@pytest.mark.slow
def test_train_script_exits_non_zero_with_the_message(tiny, tmp_path):
    path = write_recipe(tmp_path, tiny, aot_penalty="cubic")
    done = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "train", path], capture_output=True, text=True)
    assert done.returncode != 0
    assert f"error: {path}: aot_penalty: unknown penalty 'cubic'" in done.stderr
    bad_override = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "train", path, "--aot_penalty",
                                   "logistic",
                                   "--no_such_key", "1"], capture_output=True, text=True)
    assert bad_override.returncode != 0 and "--no_such_key" in bad_override.stderr


@pytest.mark.slow
def test_errors_during_training_keep_their_traceback(tiny, tmp_path):
    """aot-train shortens recipe errors to one line, but not an error raised while training."""
    path = write_recipe(tmp_path, tiny, learning_rate=1e30, max_steps=10, logging_steps=1)  # overflows at step 2
    done = subprocess.run([sys.executable, "-m", "aot_handbook.cli", "train", path], capture_output=True, text=True)
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "FloatingPointError" in done.stderr


def _bad_yaml(tmp_path, name):
    path = tmp_path / name
    path.write_text("model: [unclosed\n  scorer: x\n")
    return str(path)


CASES = {  # command -> (arguments, what the one line must name), each a mistake the user can fix
    "train": (["missing.yaml"], "recipe file not found: missing.yaml"),
    "pairs": (["recipes/tiny/sft.yaml"], "recipes/tiny/sft.yaml: this is a training recipe (by its file name), "
                                         "not a pairs recipe"),
    "eval": (["runs/no-such-run", "recipes/eval/tiny.eval.yaml"], "RUN: no such folder 'runs/no-such-run'"),
    "generate": (["runs/no-such-run"], "RUN: no such folder 'runs/no-such-run'"),
    "table": (["99"], "TABLE='99'"),
    "plot": ([], "give one or more run folders"),
    "compare": (["runs/only-one"], "RUNS: a comparison needs at least two runs"),
    "sweep": (["recipes/ablations/none.sweep.yaml"], "sweep file not found: recipes/ablations/none.sweep.yaml"),
    "validate": (["recipes/none"], "recipes/none: no such file or folder"),
    "reproduce": (["recipes/tiny/none.grid.yaml"], "reproduction grid file not found: recipes/tiny/none.grid.yaml"),
    "judge-server": (["--task", "none"], "no task 'none'"),
}


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize("command", sorted(CASES))
def test_every_command_prints_a_user_error_on_one_line(command, capsys):
    from aot_handbook.cli import COMMANDS, run_command

    args, message = CASES[command]
    assert run_command(command, args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert set(COMMANDS) - set(CASES) == {"gpu-check"}  # the only one without a user error (no GPU: exit 0)


def test_malformed_yaml_is_one_line_for_every_reader(tmp_path, capsys):
    """The one recipe reader names the file: a training recipe, a pairs recipe (aot-pairs printed a traceback
    before), a sweep, a grid, an evaluation recipe."""
    from aot_handbook.cli import run_command

    for command, name, extra in (("train", "x.yaml", []), ("pairs", "x.pairs.yaml", []),
                                 ("sweep", "x.sweep.yaml", []), ("reproduce", "x.grid.yaml", []),
                                 ("eval", "x.eval.yaml", [])):
        path = _bad_yaml(tmp_path, name)
        args = [path]
        if command == "eval":
            (tmp_path / "first").mkdir(exist_ok=True)
            (tmp_path / "first" / "recipe.json").write_text("{}")
            args = [str(tmp_path / "first"), path]
        assert run_command(command, args) == 1, command
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}: not valid YAML") and len(err.splitlines()) == 1, (command, err)


def test_interrupts_bugs_and_the_traceback_switch(monkeypatch, capsys):
    from aot_handbook import cli
    from aot_handbook.errors import UserError

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "table", cli.Command(cli.table_parser, interrupted))
    assert cli.run_command("table", ["1"]) == 130 and capsys.readouterr().err.strip() == "interrupted"

    def bug(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setitem(cli.COMMANDS, "table", cli.Command(cli.table_parser, bug))
    with pytest.raises(RuntimeError, match="a bug"):  # its traceback is kept
        cli.run_command("table", ["1"])

    def mistake(args):
        raise UserError("a mistake\nover two lines")

    monkeypatch.setitem(cli.COMMANDS, "table", cli.Command(cli.table_parser, mistake))
    assert cli.run_command("table", ["1"]) == 1
    assert capsys.readouterr().err.strip() == "error: a mistake over two lines"
    monkeypatch.setenv("AOT_HANDBOOK_TRACEBACK", "1")
    with pytest.raises(UserError):
        cli.run_command("table", ["1"])


def test_usage_and_help(capsys):
    from aot_handbook.cli import COMMANDS, main, parser

    assert main([]) == 2 and "usage: python -m aot_handbook.cli" in capsys.readouterr().err
    for name in COMMANDS:  # every command's help: the run function's docstring, its examples after "example:"
        text = parser(name).format_help()
        assert text.startswith(f"usage: aot-{name}") and f"aot-{name} " in text.split("example:")[1], name


def test_plot_names_a_run_folder_that_is_missing_or_not_a_run(tmp_path, monkeypatch, capsys):
    """aot-plot read the run's recipe.json and ended in a KeyError traceback (issue 30)."""
    from aot_handbook.cli import run_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "m").mkdir(parents=True)
    for run, message in (("runs/missing", "runs/missing: no such run folder"),
                         ("models/m", "models/m: not a run folder (no recipe.json)")):
        assert run_command("plot", [run]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"error: {message}", err


def test_a_file_that_does_not_parse_is_one_line(tmp_path, monkeypatch, capsys):
    """A safetensors file cut short (or a full disk while writing one) and a JSON file that does not parse are
    files the user can fix: one line, not a traceback (issue 30)."""
    import json

    from safetensors.torch import load_file

    from aot_handbook import cli

    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for read in (lambda args: load_file(broken), lambda args: json.loads("{cut")):
        monkeypatch.setitem(cli.COMMANDS, "table", cli.Command(cli.table_parser, read))
        assert cli.run_command("table", ["1"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
