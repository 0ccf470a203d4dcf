"""aot_handbook.heldout: held-out sequence log-probs equal TRL's own."""

import torch
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer

from tests.helpers import TRAINER_ARGS, tiny_model, tiny_rows


def test_heldout_logps_equal_trl_reference_logps(tiny, tmp_path):
    """The summary's log-probs (heldout.py) are computed on exactly the tokens TRL trains on."""
    from aot_handbook.heldout import completion_logps

    data = tiny_rows(tiny, "paired_test", 12)
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    args = DPOConfig(output_dir=str(tmp_path), per_device_eval_batch_size=12, **TRAINER_ARGS)
    trainer = DPOTrainer(model=tiny_model(tiny), ref_model=tiny_model(tiny), args=args, train_dataset=data,
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))  # unshuffled
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    torch.testing.assert_close(completion_logps(trainer.ref_model, tokenizer, data["prompt"], data["chosen"]).float(),
                               trl_chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(completion_logps(trainer.ref_model, tokenizer, data["prompt"],
                                                data["rejected"]).float(),
                               trl_rejected, rtol=1e-5, atol=1e-5)
