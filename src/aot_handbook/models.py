"""The base-model registry: the paper's five 7B base models, one record each.

The key is the model's folder under ``recipes/`` and its name in result files (``RunInfo.base_model``);
the record holds the hub id the recipes train from, the name the tables print, the chat template
(``aot_handbook.chat_templates``) and whether the recipes set it (else the tokenizer's own is used),
the architecture family (LoRA target names, ``validate``), and the special tokens the real tokenizer
renders its template with (so tests can check the exact string offline). Recipe generation
(``recipes/_generate.py``), validation, evaluation and tables read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .chat_templates import CHATML, LLAMA3_INSTRUCT, MERLINITE, MISTRAL_INSTRUCT, OPENCHAT


@dataclass(frozen=True)
class BaseModel:
    key: str  # recipes/<key>/, results' base_model
    hub_id: str
    name: str  # in table captions and base rows
    template: str  # the chat template its recipes train with (set in the recipe or the tokenizer's own)
    set_in_recipe: bool  # whether the recipes set ``chat_template`` (False: the tokenizer's own)
    family: str  # config.json model_type
    special_tokens: dict = field(default_factory=dict)  # bos/eos as the real tokenizer renders them

    @property
    def recipe_template(self) -> str | None:
        """The ``chat_template`` its recipes set; None where they use the tokenizer's own."""
        return self.template if self.set_in_recipe else None


BASE_MODELS: dict[str, BaseModel] = {m.key: m for m in (
    BaseModel("merlinite-7b", "ibm/merlinite-7b", "Merlinite-7B", MERLINITE, True, "mistral",
              {"bos_token": "<s>", "eos_token": "</s>"}),
    BaseModel("mistral-7b-instruct-v0.2", "mistralai/Mistral-7B-Instruct-v0.2", "Mistral-7B", MISTRAL_INSTRUCT,
              False, "mistral", {"bos_token": "<s>", "eos_token": "</s>"}),
    BaseModel("llama3-8b-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", "Llama3-8B", LLAMA3_INSTRUCT, False,
              "llama", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    BaseModel("openhermes-2.5-mistral-7b", "teknium/OpenHermes-2.5-Mistral-7B", "OpenHermes-7B", CHATML, True,
              "mistral", {"bos_token": "<s>", "eos_token": "<|im_end|>"}),
    BaseModel("starling-lm-7b-alpha", "berkeley-nest/Starling-LM-7B-alpha", "Starling-7B", OPENCHAT, True,
              "mistral", {"bos_token": "<s>", "eos_token": "<|end_of_turn|>"}),
)}


def by_hub_id(name: str) -> BaseModel | None:
    """The registered model of a hub id (case-insensitive, as the hub resolves it), else None."""
    return next((m for m in BASE_MODELS.values() if m.hub_id.lower() == name.lower()), None)


def model_key(name: str) -> str:
    """A hub id or model folder -> its registry key (``ibm/merlinite-7b`` -> ``merlinite-7b``); one not
    registered -> its last path part, lower case."""
    model = by_hub_id(name)
    return model.key if model else (Path(name).name.lower() or name.lower())
