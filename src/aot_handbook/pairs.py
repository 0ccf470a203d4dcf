"""The data stage: sample k answers per prompt from a model, score them, write one preference dataset.

    aot-pairs recipes/tiny/sft.pairs.yaml [--key value ...]      (make pairs RECIPE=...)

A pairs recipe (``*.pairs.yaml``; keys: ``PairsConfig``) names the model (a folder, a hub id, or a run folder,
LoRA adapters included), a prompt file, the sampling settings and a scorer (``aot_handbook.scorers``). The output
folder ``output_dir`` holds:

    samples.jsonl     one line per prompt: its k completions and their scores, appended batch by batch
    paired.jsonl      prompt, chosen, rejected (+ their scores): best vs worst, or every pair above a margin
    unpaired.jsonl    prompt, completion, label (+ score): label = score > threshold, or > the prompt's median
    provenance.json   model, scorer, sampling settings, seed, prompt file hash, counts, versions; written last

Both data files are in the formats the training recipes read (``aot_handbook.data``). A killed run resumes
from samples.jsonl: batches are fixed chunks of the prompt file, each sampled with its own seed, and only
whole batches are kept, so a resumed run writes the same rows as an uninterrupted one.

:func:`build` builds exactly one dataset. What must exist first (the ``requires`` runs) and iterative rounds
(``rounds: N`` with a ``train_recipe``: this stage and training alternated N times, each round sampling from the
policy the previous round trained) are planned and run by ``aot_handbook.plan``, which ``aot-pairs`` calls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from .data import BUILDERS
from .errors import UserError
from .io import write_json, write_jsonl
from .model_utils import looks_local
from .provenance import package_versions, sha256, utc_now
from .recipe import check_types, read_recipe
from .run_folder import RunInfo
from .runlock import main_process_lock
from .scorers import build_scorer, scorer_names
from .tasks import asset_keys, task_of

logger = logging.getLogger(__name__)
PAIR_MODES = ("best_worst", "margin", "none")


@dataclass
class PairsConfig:
    """Every key of a pairs recipe (all can be overridden with ``--key value``)."""

    model: str = ""  # model folder, hub id, or run folder (a LoRA run is sampled as base + adapter)
    prompts: str = ""  # .json/.jsonl/.parquet/.csv file of prompts
    prompt_column: str = "prompt"
    limit: int | None = None  # the first N prompts only
    output_dir: str = ""
    num_samples: int = 4  # k completions per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 16  # prompts per sampling batch (k rows each); also the reward model's batch
    seed: int = 0
    backend: str = "auto"  # auto (vLLM when importable on a GPU), hf, vllm
    dtype: str = "auto"
    scorer: str = ""  # one of scorers.SCORERS
    reward_model: str | None = None  # scorer reward_model: a local folder or a hub id
    judge_base_url: str | None = None  # scorer openai_judge: e.g. http://127.0.0.1:8000/v1
    judge_model: str | None = None
    judge_api_key_env: str | None = None  # the NAME of the variable holding the key
    judge_template: str | None = None  # default: scorers.JUDGE_TEMPLATE
    judge_concurrency: int = 8
    pairs: str = "best_worst"  # best_worst, margin (every pair whose scores differ by more than pair_margin), none
    pair_margin: float = 0.0
    label_threshold: float | str | None = "median"  # a number, "median" (the prompt's own), or null (no unpaired file)
    requires: list | None = None  # training recipes whose runs must exist first (trained if missing), e.g. the SFT
    rounds: int = 0  # > 0: alternate this stage and train_recipe that many times
    train_recipe: str | None = None
    train_overrides: list | None = None  # extra --key value overrides for every round's training
    round_data: str = "paired"  # which file each round trains on: paired or unpaired
    # not a key of its own: each registered task's assets key (aot_handbook.tasks) -> the folder its assets are
    # built in first (e.g. the task's prompt file lives there)
    assets: dict = dataclasses.field(default_factory=dict)


def _parse_overrides(tokens: list[str], path: str) -> dict:
    """``--key value`` / ``--key=value``; values read as YAML scalars (null, numbers, lists)."""
    out, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ValueError(f"{path}: override {token!r} is not of the form --key value")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise ValueError(f"{path}: override --{key} has no value")
            value, i = tokens[i + 1], i + 1
        out[key], i = yaml.safe_load(value), i + 1
    return out


def parse_pairs_recipe(path: str, overrides: list[str] | None = None) -> PairsConfig:
    """Recipe + overrides -> a checked PairsConfig; errors name the key and the file. Nothing is loaded.
    Besides ``PairsConfig``'s keys, a recipe may set a registered task's assets key (``aot_handbook.tasks``)."""
    raw = read_recipe(path, "pairs")
    tasks_keys = asset_keys()
    known = {f.name for f in dataclasses.fields(PairsConfig) if f.name != "assets"} | tasks_keys
    given = _parse_overrides(list(overrides or []), path)
    for where, keys in (("key(s)", raw), ("command-line override(s)", given)):
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ValueError(f"{path}: unknown {where} {unknown} (known: {sorted(known)})")
    merged = {**raw, **given}
    assets = {k: merged.pop(k) for k in sorted(tasks_keys & set(merged))}
    for key, value in assets.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path}: key {key!r} expects a folder (str), got {value!r} ({type(value).__name__})")
    check_types([PairsConfig], merged, path)
    cfg = PairsConfig(**merged, assets=assets)

    def bad(key, why):
        return ValueError(f"{path}: key '{key}' {why}")

    for key in ("model", "prompts", "output_dir", "scorer"):
        if not getattr(cfg, key):
            raise bad(key, "is required")
    if cfg.scorer not in scorer_names():
        raise bad("scorer", f"names an unknown scorer {cfg.scorer!r}; expected one of {scorer_names()}")
    if cfg.pairs not in PAIR_MODES:
        raise bad("pairs", f"must be one of {list(PAIR_MODES)}, got {cfg.pairs!r}")
    if cfg.num_samples < 1 or (cfg.num_samples < 2 and (cfg.pairs != "none" or cfg.label_threshold == "median")):
        why = "paired output (pairs: none turns it off)" if cfg.pairs != "none" else "labels at the prompt's median"
        raise bad("num_samples", f"must be >= 2 for {why}, got {cfg.num_samples}")
    if isinstance(cfg.label_threshold, str) and cfg.label_threshold != "median":
        raise bad("label_threshold", f"must be a number, \"median\" or null, got {cfg.label_threshold!r}")
    if cfg.pairs == "none" and cfg.label_threshold is None:
        raise bad("pairs", "is none and label_threshold is null: nothing would be written")
    if not cfg.temperature > 0:
        raise bad("temperature", f"must be > 0 (this stage samples), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise bad("top_p", f"must be in (0, 1], got {cfg.top_p}")
    for key in ("max_new_tokens", "batch_size", "judge_concurrency"):
        if getattr(cfg, key) < 1:
            raise bad(key, f"must be >= 1, got {getattr(cfg, key)}")
    if cfg.limit is not None and cfg.limit < 1:
        raise bad("limit", f"must be >= 1 or null, got {cfg.limit}")
    if cfg.pair_margin < 0:
        raise bad("pair_margin", f"must be >= 0, got {cfg.pair_margin}")
    if cfg.backend not in ("auto", "hf", "vllm"):
        raise bad("backend", f"must be auto, hf or vllm, got {cfg.backend!r}")
    if cfg.rounds < 0 or (cfg.rounds and not cfg.train_recipe):
        raise bad("rounds", "must be >= 0, and rounds > 0 needs key 'train_recipe'")
    if cfg.train_recipe and not os.path.isfile(cfg.train_recipe):
        raise bad("train_recipe", f"names no file: {cfg.train_recipe}")
    if cfg.round_data not in ("paired", "unpaired") or (cfg.rounds and cfg.round_data == "paired"
                                                         and cfg.pairs == "none"):
        raise bad("round_data", f"must be paired or unpaired (and that file must be written), got {cfg.round_data!r}")
    return cfg


# ---------------------------------------------------------------- prompts and model


def load_prompts(cfg: PairsConfig) -> list[str]:
    """The prompt column of the prompt file (first ``limit`` rows), checked before any sampling."""
    import datasets

    path = Path(cfg.prompts)
    if not path.is_file():
        raise FileNotFoundError(f"key 'prompts': no such file: {cfg.prompts}")
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"key 'prompts': unknown file extension of {cfg.prompts} ({sorted(BUILDERS)})")
    ds = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train")
    if cfg.prompt_column not in ds.column_names:
        raise ValueError(f"{cfg.prompts}: column '{cfg.prompt_column}' (key 'prompt_column') not found; "
                         f"columns present: {sorted(ds.column_names)}")
    prompts = ds[cfg.prompt_column][:cfg.limit] if cfg.limit else ds[cfg.prompt_column]
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()), None)
    if bad is not None:
        raise ValueError(f"{cfg.prompts}: column '{cfg.prompt_column}' row {bad} is not a non-empty string: "
                         f"{prompts[bad]!r}")
    return prompts


def resolve_model(name: str) -> tuple[str, str | None]:
    """(model, adapter) to load: a run folder with a LoRA adapter is its base model plus the adapter."""
    if looks_local(name) and not Path(name).expanduser().is_dir():
        raise FileNotFoundError(f"key 'model': no such folder: {name}")
    run = RunInfo.from_path(name)
    return run.model, run.adapter


class HFSampler:
    """k samples per prompt with ``model.generate`` (left-padded batches, the model's chat template)."""

    backend = "hf"

    def __init__(self, model: str, adapter: str | None, dtype: str):
        from .generation import load_model_and_tokenizer

        self.lm, self.tokenizer = load_model_and_tokenizer(model, adapter, dtype=dtype)

    @torch.no_grad()
    def sample(self, prompts: list[str], *, k: int, temperature: float, top_p: float, max_new_tokens: int,
               seed: int) -> list[list[str]]:
        from .generation import build_prompt_ids, hf_generate

        # the prompt ids evaluation builds too (chat template, no second BOS); stops at the end-of-turn token
        prompt_ids = build_prompt_ids(self.tokenizer, prompts)
        with torch.random.fork_rng(devices=[self.lm.device] if self.lm.device.type == "cuda" else []):
            torch.manual_seed(seed)
            # top_k=0: temperature and top-p only (transformers' default would add top-k 50)
            texts = hf_generate(self.lm, self.tokenizer, prompt_ids, do_sample=True, temperature=temperature,
                                top_p=top_p, top_k=0, num_return_sequences=k, max_new_tokens=max_new_tokens)
        return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]


class VLLMSampler:
    """The same with vLLM (GPU machines with vllm installed; ``n=k`` samples per prompt). Untested offline."""

    backend = "vllm"

    def __init__(self, model: str, adapter: str | None, dtype: str):
        from vllm import LLM

        self.llm = LLM(model=model, tokenizer=adapter or model, dtype=dtype, enable_lora=bool(adapter))
        self.adapter = adapter

    def sample(self, prompts, *, k, temperature, top_p, max_new_tokens, seed):
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        from .generation import build_prompt_ids, vllm_inputs

        tokenizer = self.llm.get_tokenizer()
        inputs, params = vllm_inputs(tokenizer, build_prompt_ids(tokenizer, prompts), max_new_tokens=max_new_tokens,
                                     do_sample=True, temperature=temperature, top_p=top_p)
        lora = LoRARequest("adapter", 1, self.adapter) if self.adapter else None
        outs = self.llm.generate(inputs, SamplingParams(n=k, seed=seed, **params), lora_request=lora)
        return [[o.text for o in out.outputs] for out in outs]


def build_sampler(cfg: PairsConfig, model: str, adapter: str | None):
    from .generation import vllm_available

    use_vllm = cfg.backend == "vllm" or (cfg.backend == "auto" and vllm_available())
    return (VLLMSampler if use_vllm else HFSampler)(model, adapter, cfg.dtype)


# ---------------------------------------------------------------- from scored samples to training data


def _finite(row: dict) -> list[tuple[str, float]]:
    return [(c, s) for c, s in zip(row["completions"], row["scores"]) if s is not None and math.isfinite(s)]


def make_pairs(rows: list[dict], mode: str = "best_worst", margin: float = 0.0) -> list[dict]:
    """best_worst: the best against the worst answer of each prompt (first of equals), if their scores differ
    by more than ``margin``. margin: every pair of distinct answers whose scores differ by more than it."""
    out = []
    for row in rows:
        scored = _finite(row)
        if mode == "best_worst" and scored:
            candidates = [(max(scored, key=lambda x: x[1]), min(scored, key=lambda x: x[1]))]
        elif mode == "margin":
            first: dict[str, float] = {}
            for text, s in scored:  # one entry per distinct text (its first score): no duplicated pairs
                first.setdefault(text, s)
            candidates = [(a, b) for a in first.items() for b in first.items()]
        else:
            candidates = []
        for (chosen, cs), (rejected, rs) in candidates:
            if cs - rs > margin:
                out.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
                            "chosen_score": cs, "rejected_score": rs})
    return out


def make_unpaired(rows: list[dict], threshold: float | str = "median") -> list[dict]:
    """One row per sampled answer, label = score > threshold; "median": above its own prompt's median
    (prompts whose answers all score the same carry no label information and are left out)."""
    out = []
    for row in rows:
        scored = _finite(row)
        if not scored:
            continue
        cut = statistics.median(s for _, s in scored) if threshold == "median" else float(threshold)
        if threshold == "median" and len({s for _, s in scored}) < 2:
            continue
        out += [{"prompt": row["prompt"], "completion": c, "label": s > cut, "score": s} for c, s in scored]
    return out


# ---------------------------------------------------------------- the stage, resumable


def _read_done(samples: Path, n: int, batch_size: int) -> dict[int, dict]:
    """Rows of whole batches from samples.jsonl; a torn last line or a half-written batch is dropped
    (and the file rewritten without it), so the resumed run redoes exactly those batches."""
    if not samples.is_file():
        return {}
    rows, lines = {}, samples.read_text().splitlines(keepends=True)
    for line in lines:
        if not line.endswith("\n"):
            break  # killed mid-write
        row = json.loads(line)
        rows[row["index"]] = row
    whole = {b for b in range(0, n, batch_size) if all(i in rows for i in range(b, min(b + batch_size, n)))}
    kept = {i: r for i, r in rows.items() if i - i % batch_size in whole}
    if len(kept) != len(lines):
        write_jsonl(samples, [kept[i] for i in sorted(kept)])
        logger.warning("%s: dropped %d row(s) of an unfinished batch; resuming", samples, len(lines) - len(kept))
    return kept


def sampling_settings(cfg: PairsConfig, prompts_sha: str) -> dict:
    """What the samples depend on: a resumed run must match it (else it would mix two datasets)."""
    keys = ("model", "prompts", "prompt_column", "limit", "num_samples", "temperature", "top_p", "max_new_tokens",
            "batch_size", "seed", "scorer", "reward_model", "judge_base_url", "judge_model", "judge_template")
    return {**{k: getattr(cfg, k) for k in keys}, "prompts_sha256": prompts_sha}


def ensure_assets(cfg: PairsConfig) -> None:
    """Build the assets of the task whose assets key the recipe sets (its prompt file may be one of them)."""
    task = task_of(cfg.assets)
    if task is not None:
        task.ensure_assets(task.assets_root(cfg.assets))


def check_inputs(cfg: PairsConfig, pending: tuple[Path, ...] = ()) -> None:
    """Before any stage runs (``aot_handbook.plan``): the prompt file and the model exist, unless they lie in a
    folder built first (``pending``: a task's assets, the output of an earlier stage); the prompt file's column is
    there. Loads no model."""
    task = task_of(cfg.assets)
    pending = (*pending, *(task.asset_folders(cfg.assets) if task is not None else []))
    later = lambda name: any(p in Path(name).resolve().parents or p == Path(name).resolve()  # noqa: E731
                             for p in (Path(q).resolve() for q in pending))
    if not later(cfg.prompts):
        load_prompts(cfg)
    if not later(cfg.model) and looks_local(cfg.model) and not Path(cfg.model).expanduser().is_dir():
        raise FileNotFoundError(f"key 'model': no such folder: {cfg.model}")


def build(recipe_path: str, overrides: list[str] | None = None) -> Path:
    """The data stage of one pairs recipe: its task's assets, then ``build_pairs``. Its ``requires`` must exist
    already; a recipe with ``rounds`` is run by ``aot_handbook.plan`` (``aot-pairs``)."""
    cfg = parse_pairs_recipe(recipe_path, overrides)
    if cfg.rounds:
        raise UserError(f"{recipe_path}: rounds: {cfg.rounds} alternates this stage with training; run it with "
                        "aot-pairs (aot_handbook.plan.make)")
    return build_pairs(cfg, recipe_path=recipe_path, overrides=overrides)


def build_pairs(cfg: PairsConfig, *, recipe_path: str | None = None, overrides: list[str] | None = None) -> Path:
    """The data stage: check everything, sample and score the prompts not done yet, write the data files. One
    process at a time writes ``output_dir``: a second one stops at once, naming the first."""
    with main_process_lock(cfg.output_dir, "data"):
        return _build_pairs(cfg, recipe_path=recipe_path, overrides=overrides)


def _build_pairs(cfg: PairsConfig, *, recipe_path: str | None, overrides: list[str] | None) -> Path:
    ensure_assets(cfg)
    prompts = load_prompts(cfg)  # bad file or column: fails here, before any model loads
    model, adapter = resolve_model(cfg.model)
    scorer = build_scorer(cfg)  # unknown scorer, missing reward model, unset key variable: fails before sampling
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = sampling_settings(cfg, sha256(cfg.prompts))
    settings_file, samples = out / "sampling.json", out / "samples.jsonl"
    if settings_file.is_file():
        before = json.loads(settings_file.read_text())
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise ValueError(f"output_dir {out} holds samples made with other settings (changed: {changed}); "
                             "use another output_dir or delete it")
    else:
        write_json(settings_file, settings)
    (out / "provenance.json").unlink(missing_ok=True)  # this folder is being (re)written
    done = _read_done(samples, len(prompts), cfg.batch_size)
    todo = [b for b in range(0, len(prompts), cfg.batch_size) if b not in {i - i % cfg.batch_size for i in done}]
    backend = None
    if todo:
        sampler = build_sampler(cfg, model, adapter)
        backend = sampler.backend
        with open(samples, "a") as f, tqdm(total=len(prompts), initial=len(done), desc="sample+score",
                                           unit="prompt") as bar:
            for start in todo:
                batch = prompts[start:start + cfg.batch_size]
                texts = sampler.sample(batch, k=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                       max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 1_000_003 + start)
                flat_p = [p for p, ts in zip(batch, texts) for _ in ts]
                scores = scorer.score(flat_p, [t for ts in texts for t in ts])
                lines, pos = [], 0
                for j, (p, ts) in enumerate(zip(batch, texts)):
                    row = {"index": start + j, "prompt": p, "completions": ts,
                           "scores": [s if math.isfinite(s) else None for s in scores[pos:pos + len(ts)]]}
                    pos += len(ts)
                    done[start + j] = row
                    lines.append(json.dumps(row) + "\n")
                f.write("".join(lines))  # one write per batch, then to disk: a kill loses at most this batch
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
    rows = [done[i] for i in range(len(prompts))]
    counts = {"prompts": len(rows), "samples": sum(len(r["completions"]) for r in rows),
              "unscored": sum(s is None for r in rows for s in r["scores"])}
    if cfg.pairs != "none":
        pairs = make_pairs(rows, cfg.pairs, cfg.pair_margin)
        write_jsonl(out / "paired.jsonl", pairs)
        counts["pairs"] = len(pairs)
    if cfg.label_threshold is not None:
        unpaired = make_unpaired(rows, cfg.label_threshold)
        write_jsonl(out / "unpaired.jsonl", unpaired)
        counts.update(unpaired=len(unpaired), positives=sum(r["label"] for r in unpaired))
    write_json(out / "provenance.json", {
        "model": cfg.model, "loaded": {"model": model, "adapter": adapter, "backend": backend or "(resumed: none)"},
        "scorer": scorer.describe(),
        "sampling": {k: getattr(cfg, k) for k in ("num_samples", "temperature", "top_p", "max_new_tokens",
                                                   "batch_size", "seed")},
        "prompts": {"file": cfg.prompts, "column": cfg.prompt_column, "limit": cfg.limit,
                    "sha256": settings["prompts_sha256"]},
        "output": {"pairs": cfg.pairs, "pair_margin": cfg.pair_margin, "label_threshold": cfg.label_threshold},
        "counts": counts, "recipe": recipe_path, "overrides": overrides or [],
        "packages": package_versions(), "date": utc_now(),
    })
    print(f"[aot-handbook] {out}: {counts}")
    return out


# ---------------------------------------------------------------- iterative rounds


