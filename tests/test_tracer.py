import numpy as np
import pytest

from scripts.physics import K_H, RHO
from scripts.simulation.tracer import ArterialInput, TissueCurveTable, gamma_variate, residue


def test_gamma_variate_peaks_at_one_at_t0_plus_alpha_beta():
    t = np.arange(0, 40, 0.01)
    g = gamma_variate(t, 5.0, 3.0, 1.5)
    assert g.max() == pytest.approx(1.0, abs=1e-6)
    assert t[g.argmax()] == pytest.approx(5.0 + 4.5, abs=0.02)
    assert np.all(g[t <= 5.0] == 0)


@pytest.mark.parametrize("mtt", [2.0, 4.0, 12.0])
def test_residue_starts_at_one_decreases_and_integrates_to_mtt(mtt):
    t = np.arange(0, 200, 0.01)
    r = residue(t, mtt)
    assert r[0] == pytest.approx(1.0)
    assert np.all(np.diff(r) <= 1e-12)
    assert np.trapezoid(r, t) == pytest.approx(mtt, rel=1e-3)


def test_tissue_curves_obey_the_central_volume_theorem_and_delay_shifts_them():
    aif = ArterialInput(recirculation=0.0)
    table = TissueCurveTable(aif, duration=120.0)
    times = np.arange(0, 120, 0.5)
    cbf, mtt = np.array([60.0, 20.0]), np.array([4.0, 10.0])
    curves = table.sample(cbf, mtt, np.zeros(2), times).astype(np.float64)
    cbv = cbf * mtt / 60.0
    expected = RHO / K_H * cbv / 100.0 * np.trapezoid(aif(times), times)
    assert np.trapezoid(curves, times, axis=1) == pytest.approx(expected, rel=0.01)
    delayed = table.sample(cbf, mtt, np.full(2, 5.0), times)
    np.testing.assert_allclose(delayed[:, 10:], curves[:, :-10], atol=1e-3 * curves.max())
