"""Model, tokenizer and LoRA from a recipe, through transformers, PEFT and TRL's ModelConfig; what a model path
is (a folder with weights, a hub id); a character-level tokenizer built locally (tasks and checks without a hub)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.safetensors.index.json", "*.bin.index.json")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def is_hub_id(name: str) -> bool:
    """``owner/name`` or ``name`` as the hub spells them (a path like ``./x``, ``/x`` or ``a/b/c`` is not one)."""
    return bool(HUB_ID.fullmatch(name)) and ".." not in name and not name.endswith(".")


def weight_files(folder: str | Path) -> list[Path]:
    return sorted(p for pattern in WEIGHT_FILES for p in Path(folder).glob(pattern) if p.is_file())


def check_model_path(name: str, key: str = "model_name_or_path") -> None:
    """A model is an existing folder with a config and weights (or a PEFT adapter), or a plausible hub id;
    anything else fails here, naming the path, instead of as a hub connection error after other work."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return
        missing = [what for what, ok in (("config.json", (path / "config.json").is_file()),
                                         ("weight files", bool(weight_files(path)))) if not ok]
        if missing:
            raise ValueError(f"{key}: folder '{name}' is not a model: no {' and no '.join(missing)} in it")
    elif path.exists():
        raise ValueError(f"{key}: '{name}' is a file, not a model folder or a hub id")
    elif not is_hub_id(name):
        raise ValueError(f"{key}: no such folder '{name}' (and it is not a hub id such as 'owner/name')")
    elif "/" in name and Path(name.split("/")[0]).is_dir():  # runs/<name>: meant as a local path
        raise ValueError(f"{key}: no such folder '{name}' (its parent folder '{name.split('/')[0]}' exists here)")
    elif os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ValueError(f"{key}: no such folder '{name}', and no hub model '{name}' in the local cache "
                             "(HF_HUB_OFFLINE is set)")


@contextlib.contextmanager
def _naming(name: str, key: str):
    """A load that fails in transformers or the hub client (OSError; ValueError for a folder without a usable
    tokenizer, which transformers blames on sentencepiece) names the path the recipe gave."""
    try:
        yield
    except (OSError, ValueError) as err:
        raise ValueError(f"{key}: cannot load '{name}': {err}") from err


def load_tokenizer(model_args, recipe_args):
    """The tokenizer of a recipe (``trl.ModelConfig`` and ``configs.RecipeArguments``), its chat template set."""
    from transformers import AutoTokenizer

    name = recipe_args.tokenizer_name_or_path or model_args.model_name_or_path
    with _naming(name, "tokenizer_name_or_path" if recipe_args.tokenizer_name_or_path else "model_name_or_path"):
        tokenizer = AutoTokenizer.from_pretrained(name, revision=model_args.model_revision)
    if recipe_args.chat_template:
        tokenizer.chat_template = recipe_args.chat_template
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer):
    """The one pad-token fallback: Llama/Mistral ship no pad token; padding is masked out, so EOS is safe."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_args, *, for_reference: bool = False):
    """The causal LM a ``trl.ModelConfig`` names (dtype, attention, quantization, revision); a reference is frozen."""
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    quantization = get_quantization_config(model_args)
    dtype = model_args.dtype
    with _naming(model_args.model_name_or_path, "model_name_or_path"):
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


def looks_local(name: str) -> bool:
    """A path the user meant as a folder (a hub id is ``owner/name`` or ``name``, never ./, ../, / or ~)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()


CHAR_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def char_tokenizer(chars: list[str]):
    """A character-level tokenizer over ``chars`` (plus ``CHAR_SPECIALS``, ids 0-3), built locally: each character
    one token, BOS prepended, left padding."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(CHAR_SPECIALS + list(chars))}
    # BPE with no merges and no pre-tokenizer is a pure character model; Fuse joins the
    # characters back without the spaces the default decoder would put between tokens.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(CHAR_SPECIALS)
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    # Left padding is what batched generation needs; TRL's collators pad on their own.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left")
