"""Quantile plots of the paper's Fig. 1: what first-order stochastic dominance looks like."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .diagnostics import fsd_diagnostics, quantile_curves  # noqa: E402


def quantile_plot(curves: dict, path: str | Path, *, title: str, xlabel: str = "quantile level t") -> Path:
    """``curves``: label -> (u, v, u_name, v_name); one panel, Q_U and Q_V for each label.

    Each legend entry carries the FSD violation share of U over V, from ``fsd_diagnostics``.
    """
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (label, (u, v, u_name, v_name)) in enumerate(curves.items()):
        c = quantile_curves(u, v)
        share = fsd_diagnostics(u, v)["fsd_violation_share"]
        color = f"C{i}"
        ax.step(c["t"], c["q_u"], where="pre", color=color, label=f"{label}: {u_name} (FSD violation {share:.2f})")
        ax.step(c["t"], c["q_v"], where="pre", color=color, linestyle="--", label=f"{label}: {v_name}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("quantile")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)  # never a truncated PNG under the final name
    return path
