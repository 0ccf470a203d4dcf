"""Quantile plots of the paper's Fig. 1: what first-order stochastic dominance looks like.

- :func:`quantile_plot` one panel, Q_U and Q_V per label (used by ``run.py`` at the end of training);
- :func:`figure1` the paper's Fig. 1a (chosen vs rejected reward quantiles) and Fig. 1b (policy vs
  reference chosen-minus-rejected margin quantiles) for one or several runs on a held-out paired
  set (``make plot RUN=...``). The plotted quantiles are also written as JSON beside each PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .diagnostics import fsd_diagnostics, quantile_curves  # noqa: E402
from .io import atomic_path, read_jsonl, write_text  # noqa: E402


def draw_quantiles(curves: dict, *, title: str, xlabel: str = "quantile level t"):
    """Draw (not save) the panel; returns ``(fig, data)`` with data[label] = t, q_u, q_v, FSD violation share."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    data = {}
    for i, (label, (u, v, u_name, v_name)) in enumerate(curves.items()):
        c = quantile_curves(u, v)
        share = fsd_diagnostics(u, v)["fsd_violation_share"]
        color = f"C{i}"
        ax.step(c["t"], c["q_u"], where="pre", color=color, label=f"{label}: {u_name} (FSD violation {share:.2f})")
        ax.step(c["t"], c["q_v"], where="pre", color=color, linestyle="--", label=f"{label}: {v_name}")
        data[label] = {"u_name": u_name, "v_name": v_name, "t": c["t"].tolist(), "q_u": c["q_u"].tolist(),
                       "q_v": c["q_v"].tolist(), "fsd_violation_share": share}
    ax.set_xlabel(xlabel)
    ax.set_ylabel("quantile")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, data


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:  # never a truncated PNG under the final name
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def quantile_plot(curves: dict, path: str | Path, *, title: str, xlabel: str = "quantile level t") -> Path:
    """``curves``: label -> (u, v, u_name, v_name); one panel, Q_U and Q_V for each label.

    Each legend entry carries the FSD violation share of U over V, from ``fsd_diagnostics``.
    """
    fig, _ = draw_quantiles(curves, title=title, xlabel=xlabel)
    return _save(fig, path)


def figure1(stats: dict, out_dir: str | Path, *, prefix: str = "fig1") -> dict[str, Path]:
    """Fig. 1a and 1b for several runs: ``stats`` is label -> ``heldout.paired_statistics`` output."""
    out_dir = Path(out_dir)
    panels = {
        "a": ({k: (s["chosen_rewards"], s["rejected_rewards"], "chosen", "rejected") for k, s in stats.items()},
              "Fig. 1a: held-out rewards, chosen vs rejected"),
        "b": ({k: (s["policy_margins"], s["reference_margins"], "policy", "reference") for k, s in stats.items()},
              "Fig. 1b: held-out margins, policy vs reference"),
    }
    paths = {}
    for panel, (curves, title) in panels.items():
        fig, data = draw_quantiles(curves, title=title)
        paths[panel] = _save(fig, out_dir / f"{prefix}{panel}.png")
        write_text(out_dir / f"{prefix}{panel}.json", json.dumps(data, indent=1))
    return paths


def run_statistics(run_path: str, rows: list[dict], *, beta: float | None = None, batch_size: int = 64) -> dict:
    """``paired_statistics`` of a run folder against its reference: the adapters disabled for a LoRA
    run, else the model its recipe started from (``model_name_or_path``)."""
    from .evaluation.common import RunInfo
    from .evaluation.generation import load_model_and_tokenizer
    from .heldout import paired_statistics

    run = RunInfo.from_path(run_path)
    if run.method == "base":
        raise ValueError(f"{run_path}: not a run folder (no recipe.json); Fig. 1 compares a run with its reference")
    beta = beta if beta is not None else float(run.recipe.get("beta", 0.1))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if run.adapter:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run.model), run.adapter)
        reference = policy.disable_adapter
    else:
        policy = AutoModelForCausalLM.from_pretrained(run.model)
        reference = load_model_and_tokenizer(run.reference, None, dtype="float32")[0] if run.reference else None
        if reference is None:
            raise ValueError(f"{run_path}: recipe.json names no model_name_or_path to use as the reference")
    return paired_statistics(policy, reference, tokenizer, rows, beta=beta, batch_size=batch_size)


def heldout_rows(run_path: str, data: str | None = None, *, max_rows: int = 512) -> list[dict]:
    """Held-out paired rows (prompt, chosen, rejected): ``data`` (a .json/.jsonl file), else the tiny
    task's paired test split for tiny runs, else the test split of the run's recipe dataset mixture."""
    from .evaluation.common import RunInfo

    if data:
        rows = json.loads(Path(data).read_text()) if data.endswith(".json") else read_jsonl(data)
    else:
        run = RunInfo.from_path(run_path)
        if run.recipe.get("tiny_assets"):
            from .tiny import ensure_tiny_assets

            rows = read_jsonl(ensure_tiny_assets(run.recipe["tiny_assets"])["paired_test"])
        else:
            from .data import DatasetMixture, load_mixture

            mixture = load_mixture(DatasetMixture.from_dict(run.recipe["dataset_mixture"], source=run.recipe_path),
                                   target="paired")
            if "test" not in mixture:
                raise ValueError(f"{run_path}: the recipe's dataset_mixture has no test split; pass --data FILE")
            rows = [mixture["test"][i] for i in range(min(max_rows, len(mixture["test"])))]
    missing = {"prompt", "chosen", "rejected"} - set(rows[0]) if rows else {"rows"}
    if missing:
        raise ValueError(f"{data or run_path}: held-out data needs columns prompt, chosen, rejected; "
                         f"missing {sorted(missing)}")
    return rows[:max_rows]


def figure2(results: list[dict], path: str | Path) -> Path:
    """Paper Fig. 2 on the tiny task: AOT unpaired by batch size (left) and by penalty (right); win rate
    vs SFT (top) and the smallest chosen-over-rejected reward quantile gap (bottom), mean and std over
    seeds, with and without the NLL term. Cells are the ``tiny-batch`` / ``tiny-penalty`` tables' own."""
    import statistics

    from .tables import cell_values, tiny_table

    metrics = [("win rate vs SFT (%)", "tiny:win_rate_vs_sft"), ("min quantile gap, chosen - rejected rewards",
                                                                 "tiny:rewards_min_gap")]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=120)
    data = {}
    for col, name in enumerate(("tiny-batch", "tiny-penalty")):
        table = tiny_table(name)
        for row_i, (ylabel, key) in enumerate(metrics):
            ax = axes[row_i][col]
            for k, nll in enumerate(dict.fromkeys(r.labels[1] for r in table.rows)):
                rows = [r for r in table.rows if r.labels[1] == nll]
                values = [cell_values(results, r, key) for r in rows]
                xs = [r.labels[0] for r, v in zip(rows, values) if v]
                mean = [statistics.mean(v) for v in values if v]
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values if v]
                data.setdefault(name, {}).setdefault(key, {})[nll] = {"x": xs, "mean": mean, "std": std}
                if not xs:
                    continue
                if name == "tiny-batch":
                    ax.errorbar([int(x) for x in xs], mean, yerr=std, marker="o", capsize=3,
                                label=f"AOT unpaired {nll}")
                    ax.set_xscale("log", base=2)
                    ax.set_xticks([int(x) for x in xs], xs)
                else:
                    pos = [i + (k - 0.5) * 0.4 for i in range(len(xs))]
                    ax.bar(pos, mean, width=0.4, yerr=std, capsize=3, label=f"AOT unpaired {nll}")
                    ax.set_xticks(range(len(xs)), [x.replace("_", " ") for x in xs], fontsize=8)
            ax.set_xlabel("batch size (same number of samples)" if name == "tiny-batch" else "penalty")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Fig. 2 (tiny task): batch size and penalty, mean ± std over seeds")
    fig.tight_layout()
    out = _save(fig, path)
    write_text(out.with_suffix(".json"), json.dumps(data, indent=1))
    return out
