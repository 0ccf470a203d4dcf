"""aot_handbook.packing: one row per pair gives the two-row log-probs and gradients, for the models it accepts;
the AOT trainer's packed layout equals TRL's losses."""

import pytest
import torch
from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from aot_handbook.configs import AOTConfig
from aot_handbook.packing import MODEL_TYPES, pack_pairs, unsupported_reason
from aot_handbook.trainers import AOTTrainer
from tests.helpers import (
    PACKING_ARGS,
    PAIR_SHAPES,
    collated_pairs,
    pair_grads,
    small_model,
    token_logps,
    two_row_logps,
)


def _packed(model, batch, attention):
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    lp = token_logps(model(**packed.model_kwargs(attention)).logits, packed.labels)
    return (lp * packed.chosen_mask).sum(1), (lp * packed.rejected_mask).sum(1)


def _trainers(tiny, tmp_path, loss_type):
    data = load_dataset("json", data_files=str(tiny["paired_train"]), split="train").select(range(16))
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])

    def model(noise):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(tiny["base_model"])
        with torch.no_grad():  # a policy that differs from its reference, so the loss is not log 2
            for p in m.parameters():
                p.add_(noise * torch.randn_like(p))
        return m

    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, **PACKING_ARGS)
    out = {}
    for name, share in (("packed", True), ("two_rows", False)):
        out[name] = AOTTrainer(model=model(0.02), ref_model=model(0.0), train_dataset=data, processing_class=tokenizer,
                               args=AOTConfig(loss_type=loss_type, aot_share_prompt=share, **common))
    trl_type = {"aot_paired": "aot", "aot_unpaired": "aot_unpaired"}[loss_type]
    out["trl"] = DPOTrainer(model=model(0.02), ref_model=model(0.0), train_dataset=data, processing_class=tokenizer,
                            args=DPOConfig(loss_type=trl_type, **common))
    return out


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_packed_logps_and_grads_equal_two_rows(model_type, attention):
    model = small_model(model_type, attention)
    batch = collated_pairs()
    assert unsupported_reason(model) is None
    reference, packed = two_row_logps(model, batch), _packed(model, batch, attention)
    for a, b in zip(packed, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref_grads = pair_grads(model, two_row_logps(model, batch))
    packed_grads = pair_grads(model, _packed(model, batch, attention))
    torch.testing.assert_close(packed_grads, ref_grads, rtol=1e-4, atol=1e-6)


def test_packing_saves_the_repeated_prompt():
    batch = collated_pairs()
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    p, c, r = (torch.tensor(x) for x in zip(*PAIR_SHAPES))
    assert int(packed.visible.diagonal(dim1=1, dim2=2).sum()) == packed.input_ids.numel()  # no query sees nothing
    assert packed.input_ids.shape == (len(PAIR_SHAPES), int((p + c + 1 + r).max()))
    assert int(packed.chosen_mask.sum()) == int(c.sum()) and int(packed.rejected_mask.sum()) == int(r.sum())
    assert packed.input_ids.numel() < batch["input_ids"].numel()


def test_gpt2_is_refused_because_packing_would_change_its_logps():
    """The allow-list is not decoration: an architecture that does not honour position_ids with a 4-D
    mask gives different log-probs, so the trainer keeps TRL's layout for it."""
    model = small_model("gpt2", "eager")
    batch = collated_pairs()
    assert "gpt2" in unsupported_reason(model)
    assert (torch.cat(_packed(model, batch, "eager")) - torch.cat(two_row_logps(model, batch))).abs().max() > 1e-3


def test_batches_that_cannot_be_packed():
    batch = collated_pairs()
    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    other = ids.clone()
    other[len(PAIR_SHAPES) + 2, 0] += 1  # one pair's rejected row has another prompt
    assert pack_pairs(other, att, comp) is None
    # keep_end truncation cuts the two rows of a pair differently
    cut = collated_pairs(shapes=[(6, 2, 5), (4, 3, 3)], max_length=8, truncation_mode="keep_end")
    assert pack_pairs(cut["input_ids"], cut["attention_mask"], cut["completion_mask"]) is None
    empty = collated_pairs(shapes=[(0, 2, 3), (2, 2, 2)])
    assert pack_pairs(empty["input_ids"], empty["attention_mask"], empty["completion_mask"]) is None
    assert pack_pairs(ids[:-1], att[:-1], comp[:-1]) is None  # odd number of rows
    assert pack_pairs(ids.flip(1), att.flip(1), comp.flip(1)) is None  # left padding: not TRL's layout
    longest = int(att.sum(1).max())
    assert pack_pairs(ids, att, comp, max_span=longest - 1) is None  # a sliding window shorter than a row
    assert pack_pairs(ids, att, comp, max_span=longest) is not None
    kept = collated_pairs(shapes=[(6, 2, 5), (4, 3, 3)], max_length=8)  # keep_start truncates completions only
    assert pack_pairs(kept["input_ids"], kept["attention_mask"], kept["completion_mask"]) is not None


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["aot_paired", "aot_unpaired"])
def test_trainer_loss_and_gradients_equal_trl_and_two_rows(tiny, tmp_path, loss_type):
    trainers = _trainers(tiny, tmp_path, loss_type)
    batch = next(iter(trainers["trl"].get_train_dataloader()))
    rows = []
    handles = [m.register_forward_pre_hook(lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
               for m in (trainers["packed"].model, trainers["packed"].ref_model)]
    results = {}
    for name, t in trainers.items():
        t.model.train()
        t.model.zero_grad()
        loss = t.compute_loss(t.model, batch)
        loss.backward()
        results[name] = (loss.detach(), torch.cat([p.grad.flatten() for p in t.model.parameters()]))
    for handle in handles:
        handle.remove()
    assert rows == [16, 16], rows  # the policy pass, then the reference pass, each one row per pair
    assert abs(results["trl"][0].item() - 0.6931) > 1e-3  # policy != reference: a real comparison
    for name in ("packed", "two_rows"):
        torch.testing.assert_close(results[name][0], results["trl"][0], rtol=1e-6, atol=1e-6)
        # atol: float32 rounding of sums over other rows (max |grad| ~0.25; seen up to 3e-7 before and after)
        torch.testing.assert_close(results[name][1], results["trl"][1], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_nll_term_and_lora_reference_packed(tiny, tmp_path):
    """The NLL term reads the chosen tokens of the packed rows; a LoRA model's reference (adapters off)
    runs packed too, with gradient checkpointing (the paper's 7B set-up); both equal the two-row layout."""
    data = load_dataset("json", data_files=str(tiny["paired_train"]), split="train").select(range(16))
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    values = {}
    for share in (True, False):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["base_model"]),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        args = AOTConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, loss_type="aot_paired",
                         aot_nll_weight=1.0, aot_share_prompt=share,
                         **{**PACKING_ARGS, "gradient_checkpointing": True})
        trainer = AOTTrainer(model=model, train_dataset=data, processing_class=tokenizer, args=args)
        assert trainer.ref_model is None and (trainer._packing["off"] is None) == share
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
        ref = trainer._ref_logps(trainer.model, batch, trainer._pack(batch))
        values[share] = (loss.detach(), trainer._metrics["train"]["nll"][-1], grads, *ref)
    assert abs(values[True][0].item() - 0.6931) > 1e-3  # adapters on != adapters off
    for a, b in zip(values[True], values[False]):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-5)


def test_precomputed_reference_logps_are_trls_own(tiny, tmp_path, monkeypatch):
    """TRL precomputes the reference log-probs inside its __init__, through compute_ref_log_probs, into the
    cache every method of a sweep shares: there ours keeps TRL's two rows, so a DPO run reads exactly the
    numbers it would compute itself whichever run wrote them; the per-step reference pass is packed."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))  # no cache from other tests
    data = load_dataset("json", data_files=str(tiny["paired_train"]), split="train",
                        cache_dir=str(tmp_path / "hf")).select(range(24))
    ref = AutoModelForCausalLM.from_pretrained(tiny["base_model"])
    rows = []
    ref.register_forward_pre_hook(lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
    args = AOTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, loss_type="aot_paired",
                     precompute_ref_log_probs=True, precompute_ref_batch_size=8, **PACKING_ARGS)
    trainer = AOTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny["base_model"]), ref_model=ref, args=args,
                         train_dataset=data, processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))
    assert rows == [16, 16, 16]  # three batches of 8 pairs, two rows per pair
    batch = next(iter(DataLoader(trainer.train_dataset.remove_columns(["ref_chosen_logps", "ref_rejected_logps"]),
                                 batch_size=8, collate_fn=DataCollatorForPreference(pad_token_id=0))))
    expected = DPOTrainer.compute_ref_log_probs(trainer, ref, batch)  # TRL's own code
    assert torch.equal(torch.tensor(trainer.train_dataset["ref_chosen_logps"][:8]), expected[0])  # the first batch,
    assert torch.equal(torch.tensor(trainer.train_dataset["ref_rejected_logps"][:8]), expected[1])  # same shapes
    packed = trainer._ref_logps(ref, batch, trainer._pack(batch))  # the per-step pass: one row per pair
    assert rows[-1] == 8
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_unsupported_model_trains_with_trls_layout(tiny, tmp_path, caplog):
    model, ref = small_model("gpt2", "eager"), small_model("gpt2", "eager")
    data = load_dataset("json", data_files=str(tiny["paired_train"]), split="train").select(range(8))
    args = AOTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, loss_type="aot_paired",
                     **PACKING_ARGS)
    with caplog.at_level("WARNING", logger="aot_handbook.trainers"):
        trainer = AOTTrainer(model=model, ref_model=ref, train_dataset=data, args=args,
                             processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))
    assert "two rows per pair" in caplog.text and "gpt2" in caplog.text
    batch = next(iter(trainer.get_train_dataloader()))
    assert trainer._pack(batch) is None
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.slow
def test_reference_with_another_attention_than_the_policy(tiny, tmp_path):
    """Each model gets the mask form its attention takes: SDPA a boolean, eager an additive one."""
    data = load_dataset("json", data_files=str(tiny["paired_train"]), split="train").select(range(16))
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    losses = {}
    for share in (True, False):
        torch.manual_seed(0)
        policy = AutoModelForCausalLM.from_pretrained(tiny["base_model"], attn_implementation="sdpa")
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.02 * torch.randn_like(p))
        ref = AutoModelForCausalLM.from_pretrained(tiny["base_model"], attn_implementation="eager")
        args = AOTConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, loss_type="aot_unpaired",
                         aot_share_prompt=share, **PACKING_ARGS)
        trainer = AOTTrainer(model=policy, ref_model=ref, train_dataset=data, processing_class=tokenizer, args=args)
        batch = next(iter(trainer.get_train_dataloader()))
        assert (trainer._pack(batch) is not None) == share
        losses[share] = trainer.compute_loss(trainer.model, batch).item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("layout", ["two_rows", "packed"])
def test_completion_logps_equal_trls_head_and_skip_unscored_positions(layout):
    """completion_logps gives TRL's fused-head log-probs and gradients while projecting only the scored
    positions: the forward's matmul FLOPs drop by exactly the head's share of the unscored ones."""
    from torch.utils.flop_counter import FlopCounterMode
    from trl.trainer.utils import add_fused_lm_head

    from aot_handbook.packing import completion_logps

    model = small_model("llama", "sdpa")
    add_fused_lm_head(model)
    batch = collated_pairs()
    if layout == "packed":
        packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        inputs, labels = packed.model_kwargs("sdpa"), packed.labels
    else:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    flops = {}
    with FlopCounterMode(display=False) as counter:
        full = model(**inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs  # TRL's own path
    flops["full"] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        ours, _ = completion_logps(model, model.base_model, labels, **inputs)
    flops["ours"] = counter.get_total_flops()
    torch.testing.assert_close(ours, full, rtol=1e-6, atol=1e-6)
    scored = int((labels[:, 1:] != -100).sum())
    unscored = labels[:, 1:].numel() - scored
    assert 0 < scored and 0 < unscored
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    assert flops["full"] - flops["ours"] == 2 * hidden * vocab * unscored

    def grads(logps):
        model.zero_grad()
        (logps * torch.linspace(-1, 1, logps.numel()).view_as(logps)).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    torch.testing.assert_close(grads(completion_logps(model, model.base_model, labels, **inputs)[0]),
                               grads(model(**inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs),
                               rtol=1e-5, atol=1e-7)


def test_unpaired_trainer_logps_equal_trls_kto_head(tiny, tmp_path):
    """UnpairedAOTTrainer's policy and reference passes (head on completion positions only) give the loss
    computed from TRL's own KTO log-probs (its head over every position)."""
    from trl import KTOTrainer

    from aot_handbook.configs import AOTUnpairedConfig
    from aot_handbook.loss import aot_loss
    from aot_handbook.trainers import UnpairedAOTTrainer

    data = load_dataset("json", data_files=str(tiny["unpaired_train"]), split="train").select(range(32))

    def model(noise):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(tiny["base_model"])
        with torch.no_grad():
            for p in m.parameters():
                p.add_(noise * torch.randn_like(p))
        return m

    args = AOTUnpairedConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, **PACKING_ARGS)
    trainer = UnpairedAOTTrainer(model=model(0.02), ref_model=model(0.0), args=args, train_dataset=data,
                                 processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    logps = KTOTrainer.compute_ref_log_probs(trainer, trainer.model, batch)[0]  # TRL's code, under no_grad
    ref_logps = KTOTrainer.compute_ref_log_probs(trainer, trainer.ref_model, batch)[0]
    positive = torch.as_tensor(batch["label"], dtype=torch.bool)
    ratios = logps - ref_logps
    expected = aot_loss(ratios[positive], ratios[~positive], beta=args.beta, penalty=args.aot_penalty,
                        sort=args.aot_sort, **args.sort_options)
    assert abs(expected.item() - 0.6931) > 1e-3
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=1e-6)
