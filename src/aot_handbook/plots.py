"""Quantile plots of the paper's Fig. 1: what first-order stochastic dominance looks like.

- :func:`quantile_plot` one panel, Q_U and Q_V per label (used by ``training.py`` at the end of training);
- :func:`figure1` the paper's Fig. 1a (chosen vs rejected reward quantiles) and Fig. 1b (policy vs
  reference chosen-minus-rejected margin quantiles) for one or several runs on a held-out paired
  set (``make plot RUN=...``). The plotted quantiles are also written as JSON beside each PNG;
- :func:`draw_grid` a grid of mean ± std panels over sweeps (the paper's Fig. 2).

Plots only draw: the numbers come from :mod:`aot_handbook.heldout` (``run_statistics``) and the results.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .diagnostics import fsd_diagnostics, quantile_curves  # noqa: E402
from .io import atomic_path, write_text  # noqa: E402


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


def draw_grid(data: dict, path: str | Path, *, ylabels: dict[str, str], xlabels: dict[str, str], series: str,
              log2_x: set[str] = frozenset(), title: str) -> Path:
    """A grid of panels, one column per ``data`` key (a sweep) and one row per metric of ``ylabels``:
    ``data[column][metric][variant] = {"x": labels, "mean": [...], "std": [...]}``; each variant is a series
    (``series.format(variant)``), error bars of one std. A column in ``log2_x`` has numeric x on a log2 axis,
    the others are grouped bars. Writes the PNG and ``data`` as JSON beside it (same name, ``.json``)."""
    fig, axes = plt.subplots(len(ylabels), len(data), figsize=(10, 7), dpi=120, squeeze=False)
    for col, (name, by_metric) in enumerate(data.items()):
        for row_i, (key, ylabel) in enumerate(ylabels.items()):
            ax = axes[row_i][col]
            for k, (variant, d) in enumerate(by_metric[key].items()):
                xs, mean, std = d["x"], d["mean"], d["std"]
                if not xs:
                    continue
                if name in log2_x:
                    ax.errorbar([int(x) for x in xs], mean, yerr=std, marker="o", capsize=3,
                                label=series.format(variant))
                    ax.set_xscale("log", base=2)
                    ax.set_xticks([int(x) for x in xs], xs)
                else:
                    pos = [i + (k - 0.5) * 0.4 for i in range(len(xs))]
                    ax.bar(pos, mean, width=0.4, yerr=std, capsize=3, label=series.format(variant))
                    ax.set_xticks(range(len(xs)), [x.replace("_", " ") for x in xs], fontsize=8)
            ax.set_xlabel(xlabels[name])
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out = _save(fig, path)
    write_text(out.with_suffix(".json"), json.dumps(data, indent=1))
    return out
