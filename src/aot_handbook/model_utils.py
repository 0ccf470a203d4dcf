"""Model, tokenizer and LoRA from a recipe, through transformers, PEFT and TRL's ModelConfig."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from accelerate import PartialState
from trl import ModelConfig, get_quantization_config

from .configs import RecipeArguments


def load_tokenizer(model_args: ModelConfig, recipe_args: RecipeArguments):
    tokenizer = AutoTokenizer.from_pretrained(
        recipe_args.tokenizer_name_or_path or model_args.model_name_or_path,
        revision=model_args.model_revision,
    )
    if recipe_args.chat_template:
        tokenizer.chat_template = recipe_args.chat_template
    if tokenizer.pad_token is None:  # Llama/Mistral ship none; padding is masked out, so EOS is safe
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_args: ModelConfig, *, for_reference: bool = False):
    quantization = get_quantization_config(model_args)
    dtype = model_args.dtype
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=dtype if dtype in (None, "auto") else getattr(torch, dtype),
        quantization_config=quantization,
        # k-bit weights must be placed at load time: each process on its own device
        device_map={"": PartialState().local_process_index} if quantization is not None else None,
    )
    if for_reference:
        model.eval().requires_grad_(False)
    return model


