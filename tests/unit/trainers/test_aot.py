"""aot_handbook.trainers.aot: AOT trainers on the tiny model: real steps, the right direction, TRL parity, TRL's
contract and the logs."""

import inspect
import logging

import pytest
import torch
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

from aot_handbook.configs import AOTConfig, AOTUnpairedConfig
from aot_handbook.trainers import AOTTrainer, UnpairedAOTTrainer
from tests.helpers import TRAINER_ARGS, tiny_model, tiny_rows, train_steps


@pytest.mark.slow
def test_unpaired_aot_logs_per_side_statistics_and_no_kto_advice(tiny, tmp_path, caplog):
    """Positives and negatives are drawn independently: no pairwise accuracies or margins over them, but the
    quantile gaps of the two reward distributions; TRL's KTO weighting advice does not apply to AOT."""
    data = tiny_rows(tiny, "unpaired_train", 64)
    data = data.select([i for i, label in enumerate(data["label"]) if label][:24] +
                       [i for i, label in enumerate(data["label"]) if not label][:8])  # 3:1, imbalanced
    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    with caplog.at_level(logging.WARNING):
        kto = KTOTrainer(model=tiny_model(tiny), ref_model=tiny_model(tiny), processing_class=tok, train_dataset=data,
                         args=KTOConfig(output_dir=str(tmp_path / "kto"), per_device_train_batch_size=8,
                                        **TRAINER_ARGS))
    assert "desirable_weight" in caplog.text  # TRL gives the advice for KTO on these data ...
    assert kto is not None
    caplog.clear()
    args = AOTUnpairedConfig(output_dir=str(tmp_path / "aot"), per_device_train_batch_size=8, max_steps=2,
                             learning_rate=1e-3, **TRAINER_ARGS)
    with caplog.at_level(logging.WARNING):
        trainer = UnpairedAOTTrainer(model=tiny_model(tiny), ref_model=tiny_model(tiny), args=args, train_dataset=data,
                                     processing_class=tok)
    assert "desirable_weight" not in caplog.text  # ... but not for AOT
    trainer.train()
    logs = trainer.state.log_history[0]
    assert not {"rewards/accuracies", "rewards/margins"} & set(logs)
    assert {"rewards/chosen", "rewards/rejected", "rewards/quantile_gap_q25", "rewards/quantile_gap_q50",
            "rewards/quantile_gap_q75"} <= set(logs)


@pytest.mark.slow
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
                      beta=0.5, **kwargs, **TRAINER_ARGS)
    trainer, changed, losses = train_steps(tiny, trainer_cls, args, split)
    assert changed > 0, "no parameter moved"
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    if name.startswith("aot"):
        logs = trainer.state.log_history[0]
        assert {"aot/fsd_violation_share", "aot/w1_violation", "aot/min_quantile_gap"} <= set(logs)


@pytest.mark.slow
def test_sft_trains(tiny, tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3,
                     **TRAINER_ARGS)
    _, changed, losses = train_steps(tiny, SFTTrainer, args, "sft_train", ref=False)
    assert changed > 0 and len(losses) == 3


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["aot_paired", "aot_unpaired"])
def test_aot_moves_margins_the_right_way(tiny, tmp_path, variant):
    """On a fixed batch, AOT steps raise U above V: the sorted gap u_(i) - v_(i) grows."""
    data = tiny_rows(tiny, "paired_train", 16)
    args = AOTConfig(output_dir=str(tmp_path), loss_type=variant, per_device_train_batch_size=16, max_steps=8,
                     learning_rate=3e-3, beta=0.5, **TRAINER_ARGS)
    trainer = AOTTrainer(model=tiny_model(tiny), ref_model=tiny_model(tiny), args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "aot/loss" in h]
    assert logs[-1]["aot/loss"] < logs[0]["aot/loss"]
    assert logs[0]["aot/min_quantile_gap"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert logs[-1]["aot/min_quantile_gap"] > 0 and logs[-1]["aot/fsd_violation_share"] == 0.0
    assert logs[-1]["rewards/margins"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("ours,trl_loss", [("aot_paired", "aot"), ("aot_unpaired", "aot_unpaired")])
def test_step_losses_equal_trl(tiny, tmp_path, ours, trl_loss):
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3,
                  beta=0.5, **TRAINER_ARGS)
    _, _, trl_losses = train_steps(tiny, DPOTrainer, DPOConfig(loss_type=trl_loss, **common), "paired_train")
    _, _, our_losses = train_steps(tiny, AOTTrainer, AOTConfig(loss_type=ours, **common), "paired_train")
    assert our_losses == pytest.approx(trl_losses, rel=1e-6, abs=1e-7)


def test_unpaired_trainer_batches_are_unequal(tiny, tmp_path):
    args = AOTUnpairedConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2,
                             learning_rate=1e-3, aot_positive_share=0.25, **TRAINER_ARGS)
    trainer = UnpairedAOTTrainer(model=tiny_model(tiny), ref_model=tiny_model(tiny), args=args,
                                 train_dataset=tiny_rows(tiny, "unpaired_train", 64),
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


@pytest.mark.slow
@pytest.mark.parametrize("variant,tensor", [("aot_paired", "U = policy chosen-rejected margins"),
                                            ("aot_unpaired", "U = chosen log-ratios")])
def test_non_finite_log_probs_stop_training_naming_step_and_tensor(tiny, tmp_path, variant, tensor):
    model = tiny_model(tiny)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")  # the policy's log-probs become NaN
    args = AOTConfig(output_dir=str(tmp_path), loss_type=variant, per_device_train_batch_size=8, max_steps=2,
                     learning_rate=1e-3, **TRAINER_ARGS)
    trainer = AOTTrainer(model=model, ref_model=tiny_model(tiny), args=args,
                         train_dataset=tiny_rows(tiny, "paired_train", 16),
                         processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))
    with pytest.raises(FloatingPointError, match=f"non-finite {tensor} .* at global step 0"):
        trainer.train()
