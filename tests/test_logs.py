"""Logs that mean what they say: unpaired AOT's reward statistics, and TRL warnings that do not apply to AOT."""

import logging

from transformers import AutoTokenizer
from trl import KTOConfig, KTOTrainer

from aot_handbook.configs import AOTUnpairedConfig
from aot_handbook.trainers import UnpairedAOTTrainer
from tests.test_trainer import CPU, _data, _model


def test_unpaired_aot_logs_per_side_statistics_and_no_kto_advice(tiny, tmp_path, caplog):
    """Positives and negatives are drawn independently: no pairwise accuracies or margins over them, but the
    quantile gaps of the two reward distributions; TRL's KTO weighting advice does not apply to AOT."""
    data = _data(tiny, "unpaired_train", 64)
    data = data.select([i for i, label in enumerate(data["label"]) if label][:24] +
                       [i for i, label in enumerate(data["label"]) if not label][:8])  # 3:1, imbalanced
    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    with caplog.at_level(logging.WARNING):
        kto = KTOTrainer(model=_model(tiny), ref_model=_model(tiny), processing_class=tok, train_dataset=data,
                         args=KTOConfig(output_dir=str(tmp_path / "kto"), per_device_train_batch_size=8, **CPU))
    assert "desirable_weight" in caplog.text  # TRL gives the advice for KTO on these data ...
    assert kto is not None
    caplog.clear()
    args = AOTUnpairedConfig(output_dir=str(tmp_path / "aot"), per_device_train_batch_size=8, max_steps=2,
                             learning_rate=1e-3, **CPU)
    with caplog.at_level(logging.WARNING):
        trainer = UnpairedAOTTrainer(model=_model(tiny), ref_model=_model(tiny), args=args, train_dataset=data,
                                     processing_class=tok)
    assert "desirable_weight" not in caplog.text  # ... but not for AOT
    trainer.train()
    logs = trainer.state.log_history[0]
    assert not {"rewards/accuracies", "rewards/margins"} & set(logs)
    assert {"rewards/chosen", "rewards/rejected", "rewards/quantile_gap_q25", "rewards/quantile_gap_q50",
            "rewards/quantile_gap_q75"} <= set(logs)
