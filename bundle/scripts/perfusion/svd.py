"""Block-circulant SVD deconvolution of tissue curves and what is read from the flow-scaled residue.

The delay-insensitive block-circulant SVD (Wu et al. 2003): the AIF zero-padded to ``2T`` forms a circulant
matrix, whose SVD is its discrete Fourier transform, so truncating singular values below ``lambda * s_max`` is
exactly zeroing those frequencies. ``method="osvd"`` chooses ``lambda`` per voxel (the smallest of a ladder whose
residue oscillates less than a limit, :func:`oscillation_index`); ``method="bsvd"`` uses one fixed truncation.
From the residue: its peak (CBF), its area over the part of the bolus the window holds (CBV,
:func:`window_fraction`) and the time of its peak (Tmax, :func:`residue_peak_time`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import fft as sfft

TRUNCATION_LADDER = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
"""Relative singular-value thresholds oSVD tries per voxel, least regularisation first."""


REFERENCE_TRUNCATION = 0.1
"""Truncation of the residue whose peak scales the oscillation index (the textbook bSVD value): a
spike in a weakly regularised residue cannot raise its own scale and so hide its oscillation."""


METHODS = ("osvd", "bsvd")
"""Deconvolutions: per-voxel oscillation-limited truncation (``osvd``) or one fixed truncation (``bsvd``)."""


def oscillation_index(residue: np.ndarray, scale: np.ndarray, dt: float = 1.0) -> np.ndarray:
    """Oscillation of residues ``(V, L)``: circular ``sum |k[j+1] - 2 k[j] + k[j-1]| / (L dt scale)``.

    Unlike Wu's index (``scale = max k``, differences inside the window only, per sample), the differences
    wrap around, so a spike at the first sample is counted with all three of its neighbours; ``scale`` is
    the peak of a more regularised residue, so a spike cannot shrink its own index by raising the max; and
    the sum is per second of the window (``L dt``), not per sample, so one limit holds at 1, 1.5 and 2 s
    sampling (per sample, the same rise and fall would count 1.5-2x more at the coarser rates).
    """
    second = np.roll(residue, -1, axis=1) - 2.0 * residue + np.roll(residue, 1, axis=1)
    return np.abs(second).sum(axis=1) / (residue.shape[1] * dt * np.maximum(scale, 1e-12))


def deconvolve(
    conc: np.ndarray,
    aif: np.ndarray,
    dt: float,
    method: str = "osvd",
    oscillation_limit: float = 0.035,
    ladder: tuple[float, ...] = TRUNCATION_LADDER,
    truncation: float = 0.1,
    chunk: int = 16384,
    summarise: Callable[[np.ndarray], tuple[np.ndarray, ...]] | None = None,
) -> tuple[np.ndarray | tuple[np.ndarray, ...], np.ndarray]:
    """Block-circulant SVD deconvolution of tissue curves ``(V, T)`` by ``aif`` ``(T,)``.

    ``method="bsvd"`` truncates singular values below ``truncation * s_max`` for every voxel;
    ``method="osvd"`` takes, per voxel, the smallest threshold of ``ladder`` whose residue's
    :func:`oscillation_index` is below ``oscillation_limit`` (the largest when none is), found by bisection
    (the index falls as the truncation rises).
    Returns the flow-scaled residue ``k`` ``(V, 2T)`` (1/s, still including ``rho/k_H``) and each voxel's
    relative truncation threshold. With ``summarise`` (residues ``(v, 2T)`` of a chunk of voxels to a tuple
    of per-voxel arrays), its outputs are returned instead of ``k``, computed chunk by chunk in the worker
    threads, and the full residue array is never held.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    ladder = (float(truncation),) if method == "bsvd" else tuple(sorted(ladder))
    conc = np.asarray(conc, dtype=np.float32)
    n_vox, n_t = conc.shape
    length = 2 * n_t
    spectrum = sfft.rfft(np.asarray(aif, dtype=np.float64), length) * dt
    magnitude = np.abs(spectrum)
    # one inverse filter per threshold; real-input FFT symmetry keeps conjugate singular values together
    inverse = 1.0 / np.where(magnitude > 0, spectrum, 1)
    inverses = [np.where(magnitude >= lam * magnitude.max(), inverse, 0).astype(np.complex64) for lam in ladder]
    reference = np.where(magnitude >= REFERENCE_TRUNCATION * magnitude.max(), inverse, 0).astype(np.complex64)
    residue = np.empty((n_vox, length), dtype=np.float32) if summarise is None else None
    summaries: dict[int, tuple[np.ndarray, ...]] = {}
    chosen = np.full(n_vox, ladder[-1], dtype=np.float32)

    def one_chunk(start: int) -> None:
        stop = min(start + chunk, n_vox)
        spec = sfft.rfft(conc[start:stop], length, axis=1)
        # bisection over the ladder (the index falls as truncation rises): log2(len) trials, not len
        lo = np.zeros(stop - start, dtype=np.int64)
        hi = np.full(stop - start, len(inverses) - 1, dtype=np.int64)
        if len(inverses) > 1:  # amplitude reference: a residue regularised as textbook bSVD
            scale = sfft.irfft(spec * reference, length, axis=1).max(axis=1)
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            for i in np.unique(mid[lo < hi]):
                rows = np.nonzero((mid == i) & (lo < hi))[0]
                k = sfft.irfft(spec[rows] * inverses[i], length, axis=1)
                smooth = oscillation_index(k, scale[rows], dt) < oscillation_limit
                hi[rows[smooth]] = i
                lo[rows[~smooth]] = i + 1
        k = np.empty((stop - start, length), dtype=np.float32) if residue is None else residue[start:stop]
        for i in np.unique(lo):
            rows = np.nonzero(lo == i)[0]
            k[rows] = sfft.irfft(spec[rows] * inverses[i], length, axis=1)
            chosen[start + rows] = ladder[i]
        if summarise is not None:
            summaries[start] = summarise(k)

    starts = range(0, n_vox, chunk)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one_chunk, starts))
    if summarise is None:
        return residue, chosen
    if not summaries:  # no voxels: summarise an empty chunk for the shapes and dtypes
        return summarise(np.zeros((0, length), dtype=np.float32)), chosen
    return tuple(np.concatenate(parts) for parts in zip(*(summaries[s] for s in starts))), chosen


def window_fraction(residue: np.ndarray, aif: np.ndarray) -> np.ndarray:
    """Fraction of the area under each curve that its acquisition window holds, from its residue.

    A curve acquired over ``T`` frames holds ``sum_t C = dt sum_s k(s) A(T-1-s)``, where ``A`` is the
    arterial input's cumulative area: the bolus that arrives late, and the part of it that reaches the voxel
    only after its lag, lie beyond the window. The ratio of areas (``sum C / sum AIF``, the textbook CBV, which
    is what the zero-padded deconvolution's ``sum k`` equals) thus falls short wherever the input has not
    returned to baseline by the last frame (recirculation, a long bolus), by more the later the residue.
    Returns ``sum_s k(s) A(T-1-s) / (sum_s k(s) A(T-1))`` over the residue's main lobe in the window (its
    positive part up to the first sample after the peak that is not positive; the deconvolution's ringing
    beyond would weigh late): dividing the area ratio by it gives the residue's own area. 1 where the residue
    has no positive part.
    """
    index = np.arange(residue.shape[1])[None, :]
    after = (residue <= 0) & (index > residue.argmax(axis=1)[:, None])
    end = np.where(after.any(axis=1), after.argmax(axis=1), residue.shape[1])
    positive = np.where(index < end[:, None], np.clip(residue, 0.0, None), 0.0).astype(np.float32)
    cumulative = np.cumsum(np.asarray(aif, dtype=np.float64))
    held = positive @ cumulative[::-1].astype(positive.dtype)
    total = positive.sum(axis=1) * cumulative[-1]
    return np.where(total > 0, held / np.where(total > 0, total, 1.0), 1.0).astype(np.float32)


def parabolic_peak(curves: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sub-sample position of the peak at ``index`` from a parabola through it and its neighbours."""
    rows = np.arange(curves.shape[0])
    i = np.clip(index, 1, curves.shape[1] - 2)
    y0, y1, y2 = curves[rows, i - 1], curves[rows, i], curves[rows, i + 1]
    den = y0 - 2 * y1 + y2
    offset = np.where(np.abs(den) > 1e-12, 0.5 * (y0 - y2) / np.where(den == 0, 1, den), 0.0)
    return np.where((index > 0) & (index < curves.shape[1] - 1), i + np.clip(offset, -0.5, 0.5), index)


RISE_LEAD_S = 3.0
"""How far before lag 0 (s) Tmax's rise may be read: the circulant residue of tissue that fills with or before the
artery chosen as AIF begins in its wrapped end (negative lags), which a search from lag 0 would read as 0. Tmax never
reads earlier, so the maps pass :func:`scripts.io.images.check_map_values`, which takes more than 1 % of a brain
below -3 s for a negated map; 5 s let noisy long-transit voxels wander there (2 % of one development patient)."""


def residue_peak_time(
    residue: np.ndarray, dt: float, n_frames: int, method: str = "rise", lead_s: float = RISE_LEAD_S
) -> np.ndarray:
    """Tmax (s) of flow-scaled circulant residues ``(V, L)``, the peak searched over the acquisition window
    (``n_frames``); with ``method="rise"`` the rise to it may begin up to ``lead_s`` before lag 0, in the residue's
    wrapped end, so that Tmax can be negative (tissue that fills before the artery chosen as AIF)."""
    k = residue[:, :n_frames]
    peak = k.argmax(axis=1)
    if method == "argmax":
        return (parabolic_peak(k, peak) * dt).astype(np.float32)
    if method != "rise":
        raise ValueError(f"tmax_method must be 'rise' or 'argmax', got {method!r}.")
    lead = int(min(np.floor(lead_s / dt + 1e-9), residue.shape[1] - n_frames)) if lead_s > 0 else 0
    ext = np.concatenate([residue[:, residue.shape[1] - lead :], k], axis=1) if lead else k
    n, rows = ext.shape[1], np.arange(k.shape[0])
    top = k[rows, peak]
    half, near = 0.5 * top, ext >= 0.8 * top[:, None]
    # the rise that leads to the plateau: the first sample of the window within 80 % of the peak (not the ringing
    # maximum of a long, flat residue, whose dips below half would otherwise move the crossing late), and the run of
    # such samples it continues from the negative lags
    onset = near[:, lead:].argmax(axis=1) + lead
    if lead:
        below = ~near[:, lead - 1 :: -1]  # lags -1, -2, ...: the first not within 80 % ends the run
        onset -= np.where(onset == lead, np.where(below.any(axis=1), below.argmax(axis=1), lead), 0)
    before = (ext < half[:, None]) & (np.arange(n)[None, :] < onset[:, None])
    last_below = np.where(before.any(axis=1), n - 1 - before[:, ::-1].argmax(axis=1), -1)
    j = np.clip(last_below, 0, n - 2)
    k0, k1 = ext[rows, j], ext[rows, j + 1]
    frac = np.clip((half - k0) / np.maximum(k1 - k0, 1e-12), 0.0, 1.0)
    return ((np.where(last_below >= 0, j + frac, 0.0) - lead) * dt).astype(np.float32)
