"""Indicator-dilution model of a CT perfusion study: arterial input, residue functions, tissue curves.

Conventions (shared with :mod:`scripts.perfusion.deconvolution`, which owns the constants and inverts the model):

* CBF in ml/100 g/min, CBV in ml/100 g, MTT and delays in seconds, enhancement in HU.
* Tissue enhancement ``dHU(t) = (rho / k_H) * F * (AIF(. - delay) conv R)(t)`` with ``F = CBF / 6000``
  (ml/g/s), ``rho`` the brain density and ``k_H`` the large/small-vessel haematocrit correction.
* ``R`` is the residue function of a gamma distribution of transit times (``R(0) = 1``, non-increasing,
  ``integral R = MTT``), so the flow-scaled residue peaks at ``t = delay``: the delay sets Tmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincc

from ..physics import K_H, RHO


@dataclass(frozen=True)
class ArterialInput:
    """Gamma-variate arterial input function with a recirculation bump.

    ``AIF(t) = peak_hu * g(t; t0, alpha, beta) + recirculation * peak_hu * g(t; t0 + recirculation_delay, ...)``
    where ``g`` is a gamma variate normalised to a peak of one; the recirculation bump is twice as wide.
    """

    peak_hu: float = 350.0
    t0: float = 6.0
    alpha: float = 3.0
    beta: float = 1.5
    recirculation: float = 0.2
    recirculation_delay: float = 12.0

    def __call__(self, t: np.ndarray) -> np.ndarray:
        first = gamma_variate(t, self.t0, self.alpha, self.beta)
        second = gamma_variate(t, self.t0 + self.recirculation_delay, self.alpha, 2.0 * self.beta)
        return self.peak_hu * (first + self.recirculation * second)


def gamma_variate(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    """Gamma variate ``((t - t0) / (alpha beta))^alpha exp(alpha - (t - t0) / beta)``, peak 1 at ``t0 + alpha beta``."""
    s = np.clip((np.asarray(t, dtype=np.float64) - t0) / (alpha * beta), 0.0, None)
    with np.errstate(divide="ignore"):
        out = np.exp(alpha * (np.log(s, where=s > 0, out=np.full_like(s, -np.inf)) + 1.0 - s))
    return np.where(s > 0, out, 0.0)


def residue(t: np.ndarray, mtt: float | np.ndarray, shape: float = 3.0) -> np.ndarray:
    """Residue function for gamma-distributed transit times with mean ``mtt`` (s) and the given shape."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, None)
    return gammaincc(shape, t * shape / np.asarray(mtt, dtype=np.float64))


def disperse(curve: np.ndarray, dt: float, tau: float) -> np.ndarray:
    """Convolve a curve sampled every ``dt`` s with a unit-area exponential kernel of time constant ``tau``."""
    if tau <= 0:
        return curve
    t = np.arange(curve.shape[-1]) * dt
    kernel = np.exp(-t / tau)
    kernel /= kernel.sum()
    return np.convolve(curve, kernel)[: curve.shape[-1]]


class TissueCurveTable:
    """Tissue enhancement curves ``(rho/k_H) * AIF conv R_MTT`` tabulated on a fine time grid.

    One convolution per tabulated MTT; any voxel's curve is then read off by linear interpolation in
    ``log(MTT)`` and in time (the arrival delay shifts the curve), scaled by its CBF. This is the model
    computed on a fine grid and sampled at the frame times, vectorised over voxels.

    Args:
        aif: the arterial input function.
        duration: length of the simulated series (s).
        dt: fine time step (s).
        mtt_range: smallest and largest MTT (s) to tabulate.
        n_mtt: number of log-spaced MTT values.
        residue_shape: shape parameter of the transit-time distribution.
    """

    def __init__(
        self,
        aif: ArterialInput,
        duration: float,
        dt: float = 0.05,
        mtt_range: tuple[float, float] = (1.0, 40.0),
        n_mtt: int = 160,
        residue_shape: float = 3.0,
    ) -> None:
        self.dt = float(dt)
        self.t = np.arange(0.0, duration + 40.0, self.dt)  # margin so late, delayed samples stay defined
        self.aif = aif(self.t)
        self.log_mtt = np.linspace(np.log(mtt_range[0]), np.log(mtt_range[1]), n_mtt)
        n = self.t.size
        nfft = 1 << int(np.ceil(np.log2(2 * n)))
        residues = residue(self.t[None, :], np.exp(self.log_mtt)[:, None], residue_shape)
        conv = np.fft.irfft(np.fft.rfft(self.aif, nfft)[None, :] * np.fft.rfft(residues, nfft, axis=1), nfft, axis=1)
        # conv[m, i] = dt * sum_j aif[j] R_m[i - j]: enhancement per unit flow (ml/g/s) before rho/k_H
        self.table = (RHO / K_H) * self.dt * conv[:, :n]

    def sample(
        self, cbf: np.ndarray, mtt: np.ndarray, delay: np.ndarray, times: np.ndarray, chunk: int = 65536
    ) -> np.ndarray:
        """Enhancement (HU) of voxels with the given CBF, MTT and delay at ``times``; shape ``(V, len(times))``."""
        cbf, mtt, delay = (np.asarray(a, dtype=np.float64).ravel() for a in (cbf, mtt, delay))
        times = np.asarray(times, dtype=np.float64)
        out = np.empty((cbf.size, times.size), dtype=np.float32)
        m_pos = np.interp(np.log(np.clip(mtt, 1e-3, None)), self.log_mtt, np.arange(self.log_mtt.size))
        last_m, last_t = self.log_mtt.size - 1, self.t.size - 1
        for start in range(0, cbf.size, chunk):
            sl = slice(start, start + chunk)
            m0 = np.minimum(np.floor(m_pos[sl]).astype(np.int64), last_m - 1)
            wm = (m_pos[sl] - m0)[:, None]
            t_pos = np.clip((times[None, :] - delay[sl, None]) / self.dt, 0.0, last_t - 1.0)
            t0 = np.floor(t_pos).astype(np.int64)
            wt = t_pos - t0
            rows0, rows1 = m0[:, None], m0[:, None] + 1
            lo = self.table[rows0, t0] * (1 - wt) + self.table[rows0, t0 + 1] * wt
            hi = self.table[rows1, t0] * (1 - wt) + self.table[rows1, t0 + 1] * wt
            out[sl] = (cbf[sl, None] / 6000.0) * (lo * (1 - wm) + hi * wm)
        return out
