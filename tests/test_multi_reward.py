"""Multi-attribute unpaired AOT (issue 19): the loss against POT, gradcheck, the one-attribute reduction,
the global sort across real processes, the data's attribute labels and their errors, the trainer, recipes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
import yaml

from aot_handbook.loss import PENALTIES, aot_loss
from aot_handbook.multi_reward import multi_aot_loss

HERE = Path(__file__).resolve()


def _cost(penalty, beta, u, v):
    """M[i, j] = h(beta * (u_i - v_j)), the transport cost POT gets (as tests/test_loss.py)."""
    return PENALTIES[penalty](torch.as_tensor(beta * (u[:, None] - v[None, :])), 0.0).numpy()


def _pot_multi(x, labels, weights, penalty, beta):
    """sum_k w_k * emd2(uniform on U_k, uniform on V_k, h cost); attributes without both sides skipped."""
    total = 0.0
    for k, w in enumerate(weights):
        pos = labels[:, k]
        u, v = x[pos], x[~pos]
        if len(u) == 0 or len(v) == 0:
            continue
        total += w * ot.emd2(np.full(len(u), 1 / len(u)), np.full(len(v), 1 / len(v)),
                             _cost(penalty, beta, u, v), numItermax=10**7)
    return total


def _random_batch(rng, n, k, empty_share=0.25):
    x = torch.tensor(rng.normal(0, 3, n) if rng.random() < 0.5 else rng.integers(-3, 4, n) * 1.5)
    labels = torch.tensor(rng.random((n, k)) < rng.uniform(0.1, 0.9, k))
    for j in range(k):  # some attributes one-sided in the batch (all positive or all negative)
        if rng.random() < empty_share:
            labels[:, j] = bool(rng.integers(2))
    return x, labels


@pytest.mark.parametrize("penalty", list(PENALTIES))
def test_equals_weighted_sum_of_pot_transport_costs(penalty):
    rng = np.random.default_rng(0)
    empties = 0
    for _ in range(60):
        n, k = int(rng.integers(2, 40)), int(rng.integers(1, 6))
        x, labels = _random_batch(rng, n, k)
        weights = rng.uniform(0, 2, k)
        beta = float(rng.choice([0.1, 0.5, 2.0]))
        ours, terms = multi_aot_loss(x, labels, weights, beta=beta, penalty=penalty)
        ref = _pot_multi(x.numpy(), labels.numpy(), weights, penalty, beta)
        assert ours.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
        one_sided = [bool(labels[:, j].all() or not labels[:, j].any()) for j in range(k)]
        assert [t is None for t in terms] == one_sided
        empties += sum(one_sided)
    assert empties > 10  # the random cases did exercise empty partitions


def test_one_attribute_is_aot_loss_exactly():
    rng = np.random.default_rng(1)
    for penalty in PENALTIES:
        for sort in ("hard", "soft", "soft_pav"):
            x, labels = _random_batch(rng, 17, 1, empty_share=0.0)
            labels[0, 0], labels[1, 0] = True, False
            ours, _ = multi_aot_loss(x, labels, [1.0], beta=0.3, penalty=penalty, sort=sort)
            ref = aot_loss(x[labels[:, 0]], x[~labels[:, 0]], beta=0.3, penalty=penalty, sort=sort)
            assert torch.equal(ours, ref)


def test_gradcheck():
    rng = np.random.default_rng(2)
    x, labels = _random_batch(rng, 13, 3, empty_share=0.0)
    x = (x + torch.tensor(rng.normal(0, 1e-2, 13))).requires_grad_()  # no ties: the sort is locally fixed
    labels[:, 2] = True  # one attribute contributes 0 (and no gradient)
    for penalty in ("logistic", "squared_hinge", "least_squares"):
        assert torch.autograd.gradcheck(
            lambda t, h=penalty: multi_aot_loss(t, labels, [0.7, 1.3, 5.0], beta=0.4, penalty=h)[0], (x,))


def test_all_attributes_empty_gives_zero_with_a_graph():
    x = torch.randn(5, requires_grad=True)
    loss, terms = multi_aot_loss(x, torch.ones(5, 2, dtype=torch.bool), [1.0, 1.0], beta=0.1)
    assert loss.item() == 0.0 and terms == [None, None]
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(5))


def test_loss_rejects_bad_input():
    x = torch.randn(4)
    with pytest.raises(ValueError, match="weights must be 2"):
        multi_aot_loss(x, torch.ones(4, 2, dtype=torch.bool), [1.0])
    with pytest.raises(ValueError, match="labels must be bool"):
        multi_aot_loss(x, torch.ones(4, 2), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        multi_aot_loss(x, torch.ones(3, 2, dtype=torch.bool), [1.0, 1.0])


# ---------------------------------------------------------------- global sort over real processes (gloo)

GLOBAL_N, GLOBAL_K = 11, 3


def _global_case():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(GLOBAL_N, generator=g, dtype=torch.float64)
    labels = torch.rand(GLOBAL_N, GLOBAL_K, generator=g) < 0.5
    labels[:4, 1] = True  # rank 0's shard (rows 0-3): attribute 1 has no negative there
    labels[4:, 2] = False  # rank 1's shard (rows 4-10): attribute 2 has no positive there
    labels[0, 2] = True
    labels[4, 1] = False
    return x0, labels, [0.5, 1.0, 2.0]


def _model_x(w, x0):  # a replicated parameter w maps each row to its log-ratio
    return x0 * w[0] + w[1] * x0 ** 2


def _worker(out):
    import torch.distributed as dist

    from aot_handbook.multi_reward import gather_batch

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x0, labels, weights = _global_case()
    rows = slice(0, 4) if rank == 0 else slice(4, GLOBAL_N)  # unequal shards
    w = torch.tensor([1.0, 0.3], dtype=torch.float64, requires_grad=True)
    x, lab = gather_batch(_model_x(w, x0[rows]), labels[rows])
    loss, _ = multi_aot_loss(x, lab, weights, beta=0.7)
    loss.backward()
    grad = w.grad.clone()
    dist.all_reduce(grad)
    torch.save({"loss": loss.item(), "grad": grad / dist.get_world_size()}, Path(out) / f"rank{rank}.pt")


def test_global_sort_equals_one_process(tmp_path):
    """2 ranks, unequal shards, an attribute empty on each rank's shard: the loss and the DDP-averaged
    gradient equal the single-process ones on the whole batch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(HERE), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    x0, labels, weights = _global_case()
    w = torch.tensor([1.0, 0.3], dtype=torch.float64, requires_grad=True)
    loss, terms = multi_aot_loss(_model_x(w, x0), labels, weights, beta=0.7)
    loss.backward()
    assert all(t is not None for t in terms)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-12)
        torch.testing.assert_close(got["grad"], w.grad, rtol=1e-10, atol=1e-12)



# ---------------------------------------------------------------- data: one label per attribute

HS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
BT = {"animal_abuse": "animal_abuse", "violence": "violence,aiding_and_abetting,incitement",
      "privacy_violation": "privacy_violation"}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _helpsteer(n, seed):
    rng = np.random.default_rng(seed)
    return [{"prompt": f"{10 + i}+{20 + i}=", "response": f"{30 + 2 * i:03d}",
             **{a: int(rng.integers(0, 5)) for a in HS}} for i in range(n)]


def _mixture(files, attributes, **extra):
    return {"datasets": [{"data_files": files, "attributes": attributes, **extra}]}


def _load(block, source="test.yaml"):
    from aot_handbook.data import DatasetMixture, load_mixture

    return load_mixture(DatasetMixture.from_dict(block, source=source), target="unpaired")


def test_attribute_labels_follow_direction_and_cut(tmp_path):
    train, test = _helpsteer(40, 0), _helpsteer(12, 1)
    files = {"train": _jsonl(tmp_path / "train.jsonl", train), "test": _jsonl(tmp_path / "test.jsonl", test)}
    attributes = {"helpfulness": {}, "verbosity": {"direction": "lower"},
                  "correctness": {"threshold": 2}, "complexity": {"score": "coherence", "direction": "lower",
                                                                   "threshold": 3}}
    data = _load(_mixture(files, attributes, columns={"completion": "response"}))
    med = {a: float(np.median([r[a] for r in train])) for a in HS}
    for split, rows in (("train", train), ("test", test)):  # test labels use the train split's cuts
        got = {r["completion"]: r for r in data[split]}
        for row in rows:
            g = got[row["response"]]
            assert g["label_helpfulness"] == (row["helpfulness"] > med["helpfulness"])
            assert g["label_verbosity"] == (row["verbosity"] < med["verbosity"])
            assert g["label_correctness"] == (row["correctness"] > 2)
            assert g["label_complexity"] == (row["coherence"] < 3)
            votes = [g[f"label_{a}"] for a in attributes]
            assert g["label"] == (sum(votes) > len(votes) / 2)  # no label column: the majority


def test_nested_flags_are_read_from_the_struct(tmp_path):
    rows = [{"prompt": f"{i}+1=", "response": f"{i:03d}", "is_safe": i % 3 != 0,
             "category": {theirs: i % 3 == 0 and (i + j) % 2 == 0 for j, theirs in enumerate(BT.values())}}
            for i in range(12)]
    rows[0]["category"] = dict.fromkeys(BT.values(), True)
    files = {"train": _jsonl(tmp_path / "bt.jsonl", rows)}
    attributes = {ours: {"score": f"category.{theirs}", "direction": "lower", "threshold": 0.5}
                  for ours, theirs in BT.items()}
    data = _load(_mixture(files, attributes, columns={"completion": "response", "label": "is_safe"},
                          test_split=None))
    got = {r["completion"]: r for r in data["train"]}
    for row in rows:
        g = got[row["response"]]
        assert g["label"] == row["is_safe"]
        assert all(g[f"label_{ours}"] == (not row["category"][theirs]) for ours, theirs in BT.items())


@pytest.mark.parametrize("attributes,rows_edit,message", [
    ({"helpfulness": {}, "honesty": {}}, None, "attribute 'honesty': score column 'honesty' is missing"),
    ({"helpfulness": {}}, lambda r: {**r, "helpfulness": "high"}, "score column 'helpfulness' is not numeric"),
    ({"helpfulness": {}, "verbosity": {"threshold": 10}}, None,
     "attribute 'verbosity': every answer is negative \\(column 'verbosity'"),
    ({"helpfulness": {"direction": "up"}}, None, "helpfulness.direction' must be one of"),
    ({"helpfulness": {"scor": "x"}}, None, "takes 'score'"),
])
def test_bad_attributes_name_the_column(tmp_path, attributes, rows_edit, message):
    rows = _helpsteer(16, 2)
    rows = [rows_edit(r) for r in rows] if rows_edit else rows
    files = {"train": _jsonl(tmp_path / "train.jsonl", rows)}
    with pytest.raises(ValueError, match=message):
        _load(_mixture(files, attributes, columns={"completion": "response"}, test_split=None))


def _tiny_recipe(tmp_path, tiny_multi, **changes):
    raw = yaml.safe_load(Path("recipes/tiny/multi/aot_multi.yaml").read_text())
    raw["dataset_mixture"]["datasets"][0]["data_files"] = {
        "train": str(tiny_multi["unpaired_train"]), "test": str(tiny_multi["unpaired_test"])}
    raw |= {"model_name_or_path": str(tiny_multi["base_model"]), "output_dir": str(tmp_path / "run"),
            "tiny_multi_assets": str(Path(tiny_multi["unpaired_train"]).parents[2]),  # built already: a no-op
            "max_steps": 3, "logging_steps": 1, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
            "precompute_ref_log_probs": False, **changes}
    path = tmp_path / "aot_multi.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def tiny_multi(tmp_path_factory):
    from aot_handbook.tiny_multi import ensure_assets

    root = tmp_path_factory.mktemp("tiny_multi")
    return ensure_assets(root / "multi", tiny_root=root / "tiny")


def test_weight_for_an_unlisted_attribute_is_refused_before_loading(tmp_path, tiny_multi):
    from aot_handbook.run import RecipeError, train

    path = _tiny_recipe(tmp_path, tiny_multi, aot_attributes={"sum": 1.0, "style": 1.0})
    with pytest.raises(RecipeError, match="weight for attribute 'style', which the dataset_mixture does not list"):
        train(path)
    assert not (tmp_path / "run").exists()
    # a parse-time check, so `make validate-recipes` (which loads no data) refuses the recipe too
    from aot_handbook.validate import ValidationError, validate_recipe

    with pytest.raises(ValidationError, match="'style'"):
        validate_recipe(path)


def test_tiny_task_judges_both_attributes(tiny_multi):
    from aot_handbook.tiny import read_jsonl
    from aot_handbook.tiny_multi import judge_attributes

    assert judge_attributes("47+38=", "085") == {"sum": True, "format": True}
    assert judge_attributes("47+38=", "075.") == {"sum": False, "format": False}
    assert judge_attributes("47+38=", "085.<eos>") == {"sum": True, "format": False}
    rows = read_jsonl(tiny_multi["unpaired_train"])
    both = np.array([[r["sum_ok"], r["format_ok"]] for r in rows])
    assert abs(both.mean(0) - 0.5).max() < 0.05  # each attribute right half of the time
    assert abs(np.corrcoef(both.T)[0, 1]) < 0.05  # independently
    sft = read_jsonl(tiny_multi["sft_train"])
    period = np.mean([r["completion"].endswith(".") for r in sft])
    assert 0.55 < period < 0.65  # the planted format flaw


def test_aot_multi_trains_end_to_end_and_logs_each_attribute(tmp_path, tiny_multi):
    from aot_handbook.run import train

    out = train(_tiny_recipe(tmp_path, tiny_multi))
    logs = json.loads((out / "log_history.json").read_text())
    steps = [h for h in logs if "loss" in h]
    assert len(steps) == 3 and all(np.isfinite(h["loss"]) for h in steps)
    for name in ("sum", "format"):
        assert {f"rewards/{name}/{k}" for k in ("fsd_violation_share", "w1_violation", "loss", "empty")} <= set(
            steps[0])
    # the step's AOT term is the weighted sum of the logged per-attribute terms (both weights 1)
    for h in steps:
        assert h["aot/loss"] == pytest.approx(h["rewards/sum/loss"] + h["rewards/format/loss"], rel=1e-5)
    summary = json.loads((out / "metrics.json").read_text())["attributes"]
    assert summary["sum"]["batches"] == 3 and summary["sum"]["empty"] == 0
    assert summary["format"]["last_batch"]["fsd_violation_share"] >= 0

    # evaluated through the registered task (recipes/eval/tiny_multi.yaml): per-prompt attribute vectors
    # that agree with the program judge on the run's own greedy answers
    from aot_handbook.evaluation.common import RunInfo, read_samples
    from aot_handbook.evaluation.generation import load_model_and_tokenizer
    from aot_handbook.evaluation.pipeline import evaluate
    from aot_handbook.io import read_jsonl
    from aot_handbook.tiny import generate
    from aot_handbook.tiny_multi import judge_attributes

    eval_recipe = tmp_path / "tiny_multi_eval.yaml"
    repo = Path(__file__).resolve().parents[1]
    eval_recipe.write_text((repo / "recipes/eval/tiny_multi.yaml").read_text().replace("limit: null", "limit: 40"))
    result = evaluate(str(out), str(eval_recipe), results_dir=tmp_path / "results")
    saved = json.loads(result.read_text())
    samples = read_samples(result)
    assert len(samples) == 40 and saved["run"]["base_model"] == "tiny_multi"
    run = RunInfo.from_path(out)
    model, tokenizer = load_model_and_tokenizer(run.model, run.adapter, dtype="float32")
    rows = read_jsonl(tiny_multi["eval_prompts"])[:40]
    for row, sample, text in zip(rows, samples, generate(model, tokenizer, [r["prompt"] for r in rows])):
        judged = judge_attributes(row["prompt"], text)
        assert sample["tiny_multi:sum"] == 100.0 * judged["sum"] and sample["tiny_multi:format"] == 100.0 * judged[
            "format"]
    for a in ("sum", "format"):
        assert saved["scores"][f"tiny_multi:{a}"] == pytest.approx(np.mean([s[f"tiny_multi:{a}"] for s in samples]))


def test_multi_trainer_loss_is_the_multi_loss_of_its_batch(tmp_path, tiny_multi):
    """One batch through the trainer: its loss equals multi_aot_loss of the batch's log-ratios and labels."""
    from aot_handbook.recipe import parse_recipe
    from aot_handbook.run import build_trainer

    recipe = parse_recipe(_tiny_recipe(tmp_path, tiny_multi, aot_nll_weight=0.0))
    recipe, data, trainer = build_trainer(recipe)
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["attribute_labels"].clone()
    assert labels.shape == (16, 2) and labels.dtype == torch.bool
    for p in trainer.model.parameters():  # move the policy off the reference so the log-ratios are not all 0
        p.data += 0.01 * torch.randn_like(p)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    from aot_handbook.packing import completion_logps

    ids, mask = batch["input_ids"], batch["completion_mask"]
    target = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        pol = completion_logps(trainer.model, trainer._backbone(trainer.model), target,
                               input_ids=ids, attention_mask=batch["attention_mask"])[0].sum(-1)
        ref = completion_logps(trainer.ref_model, trainer._backbone(trainer.ref_model), target,
                               input_ids=ids, attention_mask=batch["attention_mask"])[0].sum(-1)
    expected, _ = multi_aot_loss(pol - ref, labels, [1.0, 1.0], beta=recipe.training.beta)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _recipe_two_steps(tmp_path, recipe, data_files, base_model):
    from aot_handbook.run import train

    raw = yaml.safe_load(Path(recipe).read_text())
    spec = dict(raw["dataset_mixture"]["datasets"][0])
    spec.pop("path")
    raw["dataset_mixture"] = {**raw["dataset_mixture"], "datasets": [{**spec, "data_files": data_files}]}
    copy = tmp_path / Path(recipe).name
    copy.write_text(yaml.safe_dump(raw))
    overrides = ["--model_name_or_path", str(base_model), "--dtype", "float32", "--bf16", "false", "--use_cpu",
                 "true", "--max_steps", "2", "--per_device_train_batch_size", "8", "--gradient_checkpointing",
                 "false", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1",
                 "--dataloader_num_workers", "0", "--report_to", "none", "--output_dir", str(tmp_path / "run")]
    out = train(str(copy), overrides)
    logs = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert len(logs) == 2 and all(np.isfinite(h["loss"]) for h in logs)
    return raw, logs, json.loads((out / "metrics.json").read_text())


def test_helpsteer_multi_recipe_trains_two_steps(tmp_path, tiny_multi):
    files = {"train": _jsonl(tmp_path / "hs_train.jsonl", _helpsteer(48, 3)),
             "validation": _jsonl(tmp_path / "hs_val.jsonl", _helpsteer(8, 4))}
    raw, logs, metrics = _recipe_two_steps(tmp_path, "recipes/unpaired/helpsteer-aot_multi.yaml", files,
                                           tiny_multi["base_model"])
    assert set(raw["aot_attributes"]) == set(HS) and set(metrics["attributes"]) == set(HS)
    assert all(f"rewards/{a}/empty" in logs[0] for a in HS)


def test_beavertails_multi_recipe_trains_two_steps(tmp_path, tiny_multi):
    raw = yaml.safe_load(Path("recipes/unpaired/pku-beavertails-aot_multi.yaml").read_text())
    flags = [a["score"].split(".", 1)[1] for a in raw["dataset_mixture"]["datasets"][0]["attributes"].values()]
    assert len(flags) == 14

    def rows(n, start):  # unsafe rows carry one or two flags; every flag on at least one unsafe row
        out = []
        for i in range(start, start + n):
            unsafe = i % 2 == 0
            cat = {f: unsafe and (i // 2 % 14 == j or (i // 2 + 5) % 14 == j) for j, f in enumerate(flags)}
            out.append({"prompt": f"{i}+1=", "response": f"{i + 1:03d}", "is_safe": not unsafe, "category": cat})
        return out

    files = {"330k_train": _jsonl(tmp_path / "bt_train.jsonl", rows(40, 0)),
             "330k_test": _jsonl(tmp_path / "bt_test.jsonl", rows(8, 40))}
    _, logs, metrics = _recipe_two_steps(tmp_path, "recipes/unpaired/pku-beavertails-aot_multi.yaml", files,
                                         tiny_multi["base_model"])
    assert len(metrics["attributes"]) == 14
    # rare flags: some attribute had no flagged answer in some batch, and it is counted
    assert sum(a["empty"] for a in metrics["attributes"].values()) > 0


if __name__ == "__main__":
    _worker(sys.argv[1])
