"""AOT trainers on the tiny model: real steps, the right direction, TRL parity and TRL's contract."""

import inspect

import pytest
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

from aot_handbook.configs import AOTConfig, AOTUnpairedConfig
from aot_handbook.trainers import AOTTrainer, BalancedLabelSampler, UnpairedAOTTrainer

CPU = dict(bf16=False, use_cpu=True, report_to=[], save_strategy="no", gradient_checkpointing=False,
           logging_steps=1, seed=0, dataloader_num_workers=0)


def _data(tiny, split, n):
    return load_dataset("json", data_files=str(tiny[split]), split="train").select(range(n))


def _model(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny["base_model"])


def _train(tiny, trainer_cls, args, split, n=32, ref=True):
    torch.manual_seed(0)
    model = _model(tiny)
    before = {k: v.clone() for k, v in model.named_parameters()}
    kwargs = {"ref_model": _model(tiny)} if ref else {}
    trainer = trainer_cls(model=model, args=args, train_dataset=_data(tiny, split, n),
                          processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]), **kwargs)
    trainer.train()
    changed = sum(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, changed, losses


@pytest.mark.parametrize(
    "name,trainer_cls,config_cls,kwargs,split",
    [
        ("aot_paired", AOTTrainer, AOTConfig, {"loss_type": "aot_paired"}, "paired_train"),
        ("aot_unpaired_on_pairs", AOTTrainer, AOTConfig, {"loss_type": "aot_unpaired"}, "paired_train"),
        ("aot_unpaired", UnpairedAOTTrainer, AOTUnpairedConfig, {"aot_positive_share": 0.25}, "unpaired_train"),
        ("aot_hinge_soft", AOTTrainer, AOTConfig, {"aot_penalty": "hinge", "aot_sort": "soft"}, "paired_train"),
        ("dpo", DPOTrainer, DPOConfig, {"loss_type": "sigmoid"}, "paired_train"),
        ("ipo", DPOTrainer, DPOConfig, {"loss_type": "ipo"}, "paired_train"),
        ("kto", KTOTrainer, KTOConfig, {}, "unpaired_train"),
    ],
)
def test_every_method_trains(tiny, tmp_path, name, trainer_cls, config_cls, kwargs, split):
    args = config_cls(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3,
                      beta=0.5, **kwargs, **CPU)
    trainer, changed, losses = _train(tiny, trainer_cls, args, split)
    assert changed > 0, "no parameter moved"
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    if name.startswith("aot"):
        logs = trainer.state.log_history[0]
        assert {"aot/fsd_violation_share", "aot/w1_violation", "aot/min_quantile_gap"} <= set(logs)


def test_sft_trains(tiny, tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3, **CPU)
    _, changed, losses = _train(tiny, SFTTrainer, args, "sft_train", ref=False)
    assert changed > 0 and len(losses) == 3


@pytest.mark.parametrize("variant", ["aot_paired", "aot_unpaired"])
def test_aot_moves_margins_the_right_way(tiny, tmp_path, variant):
    """On a fixed batch, AOT steps raise U above V: the sorted gap u_(i) - v_(i) grows."""
    data = _data(tiny, "paired_train", 16)
    args = AOTConfig(output_dir=str(tmp_path), loss_type=variant, per_device_train_batch_size=16, max_steps=8,
                     learning_rate=3e-3, beta=0.5, **CPU)
    trainer = AOTTrainer(model=_model(tiny), ref_model=_model(tiny), args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "aot/loss" in h]
    assert logs[-1]["aot/loss"] < logs[0]["aot/loss"]
    assert logs[0]["aot/min_quantile_gap"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert logs[-1]["aot/min_quantile_gap"] > 0 and logs[-1]["aot/fsd_violation_share"] == 0.0
    assert logs[-1]["rewards/margins"] > 0


@pytest.mark.parametrize("ours,trl_loss", [("aot_paired", "aot"), ("aot_unpaired", "aot_unpaired")])
def test_step_losses_equal_trl(tiny, tmp_path, ours, trl_loss):
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3,
                  beta=0.5, **CPU)
    _, _, trl_losses = _train(tiny, DPOTrainer, DPOConfig(loss_type=trl_loss, **common), "paired_train")
    _, _, our_losses = _train(tiny, AOTTrainer, AOTConfig(loss_type=ours, **common), "paired_train")
    assert our_losses == pytest.approx(trl_losses, rel=1e-6, abs=1e-7)


def test_unpaired_batches_hold_both_labels_in_any_share():
    labels = [True] * 30 + [False] * 70
    sampler = BalancedLabelSampler(labels, batch_size=8, share=0.25, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 13 * 8
    for start in range(0, len(order), 8):
        batch = [labels[i] for i in order[start:start + 8]]
        assert batch.count(True) == 2 and batch.count(False) == 6  # n != m, exactly as asked
    assert order == list(BalancedLabelSampler(labels, 8, 0.25, seed=3))  # deterministic per seed
    sampler.set_epoch(1)
    assert list(sampler) != order  # reshuffled each epoch
    # Each class is drawn from its own pool without replacement until the pool is used up:
    # 26 positive draws hit 26 distinct rows; 78 negative draws cover all 70 negatives.
    assert len({i for i in order if labels[i]}) == 26
    assert len({i for i in order if not labels[i]}) == 70


@pytest.mark.parametrize("labels,batch,message", [([True] * 5, 4, "needs both labels"),
                                                  ([True, False] * 3, 1, "batch size >= 2")])
def test_sampler_refuses_impossible_batches(labels, batch, message):
    with pytest.raises(ValueError, match=message):
        BalancedLabelSampler(labels, batch)


def test_unpaired_trainer_batches_are_unequal(tiny, tmp_path):
    args = AOTUnpairedConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2,
                             learning_rate=1e-3, aot_positive_share=0.25, **CPU)
    trainer = UnpairedAOTTrainer(model=_model(tiny), ref_model=_model(tiny), args=args,
                                 train_dataset=_data(tiny, "unpaired_train", 64),
                                 processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))
    batch = next(iter(trainer.get_train_dataloader()))
    assert int(batch["label"].sum()) == 2 and len(batch["label"]) == 8


def test_trl_contract():
    """The TRL internals trainers/ relies on. If this fails, TRL moved: re-check trainers/, then re-pin."""
    import trl

    assert trl.__version__.startswith("1.16."), f"trainers/ was written against trl 1.16, found {trl.__version__}"
    for cls in (DPOTrainer, KTOTrainer):
        assert list(inspect.signature(cls._compute_loss).parameters) == ["self", "model", "inputs", "return_outputs"]
        assert list(inspect.signature(cls.compute_ref_log_probs).parameters) == ["self", "model", "inputs"]
        source = inspect.getsource(cls._compute_loss)
        assert "fused_lm_head=True" in source and ".log_probs" in source
    assert "self._compute_loss(" in inspect.getsource(DPOTrainer.compute_loss)
    assert 'calculate_kl = args.loss_type not in ["apo_zero_unpaired"]' in inspect.getsource(KTOTrainer.__init__)
    assert "_get_train_sampler" in KTOTrainer.__dict__ or hasattr(KTOTrainer, "_get_train_sampler")
    assert list(inspect.signature(KTOTrainer._get_train_sampler).parameters)[:2] == ["self", "train_dataset"]
    import trl.data_utils

    assert callable(trl.data_utils._tokenize) and callable(trl.data_utils.common_prefix_length)  # heldout.py uses them
    # SharedRefCache hands _prepare_dataset a stand-in holding only these settings, so that the rest
    # of the config stays out of the dataset fingerprint (and so out of the reference log-prob cache key).
    import re

    from aot_handbook.trainers.reference import _RefCacheArgs

    for cls in (DPOTrainer, KTOTrainer):
        read = set(re.findall(r"\bargs\.([a-z_]+)", inspect.getsource(cls._prepare_dataset)))
        assert read <= set(vars(_RefCacheArgs(DPOConfig(output_dir="x", bf16=False, use_cpu=True)))), read
    assert "_precompute_model_hash" in inspect.getsource(DPOTrainer._precompute_ref_logps)
    # AOTTrainer._ref_logps (one row per pair) mirrors TRL's reference contexts.
    ref_source = inspect.getsource(DPOTrainer.compute_ref_log_probs)
    for piece in ("use_adapter(", "disable_gradient_checkpointing(", "self.accelerator.autocast()", "torch.no_grad()"):
        assert piece in ref_source, piece


def test_heldout_logps_equal_trl_reference_logps(tiny, tmp_path):
    """The summary's log-probs (heldout.py) are computed on exactly the tokens TRL trains on."""
    from aot_handbook.heldout import completion_logps

    data = _data(tiny, "paired_test", 12)
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    args = DPOConfig(output_dir=str(tmp_path), per_device_eval_batch_size=12, **CPU)
    trainer = DPOTrainer(model=_model(tiny), ref_model=_model(tiny), args=args, train_dataset=data,
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))  # unshuffled
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    torch.testing.assert_close(completion_logps(trainer.ref_model, tokenizer, data["prompt"], data["chosen"]).float(),
                               trl_chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(completion_logps(trainer.ref_model, tokenizer, data["prompt"],
                                                data["rejected"]).float(),
                               trl_rejected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,tensor", [("aot_paired", "U = policy chosen-rejected margins"),
                                            ("aot_unpaired", "U = chosen log-ratios")])
def test_non_finite_log_probs_stop_training_naming_step_and_tensor(tiny, tmp_path, variant, tensor):
    model = _model(tiny)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")  # the policy's log-probs become NaN
    args = AOTConfig(output_dir=str(tmp_path), loss_type=variant, per_device_train_batch_size=8, max_steps=2,
                     learning_rate=1e-3, **CPU)
    trainer = AOTTrainer(model=model, ref_model=_model(tiny), args=args, train_dataset=_data(tiny, "paired_train", 16),
                         processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))
    with pytest.raises(FloatingPointError, match=f"non-finite {tensor} .* at global step 0"):
        trainer.train()


def test_baselines_nll_weight_is_trls_sft_term():
    """dpo/ipo's nll_weight is TRL's own "sft" loss term, added once (configs are rebuilt by replace())."""
    import dataclasses

    from aot_handbook.configs import HandbookDPOConfig

    args = HandbookDPOConfig(output_dir="unused", loss_type="ipo", nll_weight=0.5, **CPU)
    assert args.loss_type == ["ipo", "sft"] and args.loss_weights == [1.0, 0.5]
    again = dataclasses.replace(args)
    assert again.loss_type == ["ipo", "sft"] and again.loss_weights == [1.0, 0.5]
    assert HandbookDPOConfig(output_dir="unused", **CPU).loss_type == ["sigmoid"]
    with pytest.raises(ValueError, match="nll_weight must be >= 0"):
        HandbookDPOConfig(output_dir="unused", nll_weight=-1.0, **CPU)


def test_kto_nll_term_is_the_positives_mean_token_nll(tiny, tmp_path):
    """KTO + nll_weight: loss = TRL's KTO loss + w * mean NLL per token of the positive completions."""
    from aot_handbook.configs import HandbookKTOConfig
    from aot_handbook.heldout import _tokenize_like_trl, completion_logps
    from aot_handbook.trainers import HandbookKTOTrainer

    n = 16  # one batch is the whole data set, so the first step's batch is known whatever the order
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=n, max_steps=2, learning_rate=1e-3,
                  beta=0.5, **CPU)
    _, _, plain = _train(tiny, HandbookKTOTrainer, HandbookKTOConfig(**common), "unpaired_train", n=n)
    trainer, _, with_nll = _train(tiny, HandbookKTOTrainer, HandbookKTOConfig(nll_weight=0.5, **common),
                                  "unpaired_train", n=n)
    logged = [h["nll"] for h in trainer.state.log_history if "nll" in h]

    data = _data(tiny, "unpaired_train", n).filter(lambda r: r["label"])
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    tokens = sum(len(ids) - k for ids, k in (_tokenize_like_trl(tokenizer, p, c)
                                             for p, c in zip(data["prompt"], data["completion"])))
    expected = -float(completion_logps(_model(tiny), tokenizer, data["prompt"], data["completion"]).sum()) / tokens
    assert logged[0] == pytest.approx(expected, rel=1e-5)
    assert with_nll[0] == pytest.approx(plain[0] + 0.5 * expected, rel=1e-5)
    assert with_nll[1] != pytest.approx(plain[1], rel=1e-4)  # the term moved the weights


def _kto_first_losses(tiny, tmp_path, seed):
    from aot_handbook.configs import HandbookKTOConfig
    from aot_handbook.trainers import HandbookKTOTrainer

    args = HandbookKTOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3,
                             beta=0.5, **{**CPU, "seed": seed})
    return _train(tiny, HandbookKTOTrainer, args, "unpaired_train")[2]


def test_kto_seed_changes_the_data_order(tiny, tmp_path):
    """TRL's KTO reads rows in file order; HandbookKTOTrainer shuffles them with the seed first, so a
    seed study of KTO is not three copies of one run (it was, before: identical losses)."""
    assert _kto_first_losses(tiny, tmp_path, 0) == _kto_first_losses(tiny, tmp_path, 0)
    # step 1 is 0.5 whatever the batch (policy == reference); step 2 follows a different first batch
    assert _kto_first_losses(tiny, tmp_path, 0)[1] != pytest.approx(_kto_first_losses(tiny, tmp_path, 1)[1], rel=1e-6)
