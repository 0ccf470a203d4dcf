"""aot_handbook.diagnostics: FSD diagnostics and quantile curves, by hand and against POT."""

import numpy as np
import ot
import pytest
import torch

from aot_handbook.diagnostics import fsd_diagnostics, quantile_curves


def _random_case(rng, n, m, ties):
    if ties:  # few distinct values, so ties within u, within v and across them
        u, v = rng.integers(-3, 4, n) * 1.5, rng.integers(-3, 4, m) * 1.5
    else:
        u, v = rng.normal(0, 3, n), rng.normal(0.5, 2, m)
    return torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64)


def test_fsd_diagnostics_by_hand():
    # U = {0, 1, 2, 3}, V = {1, 1}: Q_U - Q_V is -1, 0, 1, 2 on the four quarters.
    d = fsd_diagnostics(torch.tensor([3.0, 0.0, 2.0, 1.0]), torch.tensor([1.0, 1.0]))
    assert d == {"fsd_violation_share": 0.25, "w1_violation": 0.25, "min_quantile_gap": -1.0}
    dominating = fsd_diagnostics(torch.tensor([2.0, 3.0, 5.0]), torch.tensor([1.0, 2.0]))
    assert dominating["fsd_violation_share"] == 0.0 and dominating["w1_violation"] == 0.0
    assert dominating["min_quantile_gap"] == 1.0  # (3 - 2) on (1/2, 2/3]


def test_w1_violation_equals_pot():
    # int (Q_V - Q_U)_+ is OT with the convex cost (v - u)_+: POT's LP is an independent reference.
    rng = np.random.default_rng(11)
    for _ in range(50):
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        u, v = _random_case(rng, n, m, ties=bool(rng.integers(2)))
        ref = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), np.maximum(v.numpy()[None, :] - u.numpy()[:, None], 0))
        assert fsd_diagnostics(u, v)["w1_violation"] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_quantile_curves_are_the_empirical_quantile_functions():
    u, v = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([5.0, 4.0])
    c = quantile_curves(u, v)
    torch.testing.assert_close(c["t"], torch.tensor([1 / 3, 1 / 2, 2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(c["q_u"], torch.tensor([-1.0, 0.3, 0.3, 2.0], dtype=torch.float64))
    torch.testing.assert_close(c["q_v"], torch.tensor([4.0, 4.0, 5.0, 5.0], dtype=torch.float64))
