"""The prompt once through the key/value cache (benchmarks/prefix.py): the two-row log-probs and gradients."""

import pytest
import torch
from prefix import prefix_logps  # benchmarks/prefix.py (on the path: tests/benchmarks/conftest.py)
from trl.trainer.utils import add_fused_lm_head

from tests.helpers import PAIR_SHAPES, collated_pairs, pair_grads, small_model, two_row_logps

# A one-token prompt cannot leave a prefix: those batches run as two rows.
PREFIX_SHAPES = [(p + 1 if p == 1 else p, c, r) for p, c, r in PAIR_SHAPES]


def _model(model_type, attention):
    model = small_model(model_type, attention)
    add_fused_lm_head(model)
    return model


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"])
def test_prefix_logps_and_grads_equal_two_rows(model_type, attention):
    model = _model(model_type, attention)
    batch = collated_pairs(PREFIX_SHAPES)
    args = (model, model.base_model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    reference, prefix = two_row_logps(model, batch), prefix_logps(*args)
    for a, b in zip(prefix, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pair_grads(model, prefix_logps(*args)), pair_grads(model, two_row_logps(model, batch)),
                               rtol=1e-4, atol=1e-6)


def test_prefix_refuses_one_token_prompts():
    model = _model("llama", "sdpa")
    batch = collated_pairs()
    assert prefix_logps(model, model.base_model, batch["input_ids"], batch["attention_mask"],
                        batch["completion_mask"]) is None
