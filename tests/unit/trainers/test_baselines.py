"""aot_handbook.trainers.baselines: the NLL term of DPO/IPO (TRL's own) and of KTO; KTO's seed."""

import pytest
from transformers import AutoTokenizer

from tests.helpers import TRAINER_ARGS, tiny_model, tiny_rows, train_steps


def _kto_first_losses(tiny, tmp_path, seed):
    from aot_handbook.configs import HandbookKTOConfig
    from aot_handbook.trainers import HandbookKTOTrainer

    args = HandbookKTOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3,
                             beta=0.5, **{**TRAINER_ARGS, "seed": seed})
    return train_steps(tiny, HandbookKTOTrainer, args, "unpaired_train")[2]


def test_baselines_nll_weight_is_trls_sft_term():
    """dpo/ipo's nll_weight is TRL's own "sft" loss term, added once (configs are rebuilt by replace())."""
    import dataclasses

    from aot_handbook.configs import HandbookDPOConfig

    args = HandbookDPOConfig(output_dir="unused", loss_type="ipo", nll_weight=0.5, **TRAINER_ARGS)
    assert args.loss_type == ["ipo", "sft"] and args.loss_weights == [1.0, 0.5]
    again = dataclasses.replace(args)
    assert again.loss_type == ["ipo", "sft"] and again.loss_weights == [1.0, 0.5]
    assert HandbookDPOConfig(output_dir="unused", **TRAINER_ARGS).loss_type == ["sigmoid"]
    with pytest.raises(ValueError, match="nll_weight must be >= 0"):
        HandbookDPOConfig(output_dir="unused", nll_weight=-1.0, **TRAINER_ARGS)


@pytest.mark.slow
def test_kto_nll_term_is_the_positives_mean_token_nll(tiny, tmp_path):
    """KTO + nll_weight: loss = TRL's KTO loss + w * mean NLL per token of the positive completions."""
    from aot_handbook.configs import HandbookKTOConfig
    from aot_handbook.heldout import _tokenize_like_trl, completion_logps
    from aot_handbook.trainers import HandbookKTOTrainer

    n = 16  # one batch is the whole data set, so the first step's batch is known whatever the order
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=n, max_steps=2, learning_rate=1e-3,
                  beta=0.5, **TRAINER_ARGS)
    _, _, plain = train_steps(tiny, HandbookKTOTrainer, HandbookKTOConfig(**common), "unpaired_train", n=n)
    trainer, _, with_nll = train_steps(tiny, HandbookKTOTrainer, HandbookKTOConfig(nll_weight=0.5, **common),
                                  "unpaired_train", n=n)
    logged = [h["nll"] for h in trainer.state.log_history if "nll" in h]

    data = tiny_rows(tiny, "unpaired_train", n).filter(lambda r: r["label"])
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    tokens = sum(len(ids) - k for ids, k in (_tokenize_like_trl(tokenizer, p, c)
                                             for p, c in zip(data["prompt"], data["completion"])))
    expected = -float(completion_logps(tiny_model(tiny), tokenizer, data["prompt"], data["completion"]).sum()) / tokens
    assert logged[0] == pytest.approx(expected, rel=1e-5)
    assert with_nll[0] == pytest.approx(plain[0] + 0.5 * expected, rel=1e-5)
    assert with_nll[1] != pytest.approx(plain[1], rel=1e-4)  # the term moved the weights


@pytest.mark.slow
def test_kto_seed_changes_the_data_order(tiny, tmp_path):
    """TRL's KTO reads rows in file order; HandbookKTOTrainer shuffles them with the seed first, so a
    seed study of KTO is not three copies of one run (it was, before: identical losses)."""
    assert _kto_first_losses(tiny, tmp_path, 0) == _kto_first_losses(tiny, tmp_path, 0)
    # step 1 is 0.5 whatever the batch (policy == reference); step 2 follows a different first batch
    assert _kto_first_losses(tiny, tmp_path, 0)[1] != pytest.approx(_kto_first_losses(tiny, tmp_path, 1)[1], rel=1e-6)
