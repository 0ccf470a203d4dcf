"""On-policy preference data: sample k answers per prompt from a model, score them, write training data.

    aot-pairs recipes/tiny/pairs.yaml [--key value ...]      (make pairs RECIPE=...)

A pairs recipe (keys: ``PairsConfig``) names the model (a folder, a hub id, or a run folder, LoRA adapters
included), a prompt file, the sampling settings and a scorer (``aot_handbook.scorers``). The output folder
``output_dir`` holds:

    samples.jsonl     one line per prompt: its k completions and their scores, appended batch by batch
    paired.jsonl      prompt, chosen, rejected (+ their scores): best vs worst, or every pair above a margin
    unpaired.jsonl    prompt, completion, label (+ score): label = score > threshold, or > the prompt's median
    provenance.json   model, scorer, sampling settings, seed, prompt file hash, counts, versions; written last

Both data files are in the formats the training recipes read (``aot_handbook.data``). A killed run resumes
from samples.jsonl: batches are fixed chunks of the prompt file, each sampled with its own seed, and only
whole batches are kept, so a resumed run writes the same rows as an uninterrupted one. With ``rounds: N`` and
a ``train_recipe``, the recipe alternates this stage and training N times, each round sampling from the
policy the previous round trained (iterative / online DPO-style rounds).
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from .evaluation.common import package_versions, utc_now
from .io import write_json, write_jsonl
from .recipe import check_types
from .scorers import SCORERS, build_scorer

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
    tiny_assets: str | None = None  # build the offline tiny assets here first
    requires: list | None = None  # training recipes whose runs must exist first (trained if missing), e.g. the SFT
    rounds: int = 0  # > 0: alternate this stage and train_recipe that many times
    train_recipe: str | None = None
    train_overrides: list | None = None  # extra --key value overrides for every round's training
    round_data: str = "paired"  # which file each round trains on: paired or unpaired


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
    """Recipe + overrides -> a checked PairsConfig; errors name the key and the file. Nothing is loaded."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe file not found: {path}")
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a pairs recipe must be a YAML mapping of keys to values")
    known = {f.name for f in dataclasses.fields(PairsConfig)}
    given = _parse_overrides(list(overrides or []), path)
    for where, keys in (("key(s)", raw), ("command-line override(s)", given)):
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ValueError(f"{path}: unknown {where} {unknown} (known: {sorted(known)})")
    merged = {**raw, **given}
    check_types([PairsConfig], merged, path)
    cfg = PairsConfig(**merged)

    def bad(key, why):
        return ValueError(f"{path}: key '{key}' {why}")

    for key in ("model", "prompts", "output_dir", "scorer"):
        if not getattr(cfg, key):
            raise bad(key, "is required")
    if cfg.scorer not in SCORERS:
        raise bad("scorer", f"names an unknown scorer {cfg.scorer!r}; expected one of {list(SCORERS)}")
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
    from .evaluation.common import RunInfo
    from .scorers import _looks_local

    if _looks_local(name) and not Path(name).expanduser().is_dir():
        raise FileNotFoundError(f"key 'model': no such folder: {name}")
    run = RunInfo.from_path(name)
    return run.model, run.adapter


class HFSampler:
    """k samples per prompt with ``model.generate`` (left-padded batches, the model's chat template)."""

    backend = "hf"

    def __init__(self, model: str, adapter: str | None, dtype: str):
        from .evaluation.generation import load_model_and_tokenizer

        self.lm, self.tokenizer = load_model_and_tokenizer(model, adapter, dtype=dtype)

    @torch.no_grad()
    def sample(self, prompts: list[str], *, k: int, temperature: float, top_p: float, max_new_tokens: int,
               seed: int) -> list[list[str]]:
        from .evaluation.generation import build_prompt_ids, hf_generate

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

        from .evaluation.generation import build_prompt_ids, vllm_inputs

        tokenizer = self.llm.get_tokenizer()
        inputs, params = vllm_inputs(tokenizer, build_prompt_ids(tokenizer, prompts), max_new_tokens=max_new_tokens,
                                     do_sample=True, temperature=temperature, top_p=top_p)
        lora = LoRARequest("adapter", 1, self.adapter) if self.adapter else None
        outs = self.llm.generate(inputs, SamplingParams(n=k, seed=seed, **params), lora_request=lora)
        return [[o.text for o in out.outputs] for out in outs]


def build_sampler(cfg: PairsConfig, model: str, adapter: str | None):
    from .evaluation.generation import _vllm_available

    use_vllm = cfg.backend == "vllm" or (cfg.backend == "auto" and _vllm_available())
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


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def build_pairs(cfg: PairsConfig, *, recipe_path: str | None = None, overrides: list[str] | None = None) -> Path:
    """The data stage: check everything, sample and score the prompts not done yet, write the data files."""
    if cfg.tiny_assets:
        from .tiny import ensure_tiny_assets

        ensure_tiny_assets(cfg.tiny_assets)
    prompts = load_prompts(cfg)  # bad file or column: fails here, before any model loads
    model, adapter = resolve_model(cfg.model)
    scorer = build_scorer(cfg)  # unknown scorer, missing reward model, unset key variable: fails before sampling
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = sampling_settings(cfg, _sha256(cfg.prompts))
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


def _as_model_folder(run: Path) -> Path:
    """A run folder the next round can load as a plain model: a LoRA run is merged into ``<run>/merged``."""
    if not (run / "adapter_config.json").is_file():
        return run
    merged = run / "merged"
    if not (merged / "config.json").is_file():
        from .evaluation.common import RunInfo
        from .evaluation.generation import load_model_and_tokenizer

        info = RunInfo.from_path(run)
        lm, tokenizer = load_model_and_tokenizer(info.model, info.adapter, dtype="float32")
        tmp = run / ".merged.tmp"
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(merged)
    return merged


def run_rounds(cfg: PairsConfig, *, recipe_path: str | None = None, overrides: list[str] | None = None) -> list[dict]:
    """``rounds`` x (data stage from the current policy -> train_recipe on that data); the trained policy is
    the next round's sampler and reference. Each piece resumes or is skipped when complete."""
    from .recipe import parse_recipe
    from .run import is_complete, recipe_errors, train

    with recipe_errors():
        parse_recipe(cfg.train_recipe, [str(x) for x in cfg.train_overrides or []])  # check it before round 1
    root, model, results = Path(cfg.output_dir), cfg.model, []
    for r in range(1, cfg.rounds + 1):
        data = build_pairs(dataclasses.replace(cfg, model=model, output_dir=str(root / f"round{r}" / "data"),
                                               seed=cfg.seed + r - 1), recipe_path=recipe_path, overrides=overrides)
        policy = root / f"round{r}" / "policy"
        if not is_complete(policy):
            mixture = {"datasets": [{"data_files": {"train": str(data / f"{cfg.round_data}.jsonl")},
                                     "test_split": None}]}
            train(cfg.train_recipe, [*(str(x) for x in cfg.train_overrides or []), "--model_name_or_path", model,
                                     "--dataset_mixture", json.dumps(mixture), "--output_dir", str(policy)])
        metrics = json.loads((policy / "metrics.json").read_text())
        provenance = json.loads((data / "provenance.json").read_text())
        results.append({"round": r, "sampled_from": model, "data": str(data), "policy": str(policy),
                        "counts": provenance["counts"], "task_accuracy": metrics.get("task_accuracy")})
        model = str(_as_model_folder(policy))
    write_json(root / "rounds.json", results)
    for res in results:
        acc = (res["task_accuracy"] or {}).get("aligned", {}).get("accuracy")
        print(f"[aot-handbook] round {res['round']}: {res['counts']}"
              + (f", held-out task accuracy after training {acc:.3f}" if acc is not None else ""))
    return results


def pairs_output(recipe_path: str) -> Path | None:
    """The output folder of a ``make pairs`` recipe (None: not a pairs recipe), for a training recipe that
    ``requires`` it: the data is built first when ``provenance.json`` (written last) is missing there."""
    from .validate import kind_of

    if kind_of(recipe_path) != "pairs":
        return None
    return Path(parse_pairs_recipe(recipe_path).output_dir)


def main(recipe_path: str, overrides: list[str] | None = None):
    cfg = parse_pairs_recipe(recipe_path, overrides)
    if cfg.requires:
        if cfg.tiny_assets:
            from .tiny import ensure_tiny_assets

            ensure_tiny_assets(cfg.tiny_assets)
        load_prompts(cfg)  # a bad prompt file fails before the required runs are trained
        from .recipe import parse_recipe
        from .run import is_complete, recipe_errors, train

        for required in cfg.requires:
            with recipe_errors():
                needed = parse_recipe(str(required))
            if not is_complete(needed.training.output_dir):
                print(f"[aot-handbook] {recipe_path} requires {required}: training it first")
                train(str(required))
    if cfg.rounds:
        return run_rounds(cfg, recipe_path=recipe_path, overrides=overrides)
    return build_pairs(cfg, recipe_path=recipe_path, overrides=overrides)
