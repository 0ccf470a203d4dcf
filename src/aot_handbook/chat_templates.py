"""Chat templates of the paper's five base models, as Jinja strings.

A recipe sets ``chat_template`` only where the model's tokenizer ships none we can rely on
(Merlinite) or where pinning the exact string matters (OpenHermes' ChatML, Starling's OpenChat
format: the recipe names the template so a run does not depend on a hub revision of
``tokenizer_config.json``). Llama-3 and Mistral use their tokenizers' own templates, so their
recipes set none; their strings are kept here too so a test can check the exact rendering
offline, without downloading the tokenizers.

Sources (as of the paper, spring 2024):
- Merlinite-7B (ibm/merlinite-7b, InstructLab / LAB): the model card's prompt
  ``<|system|>\\n{system}\\n<|user|>\\n{prompt}\\n<|assistant|>\\n`` with stop token
  ``<|endoftext|>``; multi-turn as InstructLab's training template for these models
  (instructlab/training, ``ibm_legacy_tmpl``: each assistant turn ends ``<|endoftext|>``, then a
  newline unless it is the last message). Added here: the model card's system prompt (used in
  every example there) when the conversation brings none; no BOS, as in InstructLab's template.
- OpenHermes-2.5-Mistral-7B: ChatML (``<|im_start|>role\\n...<|im_end|>\\n``), its model card.
- Starling-LM-7B-alpha: the OpenChat 3.5 format ``GPT4 Correct User: ...<|end_of_turn|>GPT4
  Correct Assistant:``, its model card and tokenizer_config.json.
- Meta-Llama-3-8B-Instruct and Mistral-7B-Instruct-v0.2: their tokenizer_config.json
  ``chat_template``; Mistral's as first released. Later hub revisions of Mistral's tokenizer
  changed the template (system-prompt handling, spacing around ``[INST]``): the recipes use
  whatever revision ``model_revision`` names (default ``main``), so pin it to reproduce a run.
"""

from __future__ import annotations

MERLINITE_SYSTEM_PROMPT = (
    "You are an AI language model developed by IBM Research. You are a cautious assistant. "
    "You carefully follow instructions. You are helpful and harmless and you follow ethical "
    "guidelines and promote positive behavior."
)

# Merlinite: the model card's turn markers; the card's default system prompt when the
# conversation has none; every assistant turn ends with <|endoftext|> (the card's stop token).
MERLINITE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|system|>\\n" + MERLINITE_SYSTEM_PROMPT + "\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + '<|endoftext|>' + ('' if loop.last else '\\n') }}"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

OPENCHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ 'GPT4 Correct ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %}"
)

LLAMA3_INSTRUCT = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

MISTRAL_INSTRUCT = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)


TEMPLATES = {"merlinite": MERLINITE, "chatml": CHATML, "openchat": OPENCHAT,
             "llama3_instruct": LLAMA3_INSTRUCT, "mistral_instruct": MISTRAL_INSTRUCT}


def render(template: str, messages: list[dict], *, add_generation_prompt: bool = False, **special_tokens) -> str:
    """Render a conversation with transformers' own Jinja machinery (the one a tokenizer uses)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                        add_generation_prompt=add_generation_prompt, **special_tokens)
    return rendered[0]
