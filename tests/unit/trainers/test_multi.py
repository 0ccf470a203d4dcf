"""aot_handbook.trainers.multi: the multi-attribute trainer end to end, and its loss is the multi loss of its
batch."""

import json

import numpy as np
import pytest
import torch

from aot_handbook.multi_loss import multi_aot_loss
from tests.helpers import REPO, multi_recipe

pytestmark = pytest.mark.slow  # every test here: make test-fast leaves them out


def test_aot_multi_trains_end_to_end_and_logs_each_attribute(tmp_path, tiny_multi):
    from aot_handbook.plan import train

    out = train(multi_recipe(tmp_path, tiny_multi))
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

    # evaluated through the registered task (recipes/eval/tiny_multi.eval.yaml): per-prompt attribute vectors
    # that agree with the program judge on the run's own greedy answers
    from aot_handbook.evaluation.pipeline import evaluate
    from aot_handbook.evaluation.results import read_samples
    from aot_handbook.generation import load_model_and_tokenizer
    from aot_handbook.io import read_jsonl
    from aot_handbook.run_folder import RunInfo
    from aot_handbook.tasks.tiny.arithmetic import generate
    from aot_handbook.tasks.tiny.multi import judge_attributes

    eval_recipe = tmp_path / "tiny_multi.eval.yaml"
    source = (REPO / "recipes/eval/tiny_multi.eval.yaml").read_text()
    eval_recipe.write_text(source.replace("limit: null", "limit: 40"))
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
    from aot_handbook.training import build_trainer

    recipe = parse_recipe(multi_recipe(tmp_path, tiny_multi, aot_nll_weight=0.0))
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


# aot_multi (trainers.multi.MultiAttributeAOTTrainer) sorts the optimizer batch under gradient accumulation: one
# step of 16 rows as 4 micro-batches of 4, through the trainer's own hooks (get_batch_samples, training_step),
# has the gradient of the 16-row batch; with aot_sort_scope micro_batch it does not.


def _trainer(tmp_path, tiny_multi, **changes):
    from aot_handbook.recipe import parse_recipe
    from aot_handbook.training import build_trainer

    tmp_path.mkdir()
    _, _, trainer = build_trainer(parse_recipe(multi_recipe(tmp_path, tiny_multi, aot_nll_weight=0.5, **changes)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the policy off its reference, the same way in every trainer
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return trainer


def _step(trainer, micro_batches):
    """One optimizer step's gradient, as the Trainer loop takes it: the window, then each micro-batch."""
    trainer.model.zero_grad()
    window, _ = trainer.get_batch_samples(iter(micro_batches), len(micro_batches), trainer.args.device)
    trainer.current_gradient_accumulation_steps = len(window)
    for inputs in window:
        trainer.training_step(trainer.model, inputs)
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def _rel(a, b):
    num = sum(float((a[n] - b[n]).double().square().sum()) for n in b)
    return (num / sum(float(b[n].double().square().sum()) for n in b)) ** 0.5


def test_aot_multi_sorts_the_optimizer_batch(tmp_path, tiny_multi):
    whole = _trainer(tmp_path / "whole", tiny_multi, per_device_train_batch_size=16)
    batch = next(iter(whole.get_train_dataloader()))
    assert batch["attribute_labels"].shape == (16, 2)
    ref = _step(whole, [batch])
    metrics = {k: v[-1] for k, v in whole._metrics["train"].items()}

    split = _trainer(tmp_path / "split", tiny_multi, per_device_train_batch_size=4, gradient_accumulation_steps=4)
    micro = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()} for i in range(4)]
    got = _step(split, micro)
    assert _rel(got, ref) <= 1e-6
    logged = {k: v[-1] for k, v in split._metrics["train"].items()}
    for key in ("aot/loss", "nll", "rewards/sum/loss", "rewards/format/fsd_violation_share"):
        assert logged[key] == pytest.approx(metrics[key], rel=1e-5), key  # the logs describe the 16 rows

    split.args.aot_sort_scope = "micro_batch"
    assert _rel(_step(split, micro), ref) > 1e-2
