"""aot_handbook.plan: a recipe's requires and a pairs recipe's rounds as stages, checked first, run in order,
resumable; the output folders of a plan never overlap."""

import json
from pathlib import Path

import pytest

from aot_handbook.errors import UserError
from aot_handbook.plan import make, train
from aot_handbook.run_folder import is_complete
from tests.helpers import copy_tiny_recipes, logged_losses, tiny_workdir, write_pairs_recipe, write_recipe


def test_output_dir_of_a_required_run_is_refused(tiny, tmp_path, nothing_loads):
    first = write_recipe(tmp_path, tiny, output_dir=str(tmp_path / "sft"))
    (tmp_path / "recipe.yaml").rename(tmp_path / "sft.yaml")
    path = write_recipe(tmp_path, tiny, requires=[str(tmp_path / "sft.yaml")], output_dir=str(tmp_path / "sft"))
    assert first
    with pytest.raises(UserError, match=r"is the output of the required run .*sft.yaml"):
        train(path)
    assert not (tmp_path / "sft").exists()


@pytest.mark.slow
def test_rounds_sample_from_the_previous_policy(tiny, tmp_path, monkeypatch, reward_model):
    """rounds: 2 with LoRA training: round 2 samples from round 1's policy (its adapter merged)."""
    tiny_workdir(tmp_path, tiny, monkeypatch)
    path = write_pairs_recipe(tmp_path, tiny, model="runs/tiny-sft", limit=8, scorer="reward_model",
                   reward_model=str(reward_model[0]), output_dir="runs/rounds", rounds=2,
                   train_recipe="recipes/tiny/aot_paired.yaml",
                   train_overrides=["--max_steps", 1, "--summary", "false", "--per_device_train_batch_size", 8,
                                    "--use_peft", "true", "--aot_nll_weight", 0.0])
    written = make(str(path))
    assert written == Path("runs/rounds/rounds.json")
    results = json.loads(written.read_text())
    assert [r["round"] for r in results] == [1, 2]
    assert [r["sampled_from"] for r in results] == ["runs/tiny-sft", "runs/rounds/round1/policy/merged"]
    second = json.loads(Path("runs/rounds/round2/data/provenance.json").read_text())
    assert second["loaded"] == {"model": "runs/rounds/round1/policy/merged", "adapter": None, "backend": "hf"}
    assert second["sampling"]["seed"] == 1  # each round its own samples
    assert (Path("runs/rounds/round1/policy") / "adapter_config.json").is_file()
    for r in (1, 2):
        policy = Path(f"runs/rounds/round{r}/policy")
        assert is_complete(policy)
        recipe = json.loads((policy / "recipe.json").read_text())
        start = recipe["overrides"][recipe["overrides"].index("--model_name_or_path") + 1]
        assert start == results[r - 1]["sampled_from"]  # the policy sampled is the one trained from (and reference)


@pytest.mark.slow
def test_a_training_recipe_that_requires_a_pairs_recipe_builds_its_data_first(tiny, tmp_path, monkeypatch,
                                                                               reward_model):
    """recipes/tiny/onpolicy/*.yaml train on runs/tiny-pairs, which recipes/tiny/sft.pairs.yaml writes: listed in
    `requires`, the data is built first when missing (and only then), and validation accepts the recipe before
    the data exists (its folder is pending), while a data file nobody writes is still an error."""
    from aot_handbook.tooling.validate import ValidationError, validate_recipe

    tiny_workdir(tmp_path, tiny, monkeypatch)
    pairs = Path("recipes/tiny/sft.pairs.yaml")
    # a reward model scores the untrained model's answers apart (the program judge would find them all wrong)
    pairs.write_text(pairs.read_text().replace("scorer: tiny_judge", "scorer: reward_model")
                     + f"limit: 16\nreward_model: {reward_model[0]}\n")
    validate_recipe("recipes/tiny/onpolicy/aot_paired.yaml")  # runs/tiny-pairs does not exist yet
    assert not Path("runs/tiny-pairs").exists()
    short = ["--max_steps", "2", "--summary", "false", "--per_device_train_batch_size", "8", "--logging_steps", "1"]
    run = train("recipes/tiny/onpolicy/aot_paired.yaml", short)
    provenance = Path("runs/tiny-pairs/provenance.json")
    assert provenance.is_file() and is_complete(run) and len(logged_losses(run)) == 2
    built = provenance.stat().st_mtime_ns
    train("recipes/tiny/onpolicy/dpo.yaml", short)
    assert provenance.stat().st_mtime_ns == built  # the data is there: not built again

    orphan = Path("recipes/tiny/onpolicy/orphan.yaml")
    orphan.write_text(Path("recipes/tiny/onpolicy/aot_paired.yaml").read_text()
                      .replace("runs/tiny-pairs/paired.jsonl", "runs/nobody/paired.jsonl"))
    with pytest.raises(ValidationError, match=r"data_files\.train' has no such file: 'runs/nobody/paired.jsonl'"):
        validate_recipe(str(orphan))


def test_bad_recipe_fails_before_anything_loads(tmp_path, monkeypatch):
    copy_tiny_recipes(tmp_path, steps={True: 1, False: 1})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"recipes/tiny/aot_unpaired.yaml: .*'aot_penalty'|aot_penalty: unknown"):
        train("recipes/tiny/aot_unpaired.yaml", ["--aot_penalty", "cubic"])
    assert not Path(".cache").exists() and not Path("runs").exists()


def _scratch_recipes(tmp_path, monkeypatch):
    """The real tiny recipes in an empty working folder: nothing built, no run, no data."""
    import shutil

    from tests.helpers import REPO

    shutil.copytree(REPO / "recipes" / "tiny", tmp_path / "recipes" / "tiny")
    monkeypatch.chdir(tmp_path)


def test_requires_come_first_each_once_and_every_recipe_is_parsed(tmp_path, monkeypatch, nothing_loads):
    from aot_handbook.plan import plan

    _scratch_recipes(tmp_path, monkeypatch)
    stages = plan("recipes/tiny/onpolicy/aot_paired.yaml")  # it requires sft.yaml and sft.pairs.yaml, which
    assert [(s.kind, s.recipe) for s in stages] == [                            # requires sft.yaml too
        ("train", "recipes/tiny/sft.yaml"), ("data", "recipes/tiny/sft.pairs.yaml"),
        ("train", "recipes/tiny/onpolicy/aot_paired.yaml")]
    assert [str(s.output) for s in stages] == ["runs/tiny-sft", "runs/tiny-pairs", "runs/tiny-onpolicy-aot_paired"]
    assert not any(s.done() for s in stages) and not Path("runs").exists()  # planning builds nothing
    path = Path("recipes/tiny/onpolicy/aot_paired.yaml")
    path.write_text(path.read_text().replace("aot_sort: hard", "aot_sort: bogo"))
    with pytest.raises(UserError, match="aot_sort: unknown sort 'bogo'"):  # the last recipe, checked first
        plan("recipes/tiny/onpolicy/aot_paired.yaml")


def test_a_plan_refuses_cycles_and_files_it_cannot_build(tmp_path, monkeypatch, tiny, nothing_loads):
    from aot_handbook.plan import plan

    for name in "abcd":
        (tmp_path / name).mkdir()
    a = write_recipe(tmp_path / "a", tiny, requires=[str(tmp_path / "b" / "recipe.yaml")], output_dir="runs/a")
    write_recipe(tmp_path / "b", tiny, requires=[a], output_dir="runs/b")
    with pytest.raises(UserError, match=r"requires itself \(.*a/recipe.yaml -> .*b/recipe.yaml -> .*a/recipe.yaml"):
        plan(a)
    sweep = tmp_path / "x.sweep.yaml"
    sweep.write_text("base: recipes/tiny/kto.yaml\n")
    c = write_recipe(tmp_path / "c", tiny, requires=[str(sweep)], output_dir="runs/c")
    with pytest.raises(UserError, match=r"key 'requires': .*x.sweep.yaml is a sweep; a plan builds training"):
        plan(c)
    d = write_recipe(tmp_path / "d", tiny, requires=[str(tmp_path / "none.yaml")], output_dir="runs/d")
    with pytest.raises(UserError, match=r"key 'requires': recipe not found: .*none.yaml"):
        plan(d)


def test_rounds_are_stages_of_the_plan(tmp_path, monkeypatch, nothing_loads):
    """A pairs recipe with rounds: 3 and a LoRA training recipe: per round its data (sampled from the policy
    before), its training (from that policy, on that data) and the merge of its adapter; rounds.json last."""
    from aot_handbook.plan import plan

    _scratch_recipes(tmp_path, monkeypatch)
    stages = plan("recipes/tiny/onpolicy/rounds.pairs.yaml")
    kinds = [s.kind for s in stages]
    assert kinds[:2] == ["train", "data"]  # the SFT run, and the data the training recipe requires
    assert kinds[2:] == ["data", "train", "merge"] * 3 + ["rounds"]
    root = Path("runs/tiny-onpolicy-rounds")
    model = "runs/tiny-sft"
    for r in (1, 2, 3):
        data, train_stage, merge = stages[2 + 3 * (r - 1): 5 + 3 * (r - 1)]
        assert data.output == root / f"round{r}" / "data" and train_stage.output == root / f"round{r}" / "policy"
        args = dict(zip(data.overrides[::1], data.overrides[1:]))
        assert args["--model"] == model and args["--seed"] == str(r - 1) and args["--rounds"] == "0"
        assert train_stage.overrides[train_stage.overrides.index("--model_name_or_path") + 1] == model
        assert merge.recipe == str(train_stage.output) and merge.output == train_stage.output / "merged"
        model = str(merge.output)
    assert stages[-1].output == root


def test_a_done_stage_is_skipped_and_the_last_always_runs(tmp_path, monkeypatch, nothing_loads):
    from aot_handbook import plan as plan_module

    _scratch_recipes(tmp_path, monkeypatch)
    ran = []
    monkeypatch.setattr(plan_module.Stage, "run", lambda self: ran.append(self.recipe) or self.output)
    Path("runs/tiny-sft").mkdir(parents=True)
    (Path("runs/tiny-sft") / "run.json").write_text("{}")  # the SFT run is complete
    out = plan_module.make("recipes/tiny/onpolicy/aot_paired.yaml")
    assert ran == ["recipes/tiny/sft.pairs.yaml", "recipes/tiny/onpolicy/aot_paired.yaml"]
    assert out == Path("runs/tiny-onpolicy-aot_paired")
    (Path("runs/tiny-pairs")).mkdir()
    (Path("runs/tiny-pairs") / "provenance.json").write_text("{}")  # the data is complete too
    ran.clear()
    plan_module.make("recipes/tiny/onpolicy/aot_paired.yaml")
    assert ran == ["recipes/tiny/onpolicy/aot_paired.yaml"]  # a finished run decides itself (its fingerprint)
    with pytest.raises(UserError, match="a pairs recipe, not a training recipe"):
        plan_module.train("recipes/tiny/sft.pairs.yaml")


def test_requires_only_builds_what_is_missing_and_not_the_recipe(tmp_path, monkeypatch, nothing_loads):
    """make(requires_only=True): what aot-reproduce --jobs builds once before runs train side by side."""
    from aot_handbook import plan as plan_module

    _scratch_recipes(tmp_path, monkeypatch)
    ran = []
    monkeypatch.setattr(plan_module.Stage, "run", lambda self: ran.append(self.recipe) or self.output)
    plan_module.make("recipes/tiny/onpolicy/aot_paired.yaml", requires_only=True)
    assert ran == ["recipes/tiny/sft.yaml", "recipes/tiny/sft.pairs.yaml"]  # not the run itself
    Path("runs/tiny-sft").mkdir(parents=True)
    (Path("runs/tiny-sft") / "run.json").write_text("{}")
    ran.clear()
    plan_module.make("recipes/tiny/onpolicy/aot_paired.yaml", requires_only=True)
    assert ran == ["recipes/tiny/sft.pairs.yaml"]  # a complete requirement is skipped
    ran.clear()
    assert plan_module.make("recipes/tiny/sft.yaml", requires_only=True) is None and ran == []  # requires nothing
