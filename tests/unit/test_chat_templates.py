"""aot_handbook.chat_templates: each base model's template renders to the exact string its tokenizer does."""

import os

import datasets  # noqa: E402
import pytest  # noqa: E402

from aot_handbook import chat_templates as ct  # noqa: E402
from aot_handbook.models import BASE_MODELS  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets.disable_progress_bars()


CONVERSATION = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 = 4."},
                {"role": "user", "content": "And 3+3?"}]


# written out by hand from each model card / tokenizer_config.json, not produced by the templates
EXPECTED = {
    "merlinite-7b": "<|system|>\nYou are an AI language model developed by IBM Research. "
                    "You are a cautious assistant. "
                    "You carefully follow instructions. You are helpful and harmless and you follow ethical "
                    "guidelines "
                    "and promote positive behavior.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n2+2 = 4.<|endoftext|>\n"
                    "<|user|>\nAnd 3+3?\n<|assistant|>\n",
    "mistral-7b-instruct-v0.2": "<s>[INST] What is 2+2? [/INST]2+2 = 4.</s>[INST] And 3+3? [/INST]",
    "llama3-8b-instruct": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n2+2 = 4.<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "openhermes-2.5-mistral-7b": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                                 "<|im_start|>assistant\n2+2 = 4.<|im_end|>\n"
                                 "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n",
    "starling-lm-7b-alpha": "<s>GPT4 Correct User: What is 2+2?<|end_of_turn|>GPT4 Correct Assistant: 2+2 = 4."
                            "<|end_of_turn|>GPT4 Correct User: And 3+3?<|end_of_turn|>GPT4 Correct Assistant:",
}


MODELS = list(BASE_MODELS)


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
@pytest.mark.parametrize("model", MODELS)
def test_chat_template_exact_string(tiny_tokenizer, model):
    info = BASE_MODELS[model]
    # The tokenizer's own machinery, with the real model's special tokens (the tiny one's are <bos>/<eos>).
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, chat_template=info.template, tokenize=False,
                                              add_generation_prompt=True, **info.special_tokens)
    assert text == EXPECTED[model]
    # TRL splits prompt and completion by rendering the prompt with the generation prompt: it must be a prefix.
    prompt = tiny_tokenizer.apply_chat_template(CONVERSATION[:1], chat_template=info.template, tokenize=False,
                                                add_generation_prompt=True, **info.special_tokens)
    full = tiny_tokenizer.apply_chat_template(CONVERSATION[:2], chat_template=info.template, tokenize=False,
                                              **info.special_tokens)
    assert full.startswith(prompt) and full != prompt


@pytest.mark.usefixtures("in_repo")  # recipes name their files relative to the repository
def test_merlinite_keeps_a_given_system_prompt(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]],
                                              chat_template=ct.MERLINITE, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n"
