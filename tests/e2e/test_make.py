"""The Makefile's targets pass their variables through to the commands."""

import subprocess

from tests.helpers import REPO


def test_make_target_passes_runs_eval_and_metrics():
    cmd = subprocess.run(["make", "-n", "compare", "RUNS=runs/a runs/b", "EVAL=recipes/eval/tiny.eval.yaml",
                          "METRICS=tiny:accuracy", "PYTHON=python3"],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert cmd.returncode == 0, cmd.stderr
    assert 'aot-compare" runs/a runs/b --eval "recipes/eval/tiny.eval.yaml" --metrics tiny:accuracy' in cmd.stdout


def test_one_path_variables_are_quoted():
    """A path with spaces or unicode reaches the command whole (issue 30); list variables (RUNS) are split."""
    for target, variables, expect in (
            ("train", ["RECIPE=my recipes ü/tïny sft.yaml"], 'aot-train" "my recipes ü/tïny sft.yaml"'),
            ("eval", ["RUN=runs/my run", "EVAL=my evals/x y.eval.yaml"],
             'aot-eval" "runs/my run" "my evals/x y.eval.yaml"'),
            ("sweep", ["SWEEP=a b.sweep.yaml"], 'aot-sweep" "a b.sweep.yaml"'),
            ("pairs", ["RECIPE=a b.pairs.yaml"], 'aot-pairs" "a b.pairs.yaml"')):
        cmd = subprocess.run(["make", "-n", target, *variables, "PYTHON=python3"], cwd=REPO, capture_output=True,
                             text=True, check=False)
        assert cmd.returncode == 0 and expect in cmd.stdout, (target, cmd.stdout, cmd.stderr)


def test_lint_uses_the_ruff_the_test_extra_pins():
    """make lint installs ruff alone (no torch) at the version setup.cfg's test extra pins."""
    import configparser
    import re

    makefile = (REPO / "Makefile").read_text()
    spec = re.search(r"^RUFF_SPEC := (.+)$", makefile, re.M).group(1).strip()
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    pinned = [line.strip() for line in cfg.get("options.extras_require", "test").splitlines()
              if line.strip().startswith("ruff")]
    assert pinned == [spec]
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "$(STAMP)" not in lint and "check ." in lint
