"""AlpacaEval judging through the ``alpaca_eval`` package: win rate and length-controlled win rate.

Two kinds of judge, both from the eval recipe's ``judge:`` block:
- a GPT-4 annotator alpaca_eval ships (``annotators_config: weighted_alpaca_eval_gpt4_turbo``,
  the AlpacaEval 2.0 default; ``alpaca_eval_gpt4`` is the 1.0 one), reached with the
  OpenAI key in the environment variable ``api_key_env``;
- any OpenAI-compatible endpoint (Llama-3-70B-Instruct behind ``vllm serve``): ``base_url``
  + ``model``. The shipped annotator named by ``annotators_config`` is copied into the work
  folder with that model name, and a client config holding only ``base_url`` is written
  beside it; the client reads the key from the environment.

The API key is never written anywhere: it reaches the annotator only through the environment
of the ``alpaca_eval`` subprocess. A subprocess is used because alpaca_eval reads
``OPENAI_API_BASE`` / ``OPENAI_CLIENT_CONFIG_PATH`` / keys at import time.

Length-controlled win rate needs data from the ``tatsu-lab/alpaca_eval`` hub dataset; when it
cannot be had (offline) ``lc_win_rate`` is ``null`` and ``lc_win_rate_error`` says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ..io import write_text

DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
REFERENCE_HUB = ("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json")  # GPT-4 Turbo reference outputs


def _shipped_configs_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("alpaca_eval")
    if spec is None:
        raise ImportError("alpaca_eval is not installed: pip install -e '.[eval]' (alpaca-eval==0.6.6)")
    return Path(spec.origin).parent / "evaluators_configs"


def prepare_judge(judge: dict, work_dir: Path) -> tuple[str, dict, dict]:
    """Resolve the recipe's ``judge`` block: (annotators_config for alpaca_eval, extra env, description)."""
    name = judge.get("annotators_config", DEFAULT_ANNOTATOR)
    key_env = judge.get("api_key_env", "OPENAI_API_KEY")
    env = {"OPENAI_MAX_CONCURRENCY": str(judge.get("max_concurrency", 5))}
    description = {"label": judge.get("label", name), "annotators_config": name, "model": judge.get("model"),
                   "base_url": judge.get("base_url"), "api_key_env": key_env}
    key = os.environ.get(key_env)
    # The shipped annotator is copied into the work folder (prompt template by absolute path), so
    # alpaca_eval's annotation cache lands there and not in site-packages.
    shipped = _shipped_configs_dir() / name / "configs.yaml"
    if not shipped.is_file():
        raise FileNotFoundError(f"judge.annotators_config: {name!r} is not an annotator alpaca_eval ships "
                                f"(looked for {shipped})")
    (inner,) = yaml.safe_load(shipped.read_text()).values()
    inner["prompt_template"] = str(_shipped_configs_dir() / inner["prompt_template"])
    local = f"{name}__{judge.get('label', 'judge')}"
    if judge.get("base_url"):
        if not judge.get("model"):
            raise ValueError("judge.model: the model name served at judge.base_url is required")
        inner["completions_kwargs"]["model_name"] = judge["model"]
        inner["completions_kwargs"].setdefault("requires_chatml", True)  # send chat messages, not raw ChatML
        # Only the endpoint goes into the client config; the OpenAI client reads OPENAI_API_KEY itself.
        (work_dir / "client_config.yaml").write_text(yaml.safe_dump({"default": [{"base_url": judge["base_url"]}]}))
        env["OPENAI_CLIENT_CONFIG_PATH"] = str(work_dir / "client_config.yaml")
        env["OPENAI_API_KEY"] = key or "EMPTY"  # vLLM started without --api-key accepts any key
    else:
        if not key:
            raise RuntimeError(f"judge: annotator {name!r} calls the OpenAI API; set the key in the environment "
                               f"variable {key_env} (it is never written to disk)")
        if judge.get("model"):
            inner["completions_kwargs"]["model_name"] = judge["model"]
        env["OPENAI_API_KEY"] = key
        # a file that does not exist: the client then takes the key from the environment
        env["OPENAI_CLIENT_CONFIG_PATH"] = str(work_dir / "no_client_config.yaml")
    description["model"] = inner["completions_kwargs"].get("model_name")
    cfg_dir = work_dir / "annotator" / local
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "configs.yaml").write_text(yaml.safe_dump({local: inner}, sort_keys=False))
    annotators_config = str(cfg_dir / "configs.yaml")
    return annotators_config, env, description


def resolve_reference(reference: str | None) -> str:
    """Local reference outputs, or AlpacaEval 2.0's GPT-4 Turbo outputs from the hub."""
    if reference:
        if not Path(reference).is_file():
            raise FileNotFoundError(f"judge.reference_outputs: {reference} does not exist")
        return str(reference)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(REFERENCE_HUB[0], REFERENCE_HUB[1], repo_type="dataset")
    except Exception as exc:
        raise RuntimeError(f"judge.reference_outputs: not set, and AlpacaEval's reference outputs could not be "
                           f"loaded from the hub ({type(exc).__name__}). Offline, give a local json file.") from exc


def annotate(model_outputs: str | Path, reference_outputs: str, judge: dict, work_dir: str | Path, *,
             name: str, timeout: float | None = None) -> dict:
    """Run alpaca_eval's pairwise annotator; return win rates, counts, price and the annotations path."""
    work_dir = Path(work_dir).resolve()  # alpaca_eval resolves relative config paths against its own folder
    work_dir.mkdir(parents=True, exist_ok=True)
    annotators_config, env_extra, description = prepare_judge(judge, work_dir)
    out_json = work_dir / "alpaca_eval_metrics.json"
    out_json.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_BASE", "OPENAI_API_KEYS")}
    env.update(env_extra)
    job = {"model_outputs": str(model_outputs), "reference_outputs": reference_outputs,
           "annotators_config": annotators_config, "output_path": str(work_dir), "name": name,
           "metrics_json": str(out_json)}
    cmd = [sys.executable, "-c", "import sys, json; from aot_handbook.evaluation.alpaca import worker; "
                                 "worker(**json.loads(sys.argv[1]))", json.dumps(job)]
    proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0 or not out_json.is_file():
        raise RuntimeError(f"alpaca_eval failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    metrics = json.loads(out_json.read_text())
    metrics["judge"] = description
    return metrics


def worker(*, model_outputs: str, reference_outputs: str, annotators_config: str, output_path: str, name: str,
           metrics_json: str) -> None:
    """Inside the subprocess (``annotate``): alpaca_eval.evaluate, then the win rates from its annotations."""
    import pandas as pd
    from alpaca_eval import main as ae
    from alpaca_eval.metrics import get_length_controlled_winrate, get_winrate

    # Loaded here, not by alpaca_eval: pandas.read_json would turn outputs such as "85" into ints.
    model_outputs = json.loads(Path(model_outputs).read_text())
    reference_outputs = json.loads(Path(reference_outputs).read_text())
    _, annotations = ae.evaluate(
        model_outputs=model_outputs, reference_outputs=reference_outputs,
        annotators_config=annotators_config, name=name, output_path=output_path,
        precomputed_leaderboard=None, is_return_instead_of_print=True, fn_metric="get_winrate",
        sort_by="win_rate", is_cache_leaderboard=False)
    df = pd.DataFrame(annotations)
    wr = get_winrate(df)
    out = {"win_rate": float(wr["win_rate"]), "standard_error": float(wr["standard_error"]),
           "n_wins": int(wr["n_wins"]), "n_draws": int(wr["n_draws"]), "n_total": int(wr["n_total"]),
           "discrete_win_rate": float(wr["discrete_win_rate"]),
           "avg_length": float(df["output_2"].astype(str).str.len().mean()),
           "lc_win_rate": None, "lc_win_rate_error": None,
           "annotations": str(Path(output_path) / "annotations.json")}
    if "price_per_example" in df:
        out["price_usd"] = float(pd.to_numeric(df["price_per_example"], errors="coerce").fillna(0).sum())
    try:
        lc = get_length_controlled_winrate(df.copy(), save_weights_dir=Path(output_path) / "lc_weights")
        out["lc_win_rate"] = float(lc["length_controlled_winrate"])
    except Exception as exc:  # needs hub data; offline this is where it stops
        out["lc_win_rate_error"] = (f"length-controlled win rate unavailable ({type(exc).__name__}: "
                                    f"{str(exc)[:300]}); it needs the tatsu-lab/alpaca_eval hub dataset")
    Path(output_path, "annotations.json").write_text(json.dumps(annotations, indent=1, default=str))
    write_text(metrics_json, json.dumps(out, indent=2))
