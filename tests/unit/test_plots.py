"""aot_handbook.plots: Fig. 1 draws the quantiles the diagnostics compute."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here: make test-fast leaves them out


def test_figure1_plots_the_diagnostics_quantiles(runs, tmp_path):
    import matplotlib.pyplot as plt

    from aot_handbook.diagnostics import quantile_curves
    from aot_handbook.heldout import heldout_rows, run_statistics
    from aot_handbook.plots import draw_quantiles, figure1

    rows = heldout_rows(str(runs["aot"]), max_rows=32)
    assert len(rows) == 32 and {"prompt", "chosen", "rejected"} <= set(rows[0])
    stats = {"aot": run_statistics(str(runs["aot"]), rows), "lora": run_statistics(str(runs["lora"]), rows)}
    paths = figure1(stats, tmp_path / "plots")
    for panel in ("a", "b"):
        assert paths[panel].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = {k: (s["chosen_rewards"], s["rejected_rewards"], "chosen", "rejected") for k, s in stats.items()}
    fig, _ = draw_quantiles(curves, title="t")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    for j, (label, s) in enumerate(stats.items()):
        c = quantile_curves(s["chosen_rewards"], s["rejected_rewards"])
        assert lines[2 * j].get_xdata().tolist() == pytest.approx(c["t"].tolist())
        assert lines[2 * j].get_ydata().tolist() == pytest.approx(c["q_u"].tolist())
        assert lines[2 * j + 1].get_ydata().tolist() == pytest.approx(c["q_v"].tolist())
        assert f"FSD violation {s['rewards_fsd']['fsd_violation_share']:.2f}" in lines[2 * j].get_label()
    plt.close(fig)
    saved = json.loads((tmp_path / "plots" / "fig1b.json").read_text())
    c = quantile_curves(stats["lora"]["policy_margins"], stats["lora"]["reference_margins"])
    assert saved["lora"]["q_u"] == pytest.approx(c["q_u"].tolist())
    assert saved["lora"]["q_v"] == pytest.approx(c["q_v"].tolist())
    # LoRA run: the reference is the adapters disabled, i.e. the SFT model the adapter sits on.
    sft_only = stats["aot"]["reference_margins"]  # the full run's reference is the SFT model too
    assert torch.allclose(stats["lora"]["reference_margins"], sft_only)
    assert not torch.allclose(stats["lora"]["policy_margins"], stats["lora"]["reference_margins"])
