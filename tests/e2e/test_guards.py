"""Issue 30, "nothing a person reads is silently wrong": each mistake a careless but reasonable user makes, on
today's code, with the behaviour we want asserted.

Every test here fails on the code it was written against (ba1d5ae) and is marked
``xfail(strict=True, reason="issue 30: <case>")``: the suite stays green, and the day a protection lands its test
passes, strict xfail turns that into a failure, and the marker must come off. What each test wants: the command
refuses (a non-zero exit or an exception), its message names the culprit (the key, file, run or folder), it is one
line (never a traceback), and nothing on disk changed.

They go through the public surface only (``python -m aot_handbook.cli ...``, ``aot_handbook.plan.train``,
``make``). The runs are trained here, by ``aot-train``, from the tiny recipes shortened (SFT 20 steps, AOT 4) on
the session's tiny assets: a few seconds each. Slow (they train and evaluate): ``make test-fast`` leaves them out.
"""

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aot_handbook.plan import train
from tests.helpers import copy_tiny_recipes, run_make

pytestmark = pytest.mark.slow  # each trains or evaluates the tiny model

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
           HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
           TQDM_DISABLE="1")
AOT, SFT = "runs/tiny-aot_unpaired", "runs/tiny-sft"
EVAL = "recipes/eval/tiny_small.eval.yaml"  # recipes/eval/tiny.eval.yaml on 24 prompts and 32 held-out pairs


def xfail(case: str):
    return pytest.mark.xfail(strict=True, reason=f"issue 30: {case}")


def digest(folder) -> dict:
    """Every file under ``folder`` -> sha256: "nothing on disk changed" is this, before and after."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(work: Path, *args: str, timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    """``python -m aot_handbook.cli ARGS`` (what the console scripts run) in ``work``."""
    return subprocess.run([sys.executable, "-m", "aot_handbook.cli", *args], cwd=work, env=ENV, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def refused(proc: subprocess.CompletedProcess, *culprits: str) -> None:
    """A non-zero exit whose last line of stderr names every culprit, and no traceback."""
    said = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode != 0, f"exit 0; stdout tail:\n{proc.stdout[-1500:]}\nstderr tail:\n{proc.stderr[-1500:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for c in culprits:
        assert c in said, f"{c!r} not named in the last line: {said!r}"


def in_dir(work: Path):
    return contextlib.chdir(work)


def _small_sft(work: Path, rows: int = 8) -> str:
    """The first ``rows`` rows of the tiny SFT data as a file in ``work``; its dataset_mixture as JSON."""
    data = [json.loads(x) for x in next((work / ".cache" / "tiny").glob("v*-seed0/data/sft_train.jsonl"))
            .read_text().splitlines()[:rows]]
    (work / "small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    return json.dumps({"datasets": [{"data_files": {"train": "small.jsonl"}, "test_split": None}]})


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """A working directory as a user has it after `make train`: the tiny recipes (shortened), the assets
    (.cache/tiny: a link to the session's), runs/tiny-sft and runs/tiny-aot_unpaired; and a small evaluation
    recipe."""
    work = tmp_path_factory.mktemp("guards") / "work"
    copy_tiny_recipes(work, steps={True: 20, False: 4})
    (work / ".cache").mkdir()
    (work / ".cache" / "tiny").symlink_to(Path(tiny["base_model"]).parents[1])
    ev = yaml.safe_load((REPO / "recipes" / "eval" / "tiny.eval.yaml").read_text())
    ev.update(name="tiny_small")
    ev["tiny_task"].update(limit=24, heldout_pairs=32, batch_size=64)
    (work / "recipes" / "eval").mkdir()
    (work / EVAL).write_text(yaml.safe_dump(ev))
    with in_dir(work):
        train("recipes/tiny/aot_unpaired.yaml")  # trains the SFT stage first
    return work


@pytest.fixture
def work(trained, tmp_path) -> Path:
    """A private copy of ``trained`` to change."""
    return Path(shutil.copytree(trained, tmp_path / "work", symlinks=True))


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory) -> Path:
    """``trained`` with a copy of the AOT run (cp -r: the same weights under another name), both evaluated."""
    work = Path(shutil.copytree(trained, tmp_path_factory.mktemp("evaluated") / "work", symlinks=True))
    shutil.copytree(work / AOT, work / f"{AOT}-copy")
    for run in (AOT, f"{AOT}-copy"):
        done = cli(work, "eval", run, EVAL)
        assert done.returncode == 0, done.stderr[-3000:]
    return work


def _wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the first process ended (rc {proc.returncode}) before {what}: "
                                 f"{log.read_text()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _background_train(work: Path, log: Path, *args: str) -> subprocess.Popen:
    """``aot-train ARGS`` started in the background, its output to ``log`` (a pipe nobody reads could fill)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "aot_handbook.cli", "train", *args], cwd=work, env=ENV,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


# ------------------------------------------------------------------ references


def test_eval_refuses_a_run_whose_reference_is_gone(work):
    shutil.move(work / SFT, work / "moved-sft")  # the SFT run moved (or the AOT run copied elsewhere)
    done = cli(work, "eval", AOT, EVAL)
    refused(done, AOT, SFT)
    assert not (work / "results").exists()


def test_eval_refuses_a_reference_retrained_since(work):
    with in_dir(work):
        train("recipes/tiny/sft.yaml", ["--overwrite_output_dir", "true", "--learning_rate", "5e-4",
                                        "--max_steps", "2", "--dataset_mixture", _small_sft(work),
                                        "--per_device_train_batch_size", "4"])
    done = cli(work, "eval", AOT, EVAL)
    refused(done, AOT, SFT)
    assert not (work / "results").exists()


def test_eval_accepts_a_byte_identical_restored_reference(work):
    """The other side of the two above (it holds today and must keep holding): a reference moved away and
    copied back (new inodes and times, same bytes) is the same model."""
    shutil.move(work / SFT, work / "backup")
    shutil.copytree(work / "backup", work / SFT)
    done = cli(work, "eval", AOT, EVAL)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((work / "results" / "tiny-aot_unpaired" / "tiny_small.json").read_text())
    assert result["details"]["reference"] == SFT


# ------------------------------------------------------------------ one writer per folder


def test_a_second_training_into_a_folder_being_trained_is_refused(work, tmp_path):
    log = tmp_path / "first.log"
    small = ["--dataset_mixture", _small_sft(work), "--per_device_train_batch_size", "4"]
    first = _background_train(work, log, "recipes/tiny/sft.yaml", "--output_dir", "runs/shared",
                              "--max_steps", "100000", *small)
    try:
        _wait_for(lambda: (work / "runs/shared/fingerprint.json").is_file(), first, log, "the first training started")
        before = digest(work / "runs/shared")
        second = cli(work, "train", "recipes/tiny/sft.yaml", "--output_dir", "runs/shared", "--max_steps", "2",
                     "--learning_rate", "5e-4", *small)
        after = digest(work / "runs/shared")
    finally:
        first.kill()
        first.wait()
    refused(second, "runs/shared", f"pid {first.pid}")
    assert after == before


def test_allow_incomplete_refuses_weights_an_interrupted_overwrite_left(work, tmp_path):
    old = json.loads((work / SFT / "fingerprint.json").read_text())["sha256"]

    def restarted():
        try:
            return json.loads((work / SFT / "fingerprint.json").read_text())["sha256"] != old
        except (OSError, ValueError):
            return False

    log = tmp_path / "overwrite.log"
    proc = _background_train(work, log, "recipes/tiny/sft.yaml", "--overwrite_output_dir", "true", "--learning_rate",
                             "5e-4", "--max_steps", "100000", "--dataset_mixture", _small_sft(work),
                             "--per_device_train_batch_size", "4")
    try:
        _wait_for(restarted, proc, log, "the overwrite started")
    finally:
        proc.send_signal(signal.SIGKILL)  # interrupted: the new fingerprint is written, the weights are the old run's
        proc.wait()
    assert not (work / SFT / "run.json").exists()
    done = cli(work, "eval", SFT, EVAL, "--allow-incomplete")
    refused(done, SFT)
    assert not (work / "results").exists()


# ------------------------------------------------------------------ truncation


def test_training_refuses_a_max_length_that_cuts_the_answers_away(work):
    """The tiny prompts are 7 tokens (<bos>47+38=), the answers 4 (085<eos>): at max_length 8 each answer is
    cut to its first digit, which chosen and rejected share in almost every pair."""
    with in_dir(work), pytest.raises(ValueError, match=r"max_length") as err:
        train("recipes/tiny/aot_paired.yaml", ["--max_length", "8", "--output_dir", "runs/cut", "--max_steps", "1",
                                               "--precompute_ref_log_probs", "false", "--summary", "false"])
    assert "chosen == rejected" in str(err.value)
    assert not (work / "runs/cut").exists()


# ------------------------------------------------------------------ copies and names


def _row(table_md: str, *labels: str) -> str:
    (line,) = [x for x in table_md.splitlines() if all(f" {label} |" in x for label in labels)]
    return line


def test_a_copied_run_is_not_counted_as_a_second_seed(evaluated, tmp_path):
    done = cli(evaluated, "table", "tiny1", "--out-dir", str(tmp_path))
    if done.returncode != 0:  # refused: naming both folders
        refused(done, AOT, f"{AOT}-copy")
        return
    row = _row(done.stdout, "AOT unpaired", "+ NLL")
    assert "(n=1)" in row, row  # deduplicated, and said so
    assert f"{AOT}-copy" in done.stderr


def test_compare_refuses_the_same_run_twice(evaluated, tmp_path):
    done = cli(evaluated, "compare", AOT, f"{AOT}-copy", "--eval", "tiny_small", "--n-boot", "50",
               "--out-dir", str(tmp_path))
    refused(done, AOT, f"{AOT}-copy")


def test_compare_refuses_results_of_different_evaluations(evaluated, tmp_path):
    work = Path(shutil.copytree(evaluated, tmp_path / "work", symlinks=True))
    ev = yaml.safe_load((work / EVAL).read_text())
    ev["tiny_task"]["limit"] = 36  # the same evaluation name, other prompts
    (work / EVAL).write_text(yaml.safe_dump(ev))
    assert cli(work, "eval", SFT, EVAL).returncode == 0
    done = cli(work, "compare", AOT, SFT, "--eval", "tiny_small", "--n-boot", "50", "--out-dir", str(tmp_path / "c"))
    refused(done, "tiny_small", AOT, SFT)


def test_two_runs_of_one_folder_name_keep_their_own_results(work):
    with in_dir(work):
        train("recipes/tiny/aot_unpaired.yaml", ["--output_dir", "other/tiny-aot_unpaired", "--seed", "1",
                                                 "--summary", "false"])
    assert cli(work, "eval", AOT, EVAL).returncode == 0
    first = digest(work / "results")
    second = cli(work, "eval", "other/tiny-aot_unpaired", EVAL)
    after = digest(work / "results")
    assert all(after.get(name) == sha for name, sha in first.items()), "the first run's result was replaced"
    if second.returncode != 0:
        refused(second, "other/tiny-aot_unpaired", AOT)
        assert after == first
        return
    results = [json.loads((work / "results" / name).read_text()) for name in after if name.endswith(".json")]
    runs = {r["run"]["path"] for r in results if isinstance(r, dict) and "run" in r and "scores" in r}
    assert runs == {AOT, "other/tiny-aot_unpaired"}


def test_sweep_reports_what_changed_instead_of_skipping(work):
    fixed = {"max_steps": 2, "per_device_train_batch_size": 4,
             "dataset_mixture": json.loads(_small_sft(work))}
    sweep = {"base": "recipes/tiny/sft.yaml", "output_root": "runs/sweep", "fixed": fixed, "runs": [{"seed": 0}]}
    (work / "s.sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert cli(work, "sweep", "s.sweep.yaml").returncode == 0
    before = digest(work / "runs/sweep")
    recipe = yaml.safe_load((work / "recipes/tiny/sft.yaml").read_text())
    recipe["learning_rate"] = 5e-4
    (work / "recipes/tiny/sft.yaml").write_text(yaml.safe_dump(recipe))
    done = cli(work, "sweep", "s.sweep.yaml")
    assert done.returncode != 0 and "skipped" not in done.stdout, done.stdout[-2000:]
    assert "learning_rate: 0.001 -> 0.0005" in done.stdout + done.stderr
    assert digest(work / "runs/sweep") == before


# ------------------------------------------------------------------ writes


def test_output_dir_on_a_model_folder_that_is_not_a_run_is_refused(work):
    base = next((work / ".cache" / "tiny").glob("v*-seed0")) / "base_model"
    shutil.copytree(base, work / "models" / "my-model")  # e.g. a downloaded model, not the one trained from
    before = digest(work / "models")
    with in_dir(work), pytest.raises(ValueError, match=r"models/my-model.*--overwrite_output_dir"):
        train("recipes/tiny/sft.yaml", ["--output_dir", "models/my-model", "--max_steps", "1"])
    assert digest(work / "models") == before


def test_a_recipe_key_given_twice_is_refused(work):
    text = (work / "recipes/tiny/sft.yaml").read_text() + "max_steps: 1\n"  # max_steps is already set above
    path = work / "recipes/tiny/sft_twice.yaml"
    path.write_text(text)
    line = text.splitlines().index("max_steps: 20") + 1
    with in_dir(work), pytest.raises(ValueError) as err:
        train("recipes/tiny/sft_twice.yaml", ["--output_dir", "runs/twice"])
    assert f"key 'max_steps' is given twice, on line {line} and line {len(text.splitlines())}" in str(err.value)
    assert not (work / "runs/twice").exists()


@pytest.mark.parametrize("key,length", [("max_steps", ["--max_steps", "0"]),
                                        ("num_train_epochs", ["--max_steps", "-1", "--num_train_epochs", "0"])])
def test_no_op_training_lengths_are_refused_before_anything_runs(work, key, length):
    """transformers reads max_steps <= 0 as "use num_train_epochs" (3 by default): max_steps 0 trains three
    epochs. On 8 rows at batch 4 that is 6 steps here; on a real dataset, hours."""
    args = ["--dataset_mixture", _small_sft(work), "--per_device_train_batch_size", "4", "--output_dir", "runs/noop",
            *length]
    with in_dir(work), pytest.raises(ValueError, match=rf"'{key}'"):
        train("recipes/tiny/sft.yaml", args)
    assert not (work / "runs/noop").exists()


def test_binarize_refuses_non_finite_scores_naming_the_column(work):
    rows = [{"prompt": f"{a}+11=", "completion": f"{a + 11:03d}", "score": s}
            for a, s in zip(range(10, 30), [1.0, 2.0, 3.0, float("inf"), 5.0] * 4)]
    (work / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # inf is written Infinity
    mixture = {"datasets": [{"data_files": {"train": "scored.jsonl"}, "test_split": None,
                             "binarize": {"score": "score", "threshold": "median"}}]}
    with in_dir(work), pytest.raises(ValueError, match=r"score.*(inf|finite)"):
        train("recipes/tiny/kto.yaml", ["--dataset_mixture", json.dumps(mixture), "--output_dir", "runs/inf",
                                        "--max_steps", "1", "--per_device_train_batch_size", "4", "--summary", "false",
                                        "--precompute_ref_log_probs", "false"])
    assert not (work / "runs/inf").exists()


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as ENOSPC would
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_failed_write_during_training_is_one_line_naming_the_path(work):
    """No file may grow past 2 MB (RLIMIT_FSIZE, in the training process only): the tiny model's weights are
    4.2 MB, so saving them fails as on a full disk (EFBIG here, ENOSPC there: both OSErrors). The data stage
    (8 rows) passes."""
    done = cli(work, "train", "recipes/tiny/sft.yaml", "--dataset_mixture", _small_sft(work),
               "--per_device_train_batch_size", "4", "--max_steps", "2", "--output_dir", "runs/full",
               preexec_fn=_file_size_limit(2 * 1024**2))
    refused(done, "runs/full")
    assert not (work / "runs/full/run.json").exists()


# ------------------------------------------------------------------ results and evaluation recipes


@pytest.mark.parametrize("command", [["table", "tiny"], ["compare", AOT, f"{AOT}-copy", "--eval", "tiny_small"]])
def test_a_truncated_result_file_is_named(evaluated, tmp_path, command):
    work = Path(shutil.copytree(evaluated, tmp_path / "work", symlinks=True))
    result = work / "results" / "tiny-aot_unpaired" / "tiny_small.json"
    result.write_text(result.read_text()[:200])  # a copy cut short, or a write that was not atomic
    done = cli(work, *command, "--out-dir", str(tmp_path / "out"))
    refused(done, "results/tiny-aot_unpaired/tiny_small.json")


@pytest.mark.parametrize("change", [{"columns": {"tiny_mc": "tiny_arith_mc/accuracy,none"}},
                                    {"tasks": ["tiny_arith_mcq"], "columns": {"tiny_mc": "tiny_arith_mcq/acc,none"}}])
def test_eval_checks_lm_eval_names_before_any_model_loads(work, change):
    ev = yaml.safe_load((REPO / "recipes/eval/tiny_lm_eval.eval.yaml").read_text())
    ev["lm_eval"].update(tiny_rows=8, **change)
    (work / "recipes/eval/bad_lm_eval.eval.yaml").write_text(yaml.safe_dump(ev))
    done = cli(work, "eval", SFT, "recipes/eval/bad_lm_eval.eval.yaml")
    refused(done, "recipes/eval/bad_lm_eval.eval.yaml", "lm_eval.", "tiny_arith_mc")
    assert not (work / "results").exists()


# ------------------------------------------------------------------ user errors: one line, never a traceback


@pytest.mark.parametrize("args,culprit", [  # one line since the refactor's cli (errors.UserError, OSError)
    (["table", "99"], "99"),
    (["compare", AOT, SFT], "tiny-aot_unpaired"),  # no results yet
    (["eval", SFT, "recipes/eval/no_such.eval.yaml"], "recipes/eval/no_such.eval.yaml"),
    (["eval", "runs/unfinished", EVAL], "runs/unfinished"),  # a run folder without run.json
    (["plot", "runs/missing"], "runs/missing"),
    (["generate", "runs/missing", "--instructions", "prompts.jsonl"], "runs/missing"),
])
def test_user_errors_are_one_line(work, args, culprit):
    shutil.copytree(work / SFT, work / "runs/unfinished")
    (work / "runs/unfinished/run.json").unlink()
    (work / "prompts.jsonl").write_text('{"instruction": "1+1="}\n')
    before = digest(work)
    refused(cli(work, *args), culprit)
    assert digest(work) == before


# ------------------------------------------------------------------ make targets


@pytest.mark.parametrize("target,var", [("train", "RECIPE"), ("eval", "EVAL")])
def test_make_targets_pass_paths_with_spaces_and_unicode_whole(work, target, var):
    folder = work / "my recipes ü"
    folder.mkdir()
    bad = folder / ("tïny sft.yaml" if target == "train" else "tïny sft.eval.yaml")
    if target == "train":  # a recipe with an unknown key: refused at once, naming the file
        bad.write_text((work / "recipes/tiny/sft.yaml").read_text() + "learning_rat: 1\n")
    else:  # an eval recipe of an unknown kind
        bad.write_text("name: x\nkind: nonsense\n")
    rel = str(bad.relative_to(work))
    extra = [f"RUN={SFT}"] if target == "eval" else []
    done = run_make(work, target, f"{var}={rel}", *extra)
    assert done.returncode != 0
    assert rel in done.stderr, done.stderr[-2000:]
