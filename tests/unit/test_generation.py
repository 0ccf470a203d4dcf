"""aot_handbook.generation: one prompt builder for both backends, stops at the end-of-turn token, resumable
outputs with a LoRA adapter."""

import json

import pytest
import torch

from aot_handbook import chat_templates as ct
from aot_handbook.generation import (
    build_prompt_ids,
    generate_outputs,
    hf_inputs,
    load_model_and_tokenizer,
    stop_token_ids,
    vllm_inputs,
)
from aot_handbook.models import BASE_MODELS
from aot_handbook.tasks.tiny.arithmetic import (
    generate,
    read_jsonl,
)
from tests.helpers import INSTRUCTIONS, MODELS, mimic_tokenizer, model_tokenizer


@pytest.mark.slow
def test_generation_is_resumable_and_uses_the_adapter(runs, tmp_path):
    rows = read_jsonl(runs["tiny"]["eval_prompts"])[:20]
    out = tmp_path / "outputs.json"
    generate_outputs(str(runs["sft"]), out, adapter=str(runs["lora"]), generator="lora",
                     instructions=str(runs["tiny"]["eval_prompts"]), limit=8, max_new_tokens=5, batch_size=4)
    first = json.loads(out.read_text())
    assert [r["instruction"] for r in first] == [r["prompt"] for r in rows[:8]]
    assert set(first[0]) == {"instruction", "output", "generator", "dataset"}
    first[0]["output"] = "SENTINEL"  # an instruction already done must not be regenerated
    out.write_text(json.dumps(first))
    generate_outputs(str(runs["sft"]), out, adapter=str(runs["lora"]), generator="lora",
                     instructions=str(runs["tiny"]["eval_prompts"]), limit=20, max_new_tokens=5, batch_size=4)
    done = json.loads(out.read_text())
    assert [r["instruction"] for r in done] == [r["prompt"] for r in rows] and done[0]["output"] == "SENTINEL"
    assert not list(tmp_path.glob("*.partial.json")) and not list(tmp_path.glob(".*tmp"))
    # the adapter is applied: outputs equal greedy decoding of the merged LoRA model, and differ from the base
    lm, tok = load_model_and_tokenizer(str(runs["sft"]), str(runs["lora"]))
    base, _ = load_model_and_tokenizer(str(runs["sft"]))
    prompts = [r["prompt"] for r in rows[1:]]
    assert [r["output"] for r in done[1:]] == [o.strip() for o in generate(lm, tok, prompts)]
    assert [o.strip() for o in generate(base, tok, prompts)] != [r["output"] for r in done[1:]]


# A short template whose turns end with <|end|>, which is not the EOS: the model must stop there.
TURN_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ '<|end|>' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


@pytest.mark.parametrize("name", list(MODELS))
def test_both_backends_get_the_same_ids_with_one_bos_where_expected(name):
    from trl.data_utils import _tokenize  # how TRL tokenizes the training prompts

    m, tok = MODELS[name], model_tokenizer(name)
    ids = build_prompt_ids(tok, INSTRUCTIONS)
    hf = hf_inputs(tok, ids)
    prompts, params = vllm_inputs(tok, ids, max_new_tokens=8, do_sample=False, temperature=0.7, top_p=1.0)
    for row, instruction in enumerate(INSTRUCTIONS):
        hf_ids = hf["input_ids"][row][hf["attention_mask"][row].bool()].tolist()
        assert hf_ids == prompts[row]["prompt_token_ids"] == ids[row]
        assert hf["input_ids"][row][-1] != tok.pad_token_id  # left padding: the prompt ends the row
        message = [{"role": "user", "content": instruction}]
        assert ids[row] == _tokenize(tok, message, add_generation_prompt=True)["input_ids"]  # as in training
        text = ct.render(BASE_MODELS[name].template, message, add_generation_prompt=True,
                         bos_token=m["bos"], eos_token=m["eos"])
        assert tok.decode(ids[row]) == text  # the template's exact string, nothing added
        bos_positions = [i for i, t in enumerate(ids[row]) if t == tok.bos_token_id]
        assert bos_positions == ([0] if m["bos_in_template"] else [])
        if m["bos_in_template"]:  # what passing the templated string to vLLM did: a second BOS
            assert tok(text)["input_ids"][:2] == [tok.bos_token_id] * 2
    assert tok.convert_tokens_to_ids(m["end_of_turn"]) in params["stop_token_ids"]
    assert tok.eos_token_id in params["stop_token_ids"]
    assert params["temperature"] == 0.0 and params["max_tokens"] == 8


def test_raw_text_without_a_template_gets_the_tokenizers_bos():
    tok = mimic_tokenizer("<s>", "</s>", [])
    ids = build_prompt_ids(tok, ["12+34="])
    assert ids == [[tok.bos_token_id, *tok("12+34=", add_special_tokens=False)["input_ids"]]]
    assert stop_token_ids(tok) == [tok.eos_token_id]


@pytest.mark.slow
def test_generation_stops_at_the_end_of_turn_token_not_only_eos(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = mimic_tokenizer("<s>", "</s>", ["<|user|>", "<|assistant|>", "<|end|>"], TURN_TEMPLATE)
    [prompt] = build_prompt_ids(tok, ["hi"])
    answer = tok("ok<|end|>junk</s>", add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end in stop_token_ids(tok) and end != tok.eos_token_id
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))
    seq = torch.tensor([prompt + answer])
    opt = torch.optim.Adam(lm.parameters(), lr=3e-2)
    for _ in range(150):  # learn the one sequence: the answer, the end of turn, then more text up to EOS
        loss = lm(input_ids=seq, labels=seq).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.eval()
    with torch.no_grad():  # stopping at EOS alone (the old behaviour) runs past the end of turn
        gen = lm.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    assert tok.decode(gen[0, len(prompt):], skip_special_tokens=True) == "okjunk"
    lm.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "instructions.json").write_text(json.dumps([{"instruction": "hi"}]))
    out = generate_outputs(str(tmp_path / "model"), tmp_path / "out.json",
                           instructions=str(tmp_path / "instructions.json"),
                           generator="tiny", max_new_tokens=10, backend="hf", dtype="float32")
    assert json.loads(out.read_text())[0]["output"] == "ok"
