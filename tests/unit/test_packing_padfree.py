"""Padding-free packing (packing.py): several pairs (or unpaired rows) per row, the log-probs and gradients of
TRL's rows; the trainers' layouts, fallbacks, logs and the reference cache key.

The one-row-per-pair layout is checked in tests/unit/test_packing.py (on every allowed architecture); these tests
pack several segments into each row, so a segment sits at an offset, beside others it must not see.
"""

import random

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig

from aot_handbook import packing
from aot_handbook.configs import AOTConfig, AOTUnpairedConfig
from aot_handbook.packing import (
    SEGMENTS,
    Layout,
    PackedRows,
    attention_tokens,
    layout_for,
    model_attention,
    pack_pairs,
    pack_sequences,
    plan_rows,
    unsupported_reason,
    use_segment_attention,
)
from aot_handbook.trainers import AOTTrainer, UnpairedAOTTrainer
from tests.helpers import PACKING_ARGS, collated_pairs, small_model, token_logps, uneven_pairs, unpaired_rows

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma")
# (prompt, chosen, rejected) lengths: 8 pairs of uneven lengths, one-token prompt and answers included
SHAPES = [(5, 3, 4), (1, 2, 6), (7, 1, 1), (3, 5, 2), (2, 4, 4), (9, 6, 3), (4, 1, 7), (6, 2, 2)]
FEW_ROWS = Layout(max_tokens=40)  # no cost model: the fewest rows of at most 40 tokens (3 here)
SEGMENT_ROW = Layout(max_tokens=40, segments=True)  # where plan_rows packs (3 rows): one row of segments


def _batch8(**collator):
    return collated_pairs(SHAPES, **collator)


def _pack(batch, layout, sequences=False):
    pack = pack_sequences if sequences else pack_pairs
    return pack(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], layout=layout)


def _two_row_tokens(model, batch):
    """Per-token completion log-probs of TRL's rows (plain forward, log_softmax), 0 elsewhere."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return token_logps(logits, batch["input_ids"]) * batch["completion_mask"][:, 1:]


def _packed_tokens(model, packed: PackedRows, attention):
    """The same from packed rows, mapped back into TRL's rows by ``unpack``."""
    return packed.unpack(token_logps(model(**packed.model_kwargs(attention)).logits, packed.labels))


def _grads(model, per_token):
    model.zero_grad()
    weights = torch.linspace(-1, 1, per_token.size(0))[:, None]  # every row its own weight
    (per_token.sum(1) * weights.squeeze(1)).sum().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("kind", ["pairs", "answers", "sequences"])
def test_padfree_logps_and_grads_equal_trls_rows(model_type, attention, kind):
    """Every answer's per-token log-probs (and so its sum) within 1e-5 of TRL's rows, float32, and the
    gradients equal. ``pairs``: the shared-prompt tree, several pairs a row; ``answers``: each answer its own
    sequence in one row (the flash-attention layout, here through the mask built from the same segments);
    ``sequences``: the unpaired trainer's plain sequence packing."""
    model = small_model(model_type, attention)
    batch = _batch8()
    layout = {"pairs": FEW_ROWS, "answers": Layout(varlen=True, share_prompt=False), "sequences": FEW_ROWS}[kind]
    packed = _pack(batch, layout, sequences=kind == "sequences")
    stats = packed.stats()
    assert stats["rows"] < stats["segments"]  # several segments in a row: offsets and neighbours are exercised
    assert stats["positions"] < batch["input_ids"].numel()
    expected, got = _two_row_tokens(model, batch), _packed_tokens(model, packed, attention)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.sum(1), expected.sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grads(model, _packed_tokens(model, packed, attention)),
                               _grads(model, _two_row_tokens(model, batch)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("kind", ["pairs", "sequences"])
def test_segments_logps_and_grads_equal_trls_rows(model_type, kind):
    """SDPA segment by segment (``segment_sdpa``) over one row holding the whole batch, no padding: every
    answer's per-token log-probs within 1e-5 of TRL's rows under plain SDPA (float32), gradients equal.
    ``pairs``: the shared-prompt tree (each segment its own mask); ``sequences``: plain packing (causal)."""
    model = small_model(model_type, "sdpa")
    batch = _batch8()
    expected = _two_row_tokens(model, batch)  # before the switch: transformers' SDPA
    expected_grads = _grads(model, _two_row_tokens(model, batch))
    use_segment_attention([model])
    assert model_attention(model) == SEGMENTS
    packed = _pack(batch, SEGMENT_ROW, sequences=kind == "sequences")
    stats = packed.stats()
    assert packed.per_segment and stats["rows"] == 1 and stats["padding"] == 0
    assert stats["segments"] == {"pairs": 8, "sequences": 16}[kind]
    reads = []
    parts = packing._segment_parts
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packing, "_segment_parts", lambda d: reads.append(d) or parts(d))
        got = _packed_tokens(model, packed, SEGMENTS)
    assert len(reads) == 1  # the row's segments read once per forward, not once per layer
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grads(model, _packed_tokens(model, packed, SEGMENTS)), expected_grads,
                               rtol=1e-4, atol=1e-6)


def test_segment_attention_is_sdpa_for_every_other_call(tmp_path):
    """The attention the trainers set on SDPA models changes nothing but rows of segments: a padded batch and
    a dense mask give SDPA's logits bit for bit; a row of segments reaches no other attention; equal lengths keep
    their rows; eager models are left alone; the saved config does not name it."""
    model, batch = small_model("mistral", "sdpa"), _batch8()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    before = model(**inputs).logits
    dense = _packed_tokens(model, _pack(batch, FEW_ROWS), "sdpa")
    use_segment_attention([model, None])
    assert torch.equal(model(**inputs).logits, before)
    assert torch.equal(_packed_tokens(model, _pack(batch, FEW_ROWS), SEGMENTS), dense)
    row = _pack(batch, SEGMENT_ROW)
    for attention in ("sdpa", "eager", "flex_attention", "flash_attention_2"):
        with pytest.raises(ValueError, match=SEGMENTS):
            row.model_kwargs(attention)
    equal = collated_pairs([(4, 3, 3)] * 6)  # nothing to save: one pair per row, a dense mask, as before
    rows = _pack(equal, Layout(segments=True, attention_tokens=attention_tokens(model.config)))
    assert not rows.per_segment and rows.stats()["rows"] == 6 and rows.stats()["padding"] == 0
    eager = small_model("llama", "eager")
    use_segment_attention([eager])
    assert model_attention(eager) == "eager"
    model.save_pretrained(tmp_path)
    assert SEGMENTS not in (tmp_path / "config.json").read_text()


def test_rows_hold_what_they_say():
    batch = _batch8()
    p, c, r = (torch.tensor(x) for x in zip(*SHAPES))
    packed = _pack(batch, FEW_ROWS)
    stats = packed.stats()
    assert stats["tokens"] == int((p + c + 1 + r).sum()) and stats["rows"] == 3 and stats["segments"] == len(SHAPES)
    assert packed.input_ids.size(1) <= 40
    visible = packed.visible
    assert bool(visible.diagonal(dim1=1, dim2=2).all())  # no query sees nothing (padding sees padding)
    seg = packed.segment
    assert not bool((visible & (seg[:, :, None] != seg[:, None, :])).any())  # never across segments
    assert int(packed.chosen_mask.sum()) == int(c.sum()) and int(packed.rejected_mask.sum()) == int(r.sum())
    # the varlen layout: one row, no padding, each answer its own sequence (the prompt repeated)
    varlen = _pack(batch, Layout(varlen=True, share_prompt=False))
    assert varlen.input_ids.shape == (1, int(batch["attention_mask"].sum())) and varlen.stats()["padding"] == 0
    assert "attention_mask" not in varlen.model_kwargs("flash_attention_2")
    with pytest.raises(ValueError, match="varlen"):
        packed.model_kwargs("flash_attention_2")  # masked rows never reach flash-attention without their mask


@pytest.mark.parametrize("window", [None, 6])
def test_varlen_row_is_cut_by_its_position_ids(window):
    """The flash-attention layout passes no mask: transformers cuts the row into sequences where the position
    ids restart. Its flash path does it in ``prepare_fa_kwargs_from_position_ids`` (cu_seqlens; the kernel
    cannot run here); its SDPA path, run here, cuts at the same places (``find_packed_sequence_indices``) and
    keeps a sliding window inside each sequence, as flash-attention does. Both give TRL's rows."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    model = small_model("mistral", "sdpa")
    model.config.sliding_window = window  # 6: narrower than most sequences here
    batch = _batch8()
    packed = _pack(batch, Layout(varlen=True, share_prompt=False))
    (cu_q, cu_k), (max_q, _) = prepare_fa_kwargs_from_position_ids(packed.position_ids)
    lengths = batch["attention_mask"].sum(1)  # TRL's rows, in order: chosen..., rejected...
    assert cu_q.tolist() == [0, *lengths.cumsum(0).tolist()] and torch.equal(cu_q, cu_k)
    assert int(max_q) == int(lengths.max())
    kwargs = packed.model_kwargs("flash_attention_2")  # input_ids and position_ids only
    assert set(kwargs) == {"input_ids", "position_ids"}
    # use_cache=False as in training (completion_logps): with a cache transformers does not look for packed rows
    got = packed.unpack(token_logps(model(**kwargs, use_cache=False).logits, packed.labels))
    torch.testing.assert_close(got, _two_row_tokens(model, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # FlexAttention compiles its kernels on first use: ~30 s on CPU
def test_flex_attention_block_mask_forward():
    """FlexAttention takes the segments as a BlockMask (forward only: no CPU backward in torch; the GPU's is
    in make gpu-check). A plain causal BlockMask over the same rows gives other numbers: the mask is used."""
    from torch.nn.attention.flex_attention import create_block_mask

    model = small_model("llama", "flex_attention")
    batch = _batch8()
    packed = _pack(batch, FEW_ROWS)
    with torch.no_grad():
        expected = _two_row_tokens(small_model("llama", "sdpa"), batch)
        got = _packed_tokens(model, packed, "flex_attention")
        rows, length = packed.input_ids.shape
        causal = create_block_mask(lambda b, h, q, k: k <= q, rows, None, length, length, device="cpu")
        wrong = packed.unpack(token_logps(model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                                                 attention_mask=causal).logits, packed.labels))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (wrong - expected).abs().max() > 1e-3


def test_sliding_window_per_sequence_not_per_row():
    """A masked row may be longer than a sliding window (the mask never lets a segment see another); a sequence
    may not: the mask would silently widen its window, so pack_pairs refuses, and forcing it changes the
    log-probs (the refusal is not decoration)."""
    model = small_model("mistral", "sdpa")
    batch = _batch8()
    longest = int(batch["attention_mask"].sum(1).max())
    model.config.sliding_window = longest  # every sequence fits; the packed rows (up to 40 tokens) do not
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], max_span=longest,
                        layout=FEW_ROWS)
    assert packed is not None and packed.input_ids.size(1) > longest
    torch.testing.assert_close(_packed_tokens(model, packed, "sdpa"), _two_row_tokens(model, batch),
                               rtol=1e-5, atol=1e-5)
    model.config.sliding_window = longest - 3
    assert pack_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], max_span=longest - 3,
                      layout=FEW_ROWS) is None
    assert pack_sequences(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                          max_span=longest - 3, layout=FEW_ROWS) is None
    forced = (_packed_tokens(model, packed, "sdpa") - _two_row_tokens(model, batch)).abs().max()
    assert forced > 1e-3


def test_gpt2_is_refused_by_the_padding_free_layout_too():
    model = small_model("gpt2", "eager")
    layout, reason = layout_for([model], padding_free=True)
    assert layout is None and "gpt2" in reason
    forced = _packed_tokens(model, _pack(_batch8(), FEW_ROWS), "eager") - _two_row_tokens(model, _batch8())
    assert forced.abs().max() > 1e-3


def test_layout_for_each_attention():
    policy, ref = small_model("llama", "sdpa"), small_model("llama", "eager")
    layout, _ = layout_for([policy, ref], padding_free=True)
    assert layout.padding_free and layout.share_prompt and not layout.varlen
    assert not layout.segments  # an eager reference takes a dense mask: rows, not segments
    assert layout_for([policy, small_model("llama", "sdpa")], padding_free=True)[0].segments
    use_segment_attention([policy])
    assert layout_for([policy, None], padding_free=True)[0].segments  # set by an earlier trainer: still SDPA
    assert layout.attention_tokens == attention_tokens(policy.config)
    assert layout_for([policy, None], padding_free=False)[0] == Layout(padding_free=False, attention_tokens=layout
                                                                          .attention_tokens)
    flash = small_model("llama", "sdpa")
    flash.config._attn_implementation = "flash_attention_2"  # the kernel is not here; only the choice is tested
    layout, _ = layout_for([flash, None], padding_free=True)
    assert layout == Layout(padding_free=True, share_prompt=False, varlen=True)
    layout, reason = layout_for([flash, None], padding_free=False)  # one row per pair needs a mask
    assert layout is None and "flash_attention_2" in reason and "aot_padding_free" in reason
    layout, reason = layout_for([flash, ref], padding_free=True)
    assert layout is None and "mix flash-attention" in reason
    assert unsupported_reason(small_model("llama", "flex_attention")) is None


def test_plan_rows():
    random.seed(0)
    lengths = [min(801, round(random.lognormvariate(5.5, 0.6))) for _ in range(32)]  # realistic-ish segments
    for tokens in (None, 1000):
        for rows in (plan_rows(lengths, 1024, tokens), plan_rows(lengths, None)):
            assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # each segment once
    fewest = plan_rows(lengths, 1024)
    loads = [sum(lengths[i] for i in row) for row in fewest]
    assert max(loads) <= 1024 and len(fewest) == -(-sum(lengths) // 1024)  # as few rows as fit, here
    assert 1 - sum(lengths) / (len(fewest) * max(loads)) < 0.05  # balanced: the padding share
    # the cost model: attention over long rows costs, so with attention_tokens ~ the segments' size it prefers
    # shorter rows; with equal segments there is nothing to save and each stays in its own row
    assert max(sum(lengths[i] for i in row) for row in plan_rows(lengths, 4096, 400)) < max(loads)
    assert plan_rows([16] * 10, 4096, 1024) == [[i] for i in range(10)]
    assert plan_rows([16] * 10, 4096, None) == [list(range(10))]
    assert plan_rows([50, 10], 20) == [[0], [1]]  # a segment longer than max_tokens gets a row of its own


# ---------------------------------------------------------------- the trainers


def _models(tiny, noise=0.02):
    def model(scale):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(tiny["base_model"])
        with torch.no_grad():  # a policy that differs from its reference, so the loss is not log 2
            for p in m.parameters():
                p.add_(scale * torch.randn_like(p))
        return m

    return model(noise), model(0.0)


def _rows_seen(*models):
    rows = []
    for m in models:
        m.register_forward_pre_hook(lambda m, a, k: rows.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    return rows


def _paired_trainer(tiny, tmp_path, data, **config):
    policy, ref = _models(tiny)
    args = AOTConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, max_length=64,
                     **{"loss_type": "aot_unpaired", **PACKING_ARGS, **config})
    return AOTTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(data),
                      processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))


def _loss_and_grads(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in trainer.model.parameters()])


def test_paired_trainer_padfree_equals_one_row_and_trls_rows(tiny, tmp_path):
    """AOTTrainer's loss (with the NLL term, which reads the packed chosen tokens) and gradients, padding-free,
    equal those of one row per pair and of TRL's two rows; policy and reference pass run the same fewer rows;
    the logs say tokens, padding share and pairs per row."""
    data = uneven_pairs(16)
    trainers = {name: _paired_trainer(tiny, tmp_path / name, data, aot_nll_weight=0.5, **flags)
                for name, flags in (("padfree", {}), ("one_row", {"aot_padding_free": False}),
                                    ("two_rows", {"aot_share_prompt": False}),
                                    ("checkpointed", {"gradient_checkpointing": True}))}
    batch = next(iter(trainers["two_rows"].get_train_dataloader()))
    rows = _rows_seen(trainers["padfree"].model, trainers["padfree"].ref_model)
    results = {name: _loss_and_grads(t, batch) for name, t in trainers.items()}
    assert len(rows) == 2 and rows[0] == rows[1] and rows[0][0] < 16, rows  # policy, then reference: same rows
    # SDPA models: one row of segments, attention per segment, also where checkpointing recomputes the layers
    for name in ("padfree", "checkpointed"):
        assert trainers[name]._pack(batch, log=False).per_segment and rows[0][0] == 1
        assert {model_attention(m) for m in (trainers[name].model, trainers[name].ref_model)} == {SEGMENTS}
    assert model_attention(trainers["one_row"].model) == "sdpa"
    assert abs(results["two_rows"][0].item() - 0.6931) > 1e-3  # policy != reference: a real comparison
    for name in ("padfree", "one_row", "checkpointed"):
        torch.testing.assert_close(results[name][0], results["two_rows"][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(results[name][1], results["two_rows"][1], rtol=1e-4, atol=1e-6)
    logs = {name: {k: v[-1] for k, v in t._metrics["train"].items() if k.startswith("layout/")}
            for name, t in trainers.items()}
    assert logs["padfree"]["layout/pairs_per_row"] == 16 / rows[0][0]
    assert logs["padfree"]["layout/tokens"] == logs["one_row"]["layout/tokens"] < logs["two_rows"]["layout/tokens"]
    assert logs["padfree"]["layout/padding"] < min(logs["one_row"]["layout/padding"], 0.05)
    assert logs["two_rows"]["layout/pairs_per_row"] == 0.5 and logs["one_row"]["layout/pairs_per_row"] == 1


@pytest.mark.slow
def test_ten_steps_match_one_row_per_pair(tiny, tmp_path):
    """10 train() steps: the losses, padding-free and one row per pair, agree within float32 rounding. The
    bound: TRL's two rows against one row per pair (the same math, other GEMM shapes) is the control for how far
    rounding alone carries over 10 Adam steps; padding-free must stay within 10x that, and 1e-5 absolute."""
    data = uneven_pairs(160, seed=1)
    losses = {}
    for name, flags in (("padfree", {}), ("one_row", {"aot_padding_free": False}),
                        ("two_rows", {"aot_share_prompt": False})):
        trainer = _paired_trainer(tiny, tmp_path / name, data, max_steps=10, learning_rate=1e-3, logging_steps=1,
                                  report_to=[], **flags)
        trainer.train()
        losses[name] = torch.tensor([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert len(losses["padfree"]) == 10 and abs(losses["padfree"][-1] - losses["padfree"][0]) > 1e-2  # it trained
    control = (losses["two_rows"] - losses["one_row"]).abs().max()
    diff = (losses["padfree"] - losses["one_row"]).abs().max()
    print(f"10-step max |loss diff|: padding-free vs one row {diff:.2e}, control (two rows vs one row) {control:.2e}")
    assert diff <= max(10 * control, 1e-6) and diff < 1e-5, (diff, control)


def _unpaired_trainer(tiny, tmp_path, data, **config):
    policy, ref = _models(tiny)
    args = AOTUnpairedConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, max_length=64,
                             **{**PACKING_ARGS, **config})
    return UnpairedAOTTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(data),
                              processing_class=AutoTokenizer.from_pretrained(tiny["tokenizer"]))


def test_unpaired_trainer_padfree_equals_trls_rows(tiny, tmp_path):
    """UnpairedAOTTrainer: plain sequence packing (policy and reference pass) gives the loss (NLL term
    included) and gradients of TRL's one row per sequence, from fewer rows; the logs say sequences per row."""
    data = unpaired_rows(uneven_pairs(16))
    trainers = {name: _unpaired_trainer(tiny, tmp_path / name, data, aot_nll_weight=0.5, aot_padding_free=flag)
                for name, flag in (("padfree", True), ("rows", False))}
    batch = next(iter(trainers["rows"].get_train_dataloader()))
    rows = _rows_seen(trainers["padfree"].model, trainers["padfree"].ref_model)
    results = {name: _loss_and_grads(t, batch) for name, t in trainers.items()}
    assert len(rows) == 2 and rows[0][0] < 16, rows
    assert abs(results["rows"][0].item() - 0.6931) > 1e-3
    torch.testing.assert_close(results["padfree"][0], results["rows"][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results["padfree"][1], results["rows"][1], rtol=1e-4, atol=1e-6)
    logs = trainers["padfree"]._metrics["train"]
    assert logs["layout/sequences_per_row"][-1] == 16 / rows[0][0] and logs["layout/padding"][-1] < 0.05


def test_unpaired_precompute_stays_trls(tiny, tmp_path, monkeypatch):
    """As in AOTTrainer (tests/unit/test_packing.py): the reference precompute fills the cache a sweep shares with
    TRL's own numbers, whoever writes it; the per-step reference pass is packed and equal within rounding."""
    import datasets
    from trl import KTOTrainer

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    trainer = _unpaired_trainer(tiny, tmp_path, unpaired_rows(uneven_pairs(8)), precompute_ref_log_probs=True,
                                precompute_ref_batch_size=16)
    assert trainer._packing["layout"] is not None
    batch = next(iter(torch.utils.data.DataLoader(trainer.train_dataset.remove_columns(["ref_logps"]),
                                                  batch_size=16, collate_fn=trainer.data_collator)))
    expected = KTOTrainer.compute_ref_log_probs(trainer, trainer.ref_model, batch)[0]  # TRL's own code
    assert torch.equal(torch.tensor(trainer.train_dataset["ref_logps"][:16]), expected)
    packed = trainer._pack(batch)
    assert packed is not None and packed.input_ids.size(0) < 16
    with trainer._reference_pass():
        per_step = trainer._row_logps(trainer.ref_model, batch, packed)[0].sum(-1)
    torch.testing.assert_close(per_step, expected, rtol=1e-5, atol=1e-5)


def test_fallbacks_warn_once_with_the_reason(tiny, tmp_path, caplog):
    """A model the layout cannot take (GPT-2) trains in TRL's rows after one warning naming the reason, in both
    trainers; a batch with a sequence longer than the sliding window runs in TRL's rows after one warning."""
    data = uneven_pairs(16)
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, max_length=64, **PACKING_ARGS)
    for make, args, rows in ((AOTTrainer, AOTConfig(loss_type="aot_paired", **common), data),
                             (UnpairedAOTTrainer, AOTUnpairedConfig(**common), unpaired_rows(data))):
        caplog.clear()
        with caplog.at_level("WARNING", logger="aot_handbook.trainers"):
            trainer = make(model=small_model("gpt2", "eager"), ref_model=small_model("gpt2", "eager"), args=args,
                           train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
            trainer.train()
        warnings = [r.getMessage() for r in caplog.records if r.name == "aot_handbook.trainers"]
        assert len(warnings) == 1 and "gpt2" in warnings[0] and "aot_padding_free" in warnings[0], warnings
        assert trainer._pack(next(iter(trainer.get_train_dataloader()))) is None
        assert trainer.state.global_step == 1

    trainer = _paired_trainer(tiny, tmp_path / "window", data)
    trainer._packing["span"] = 10  # a sliding window shorter than some of these sequences
    batch = next(iter(trainer.get_train_dataloader()))
    caplog.clear()
    with caplog.at_level("WARNING", logger="aot_handbook.trainers"):
        assert trainer._pack(batch) is None and trainer._pack(batch) is None
    assert len(caplog.records) == 1 and "attention window 10" in caplog.records[0].getMessage()


def test_config_keys():
    common = dict(output_dir="x", bf16=False, use_cpu=True)
    assert AOTConfig(**common).aot_padding_free and AOTUnpairedConfig(**common).aot_padding_free
    with pytest.raises(ValueError, match="aot_padding_free"):
        AOTConfig(padding_free=True, **common)  # TRL's switch, which 1.16 ignores with a warning
    with pytest.raises(ValueError, match="aot_row_tokens"):
        AOTUnpairedConfig(aot_row_tokens=0, **common)
    assert DPOConfig(**common).padding_free is False  # TRL's own, untouched
