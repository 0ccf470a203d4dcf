"""Generation: a model (and LoRA adapter) loaded for inference, the one generation loop, resumable outputs files.

Below both the data stage (``pairs``: sampling) and evaluation (AlpacaEval outputs, the tasks' greedy answers).
One prompt builder for both backends (:func:`build_prompt_ids`): the token ids are built once, as TRL
tokenizes training prompts (template applied, no second BOS), and handed to transformers and to vLLM
as ids; both stop at the template's end-of-turn token and at EOS (:func:`stop_token_ids`).

:func:`generate_outputs` writes alpaca_eval's format, a JSON list of ``{instruction, output, generator, dataset}``.
Progress is kept in ``<out>.partial.json`` (rewritten atomically after every batch); the
final file appears, by rename, only when every instruction has an output. Re-running skips the
instructions (by text) that already have one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .io import read_jsonl, write_json
from .model_utils import ensure_pad_token

logger = logging.getLogger(__name__)
ALPACA_EVAL_HUB = ("tatsu-lab/alpaca_eval", "alpaca_eval.json")  # 805 instructions (+ text-davinci-003 outputs)


def load_instructions(source: str, *, limit: int | None = None) -> list[dict]:
    """Rows with ``instruction`` (and ``dataset``) from a local .json/.jsonl file or the AlpacaEval hub set.

    A local file may also hold rows with ``prompt`` instead of ``instruction`` (the tiny task).
    """
    path = Path(source)
    if path.is_file():
        rows = json.loads(path.read_text()) if path.suffix == ".json" else read_jsonl(path)
    elif source in ("tatsu-lab/alpaca_eval", "alpaca_eval"):
        from huggingface_hub import hf_hub_download

        try:
            downloaded = hf_hub_download(ALPACA_EVAL_HUB[0], ALPACA_EVAL_HUB[1], repo_type="dataset")
            rows = json.loads(Path(downloaded).read_text())
        except Exception as exc:  # offline, no cache
            raise RuntimeError(
                f"generation.instructions: could not load {source!r} from the hub ({type(exc).__name__}: {exc}). "
                "Offline, point generation.instructions at a local copy of alpaca_eval.json.") from exc
    else:
        raise FileNotFoundError(f"generation.instructions: {source!r} is neither a file nor tatsu-lab/alpaca_eval")
    out = []
    for i, r in enumerate(rows):
        instruction = r.get("instruction", r.get("prompt"))
        if instruction is None:
            raise ValueError(f"{source}: row {i} has neither an 'instruction' nor a 'prompt' column")
        out.append({"instruction": instruction, "dataset": r.get("dataset", Path(source).stem)})
    return out[:limit] if limit else out


def build_prompt_ids(tokenizer, instructions: list[str]) -> list[list[int]]:
    """Each instruction's prompt token ids, built once for every backend.

    With a chat template: the user turn plus the generation prompt, tokenized the way TRL tokenizes
    training prompts (``apply_chat_template(..., tokenize=True)``: the template's own special tokens, no
    BOS added on top). Without one: the raw text with the tokenizer's special tokens (its BOS)."""
    if getattr(tokenizer, "chat_template", None):
        return [list(tokenizer.apply_chat_template([{"role": "user", "content": x}], tokenize=True,
                                                   add_generation_prompt=True, return_dict=True)["input_ids"])
                for x in instructions]
    return [list(tokenizer(x)["input_ids"]) for x in instructions]


def end_of_turn_ids(tokenizer) -> list[int]:
    """The token the chat template closes an assistant turn with, when it is a special (added) token:
    ``<|eot_id|>`` (Llama-3), ``<|im_end|>`` (ChatML), ``<|end_of_turn|>`` (OpenChat), ``<|endoftext|>``
    (Merlinite), ``</s>`` (Mistral). Found by rendering a one-turn conversation and tokenizing what the
    template writes right after the assistant's text."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    marker = "Zq"
    try:
        turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception as err:  # a template that refuses this conversation (jinja's raise_exception)
        logger.warning("chat template: no end-of-turn token found (%s); generation stops at EOS only", err)
        return []
    tail = text[text.rindex(marker) + len(marker):].lstrip()  # a newline before the token: still the turn's end
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return [ids[0]] if ids and ids[0] in special else []


def stop_token_ids(tokenizer, extra: int | list[int] | None = None) -> list[int]:
    """Generation stops at any of these: the template's end-of-turn token, the tokenizer's EOS, and
    ``extra`` (e.g. the model's ``generation_config.eos_token_id``)."""
    extra = [extra] if isinstance(extra, int) else list(extra or [])
    ids = [*end_of_turn_ids(tokenizer), tokenizer.eos_token_id, *extra]
    return list(dict.fromkeys(i for i in ids if i is not None))


def hf_inputs(tokenizer, prompt_ids: list[list[int]]) -> dict:
    """Left-padded ``input_ids`` / ``attention_mask`` tensors of the prompts' ids (nothing re-tokenized)."""
    return tokenizer.pad({"input_ids": prompt_ids}, padding=True, padding_side="left", return_tensors="pt")


def vllm_inputs(tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int, do_sample: bool,
                temperature: float, top_p: float, extra_stop: int | list[int] | None = None) -> tuple[list, dict]:
    """What ``_generate_vllm`` hands vLLM: token prompts (``{"prompt_token_ids": ids}``: vLLM does not
    tokenize them again) and the ``SamplingParams`` keyword arguments, stop tokens included."""
    params = dict(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                  top_p=top_p if do_sample else 1.0, stop_token_ids=stop_token_ids(tokenizer, extra_stop),
                  skip_special_tokens=True)
    return [{"prompt_token_ids": list(ids)} for ids in prompt_ids], params


def load_tokenizer(model: str, adapter: str | None = None, chat_template: str | None = None):
    """The run's tokenizer (a run saves its own, chat template included); ``chat_template`` replaces the
    template (a base model evaluated with the template its recipes train with: ``RunInfo.chat_template``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter or model)
    if chat_template:
        tokenizer.chat_template = chat_template
    return ensure_pad_token(tokenizer)


def load_model_and_tokenizer(model: str, adapter: str | None = None, *, dtype: str = "auto",
                             chat_template: str | None = None):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model, adapter, chat_template)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
    if adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()  # merged: plain generate() speed
    if torch.cuda.is_available():
        lm = lm.to("cuda")
    return lm.eval(), tokenizer


@torch.no_grad()
def hf_generate(lm, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int, do_sample: bool = False,
                temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
                num_return_sequences: int = 1) -> list[str]:
    """The package's one batched ``generate`` (evaluation, ``make pairs`` sampling, the tiny task): one batch of
    prompts (token ids, :func:`build_prompt_ids`), left-padded, stopping at :func:`stop_token_ids`; the completions
    decoded without special tokens, ``num_return_sequences`` per prompt, prompt by prompt. Greedy unless
    ``do_sample``; ``top_k`` None keeps the model's generation config (0: temperature and top-p only)."""
    enc = hf_inputs(tokenizer, prompt_ids).to(lm.device)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
    if do_sample and top_k is not None:
        sampling["top_k"] = top_k
    gen = lm.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                      pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=stop_token_ids(tokenizer, lm.generation_config.eos_token_id), **sampling)
    return tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def generate_outputs(model: str, out_path: str | Path, *, instructions: str, generator: str,
                     adapter: str | None = None, limit: int | None = None, max_new_tokens: int = 2048,
                     batch_size: int = 8, do_sample: bool = False, temperature: float = 0.7, top_p: float = 1.0,
                     backend: str = "auto", dtype: str = "auto", strip: bool = True,
                     chat_template: str | None = None) -> Path:
    """Generate (or finish generating) ``out_path`` in alpaca_eval's format; return its path."""
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.stem + ".partial.json")
    rows = load_instructions(instructions, limit=limit)
    done: dict[str, dict] = {}
    for existing in (out_path, partial):
        if existing.is_file():
            for r in json.loads(existing.read_text()):
                done.setdefault(r["instruction"], r)
    todo = [r for r in rows if r["instruction"] not in done]
    if todo:
        logger.info("generating %d of %d instructions (%d already done)", len(todo), len(rows), len(rows) - len(todo))
        use_vllm = backend == "vllm" or (backend == "auto" and vllm_available())
        run, since = (_generate_vllm if use_vllm else _generate_hf), 0
        for r, text in run(model, adapter, todo, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           do_sample=do_sample, temperature=temperature, top_p=top_p, dtype=dtype,
                           chat_template=chat_template):
            done[r["instruction"]] = {"instruction": r["instruction"], "output": text.strip() if strip else text,
                                      "generator": generator, "dataset": r["dataset"]}
            since += 1
            if since >= batch_size:  # checkpoint once per batch
                write_json(partial, list(done.values()))
                since = 0
    final = [{**done[r["instruction"]], "generator": generator} for r in rows]  # the instructions' order
    write_json(out_path, final)
    partial.unlink(missing_ok=True)
    return out_path


def _generate_hf(model, adapter, rows, *, max_new_tokens, batch_size, do_sample, temperature, top_p, dtype,
                 chat_template=None):
    lm, tokenizer = load_model_and_tokenizer(model, adapter, dtype=dtype, chat_template=chat_template)
    prompt_ids = build_prompt_ids(tokenizer, [r["instruction"] for r in rows])
    order = sorted(range(len(rows)), key=lambda i: -len(prompt_ids[i]))  # longest first: less padding, early OOM
    with tqdm(total=len(rows), desc="generate", unit="instr") as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            texts = hf_generate(lm, tokenizer, [prompt_ids[i] for i in idx], max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, temperature=temperature, top_p=top_p)
            for i, text in zip(idx, texts):
                yield rows[i], text
            bar.update(len(idx))


def _generate_vllm(model, adapter, rows, *, max_new_tokens, batch_size, do_sample, temperature, top_p, dtype,
                   chat_template=None):
    """vLLM backend (GPU machines with vllm installed); LoRA through a LoRARequest. The prompts are the token
    ids the HF backend gets (:func:`vllm_inputs`), from the same tokenizer. Untested offline."""
    from transformers import GenerationConfig
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    tokenizer = load_tokenizer(model, adapter, chat_template)
    try:
        model_eos = GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:  # no generation_config.json
        model_eos = None
    prompts, params = vllm_inputs(tokenizer, build_prompt_ids(tokenizer, [r["instruction"] for r in rows]),
                                  max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                  top_p=top_p, extra_stop=model_eos)
    llm = LLM(model=model, tokenizer=adapter or model, dtype=dtype, enable_lora=bool(adapter))
    params = SamplingParams(**params)
    lora = LoRARequest("adapter", 1, adapter) if adapter else None
    step = max(batch_size, 256)  # vLLM batches internally; chunks only bound the progress granularity
    for start in tqdm(range(0, len(rows), step), desc="generate (vllm)"):
        outs = llm.generate(prompts[start:start + step], params, lora_request=lora)
        for r, o in zip(rows[start:start + step], outs):
            yield r, o.outputs[0].text
