"""One prompt builder for both generation backends (aot_handbook.evaluation.generation).

The real tokenizers of the five base models cannot be downloaded here, so each is mimicked offline:
a character-level tokenizer with the model's BOS / EOS / turn tokens as special tokens, adding BOS to
plain text as the real ones do (Llama-3's post-processor, the Mistral family's add_bos_token).
"""

import json
from pathlib import Path

import pytest
import torch
import yaml

from aot_handbook import chat_templates as ct
from aot_handbook.evaluation.common import RunInfo
from aot_handbook.evaluation.generation import (
    build_prompt_ids,
    generate_outputs,
    hf_inputs,
    load_tokenizer,
    stop_token_ids,
    vllm_inputs,
)
from aot_handbook.models import BASE_MODELS

CHARS = [chr(i) for i in range(32, 127)] + ["\n"]
# Special tokens of each model's real tokenizer (tokenizer_config.json), the end-of-turn token of its template,
# and whether its template writes BOS (then exactly one BOS; else none, as TRL tokenizes its training prompts).
MODELS = {
    "merlinite-7b": dict(bos="<s>", eos="</s>", extra=["<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"],
                         end_of_turn="<|endoftext|>", bos_in_template=False),
    "mistral-7b-instruct-v0.2": dict(bos="<s>", eos="</s>", extra=[], end_of_turn="</s>", bos_in_template=True),
    "llama3-8b-instruct": dict(bos="<|begin_of_text|>", eos="<|eot_id|>",
                               extra=["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
                               end_of_turn="<|eot_id|>", bos_in_template=True),
    "openhermes-2.5-mistral-7b": dict(bos="<s>", eos="<|im_end|>", extra=["</s>", "<|im_start|>"],
                                      end_of_turn="<|im_end|>", bos_in_template=False),
    "starling-lm-7b-alpha": dict(bos="<s>", eos="<|end_of_turn|>", extra=["</s>"], end_of_turn="<|end_of_turn|>",
                                 bos_in_template=True),
}
INSTRUCTIONS = ["Name a prime.", "Write two words about the sea, please."]


def mimic_tokenizer(bos: str, eos: str, extra: list[str], chat_template: str | None = None, pad: str = "<pad>"):
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([pad, "<unk>", bos, eos, *extra]))
    vocab = {t: i for i, t in enumerate(specials + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(specials)
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token="<unk>", chat_template=chat_template)


def model_tokenizer(name: str):
    m = MODELS[name]
    return mimic_tokenizer(m["bos"], m["eos"], m["extra"], BASE_MODELS[name].template)


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


# A short template whose turns end with <|end|>, which is not the EOS: the model must stop there.
TURN_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ '<|end|>' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


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


def test_base_model_row_uses_the_template_of_its_aligned_runs(tmp_path):
    """A base model folder or hub id is evaluated with the chat template its recipes train with, not with raw
    text or whatever its hub tokenizer holds: the same prompt ids as the aligned run's."""
    recipe_file = Path(__file__).resolve().parents[1] / "recipes/merlinite-7b/aot_unpaired.yaml"
    recipe = yaml.safe_load(recipe_file.read_text())
    assert RunInfo.from_path("ibm/merlinite-7b").chat_template == recipe["chat_template"] == ct.MERLINITE
    for hub_id in ("meta-llama/Meta-Llama-3-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.2"):
        assert RunInfo.from_path(hub_id).chat_template is None  # their recipes use the tokenizer's own
    m = MODELS["merlinite-7b"]
    base = tmp_path / "merlinite-7b"  # a local copy of the base model whose tokenizer has no template
    mimic_tokenizer(m["bos"], m["eos"], m["extra"]).save_pretrained(base)
    aligned = tmp_path / "runs" / "merlinite-7b-aot_unpaired"  # a run folder: recipe.json + the saved tokenizer
    model_tokenizer("merlinite-7b").save_pretrained(aligned)
    (aligned / "recipe.json").write_text(json.dumps({"path": "recipes/merlinite-7b/aot_unpaired.yaml",
                                                     "recipe": {**recipe, "model_name_or_path": str(base)}}))
    base_run, aligned_run = RunInfo.from_path(base), RunInfo.from_path(aligned)
    assert base_run.method == "base" and base_run.base_model == aligned_run.base_model == "merlinite-7b"
    assert base_run.chat_template == aligned_run.chat_template
    ids = [build_prompt_ids(load_tokenizer(r.model, r.adapter, r.chat_template), INSTRUCTIONS)
           for r in (base_run, aligned_run)]
    assert ids[0] == ids[1]
    tok = load_tokenizer(str(base))
    assert tok.decode(ids[0][0]).startswith("<|system|>\n" + ct.MERLINITE_SYSTEM_PROMPT)
    assert build_prompt_ids(tok, INSTRUCTIONS) != ids[0]  # without the template: raw text
