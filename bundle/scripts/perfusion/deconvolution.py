"""Perfusion maps (CBF, CBV, MTT, TTP, Tmax, MIP) from a raw 4D CT perfusion series.

Pipeline, vectorised over voxels (no per-voxel Python loops):

0. Uneven acquisitions (``frame_times``) are resampled linearly to an even grid at their shortest interval.
1. The arterial input (AIF) is chosen automatically from the unsmoothed curves: the highest-enhancing voxels
   that peak earliest; the venous output (VOF) from the largest-area late voxels rescales the AIF for partial
   volume (``AUC_AIF = AUC_VOF``, the areas compared over what each holds of the bolus within the window,
   :func:`venous_scale`). A given AIF skips this step. The AIF is searched in soft tissue (baseline
   HU inside ``soft_tissue_hu``: no air, no bone), the AIF also away from bone and among curves that rise, fall
   and wash out once (a moved skull edge mimics an artery otherwise).
2. The baseline is the frames before the AIF reaches 10 % of its peak (no tissue enhances before its
   artery); concentration = HU minus the voxel's mean baseline (CT enhancement is linear in contrast).
3. Maps are computed in parenchyma (baseline inside ``parenchyma_hu``: no CSF) that does not enhance like a
   vessel. Curves are denoised in-plane within tissue (per-voxel CT noise would otherwise dominate): by
   default with the edge-preserving TIPS bilateral filter (:mod:`.denoising`; spatial sigma ``smoothing_mm``),
   which keeps a small lesion's curve its own; ``denoising="gaussian"`` smooths with a plain Gaussian, which
   spreads healthy flow into small ischaemic regions.
4. Deconvolution is the delay-insensitive block-circulant SVD (Wu et al. 2003): the AIF zero-padded to
   ``2T`` forms a circulant matrix, whose SVD is its discrete Fourier transform, so truncating singular values
   below ``lambda * s_max`` is exactly zeroing those frequencies. With ``method="osvd"`` (default) ``lambda``
   is chosen per voxel as the smallest value of a ladder whose residue has an oscillation index below
   ``oscillation_limit``; the index is spike-aware (:func:`oscillation_index`), so a curve that is not an
   exact discrete convolution (every real scan) cannot drive the choice to a spike. ``method="bsvd"`` uses
   one fixed ``truncation``. The default was chosen on the independent phantom
   (:mod:`scripts.perfusion.digital_phantom`, ``benchmarks/perfusion_phantom.py``), not on the cohort simulator.
5. From the flow-scaled residue ``k(t) = (rho/k_H) CBF R(t - delay)``: CBF = ``(k_H/rho) max k`` (x6000),
   CBV = ``(k_H/rho) sum k dt`` (x100) divided by the fraction of the curve's area the window holds
   (:func:`window_fraction`: without it CBV reads low wherever the bolus has not washed out by the last
   frame), MTT = ``60 CBV / CBF``. Tmax is the time of the residue's peak.
   ``tmax_method="rise"`` (default) reads it at the half-maximum rise that leads to the peak's plateau, which
   equals the time of the maximum for any non-increasing residue and is not shifted by the deconvolution's
   low-pass blur; ``"argmax"`` is the vendor convention (parabolic peak of ``k``), known to read about +2 s
   high at 1 s sampling (Kudo 2013). TTP is the parabolic peak time of the smoothed concentration, from the
   first frame.
6. MIP is the maximum HU over time (the whole image). Other maps are 0 outside tissue.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from ..io.images import MIN_FRAMES, validate_frame_times
from ..io.map_registry import computed_maps
from ..physics import K_H, RHO
from .denoising import tips_filter
from .quality import quality_flags

MIN_AIF_PEAK_HU = 20.0
"""An arterial input peaking lower than this (HU above baseline) is noise: real AIFs peak at hundreds of HU."""

WASHOUT_FRACTION = 0.5
"""An arterial candidate's mean over the last quarter of the frames must fall below this fraction of its peak."""

BOLUS_VARIATION = 1.5
"""A bolus curve's total variation may be this many times the ``2 x peak`` of one clean rise and fall (noise)."""

VENOUS_MATCH = 0.8
"""Smallest :func:`delayed_match` of a venous output candidate."""

VENOUS_LAG_S = 20.0
"""Longest delay (s) of the venous curve behind the arterial one that :func:`delayed_match` tries."""

BONE_HU = 300.0
"""Baseline HU above which a voxel is bone."""

BONE_MARGIN_MM = 3.0
"""The AIF is not taken within this distance (in-plane) of bone: a slightly moved skull edge there mimics one."""

MIN_WINDOW_FRACTION = 0.5
"""Smallest :func:`window_fraction` CBV is corrected by: a residue peaking so late (noise) is not trusted further."""

TRUNCATION_LADDER = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
"""Relative singular-value thresholds oSVD tries per voxel, least regularisation first."""

REFERENCE_TRUNCATION = 0.1
"""Truncation of the residue whose peak scales the oscillation index (the textbook bSVD value): a
spike in a weakly regularised residue cannot raise its own scale and so hide its oscillation."""

DENOISING = ("tips", "gaussian")
"""Denoisings of the curves before deconvolution: the TIPS bilateral filter or a Gaussian within tissue."""

METHODS = ("osvd", "bsvd")
"""Deconvolutions: per-voxel oscillation-limited truncation (``osvd``) or one fixed truncation (``bsvd``)."""


@dataclass
class PerfusionMaps:
    """Maps in physical units (arrays shaped like one frame of the series) and how they were made."""

    cbf: np.ndarray
    cbv: np.ndarray
    mtt: np.ndarray
    ttp: np.ndarray
    tmax: np.ndarray
    mip: np.ndarray
    tissue: np.ndarray
    aif: np.ndarray
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The computed maps by name (:func:`scripts.io.map_registry.computed_maps`)."""
        return {name: getattr(self, name) for name in computed_maps()}


def baseline_frame_count(mean_curve: np.ndarray, fraction: float = 0.1, minimum: int = 2) -> int:
    """Frames before bolus arrival: the last frame before the mean enhancement passes ``fraction`` of its peak."""
    curve = np.asarray(mean_curve, dtype=np.float64)
    start = curve[: max(minimum, 1)].mean()
    rise = curve - start
    peak = int(np.argmax(rise))
    if rise[peak] <= 0:
        return minimum
    above = np.nonzero(rise[: peak + 1] >= fraction * rise[peak])[0]
    return int(max(minimum, above[0] - 1)) if above.size else minimum


def _extent(mask: np.ndarray, axis: int) -> slice:
    """The bounding slice of ``mask`` along ``axis`` (empty when the mask is)."""
    present = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
    return slice(int(present[0]), int(present[-1]) + 1) if present.size else slice(0, 0)


def smooth_tissue_curves(
    ctp: np.ndarray, baseline: np.ndarray, tissue: np.ndarray, sigma_px: tuple[float, float]
) -> np.ndarray:
    """Concentration curves ``(V, T)`` of the ``tissue`` voxels, smoothed in-plane within tissue.

    Normalised convolution (Gaussian of the masked frame divided by the Gaussian of the mask), so air, bone,
    CSF and vessels do not bleed into parenchyma. Processed frame by frame, two frames at a time.
    """
    n_t = ctp.shape[-1]
    smoothing = max(sigma_px) > 0
    # work on the tissue's bounding box (plus the kernel's reach), slices first so frames are contiguous
    margin = [int(np.ceil(3.0 * sp)) + 1 for sp in sigma_px]
    box = []
    for axis, pad in zip((0, 1), margin):
        extent = _extent(tissue, axis)
        box.append(slice(max(0, extent.start - pad), min(tissue.shape[axis], extent.stop + pad)))
    mask = np.ascontiguousarray(tissue[box[0], box[1]].transpose(2, 0, 1))
    weight = mask.astype(np.float32)
    base = np.ascontiguousarray(baseline[box[0], box[1]].transpose(2, 0, 1))
    sigma = (0.0, *sigma_px)
    norm = np.maximum(ndimage.gaussian_filter(weight, sigma, truncate=3.0), 1e-6) if smoothing else None
    out = np.empty((n_t, int(mask.sum())), dtype=np.float32)

    def one_frame(t: int) -> None:
        frame = ctp[box[0], box[1], :, t].transpose(2, 0, 1) - base
        frame *= weight
        if smoothing:
            frame = ndimage.gaussian_filter(frame, sigma, truncate=3.0)
            frame /= norm
        out[t] = frame[mask]

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one_frame, range(n_t)))
    # voxel order above is (slice, x, y); return it in the (x, y, slice) order of ``ctp[tissue]``
    order = np.zeros(mask.shape, dtype=np.int64)
    order[mask] = np.arange(out.shape[1])
    return np.ascontiguousarray(out.T[order.transpose(1, 2, 0)[tissue[box[0], box[1]]]])


def select_arterial_input(
    ctp: np.ndarray,
    baseline: np.ndarray,
    soft: np.ndarray,
    dt: float,
    n_voxels: int = 8,
    candidate_percentile: float = 99.95,
    vessel_level: float = 0.3,
    mip: np.ndarray | None = None,
    arterial_allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Automatic AIF: among vessel-like voxels, the highest of those that peak earliest; VOF-rescaled.

    Vessel-like voxels enhance by at least ``vessel_level`` times the ``candidate_percentile`` of all
    soft-tissue peaks. Of those, a bolus curve rises and falls once (total variation at most
    :data:`BOLUS_VARIATION` times twice its peak), and an arterial one also washes out (its last quarter
    below :data:`WASHOUT_FRACTION` of its peak) and lies where ``arterial_allowed`` (e.g. away from bone):
    a voxel that a moved bone edge enters jumps up and down or keeps its step. Each rule applies only when
    at least ``n_voxels`` voxels pass it. "Earliest" is within 2 s of the arterial candidates' 10th-percentile
    time to peak. The VOF is the mean of the largest-area bolus curves peaking after the AIF whose shape is a
    delayed AIF's (:func:`delayed_match` at least :data:`VENOUS_MATCH`; none: no VOF). ``mip`` (the series'
    maximum over time) is computed when not given.

    Returns the AIF curve (HU above baseline), a boolean mask of the voxels used and a summary dict.
    """
    peak_map = (ctp.max(axis=-1) if mip is None else mip) - baseline
    # vessels: enhancing at least `vessel_level` of the strongest voxels (robust high percentile)
    candidates = soft & (peak_map >= vessel_level * np.percentile(peak_map[soft], candidate_percentile))
    where = np.nonzero(candidates)
    curves = ctp[candidates] - baseline[candidates][:, None]
    peak = curves.max(axis=1)
    ttp = curves.argmax(axis=1)

    def enough(rule: np.ndarray) -> np.ndarray:
        return rule if rule.sum() >= n_voxels else np.ones_like(rule)

    bolus = enough(np.abs(np.diff(curves, axis=1)).sum(axis=1) <= BOLUS_VARIATION * 2.0 * peak)
    washes = curves[:, -max(1, curves.shape[1] // 4) :].mean(axis=1) < WASHOUT_FRACTION * peak
    allowed = np.ones_like(bolus) if arterial_allowed is None else arterial_allowed[where]
    arterial = np.nonzero(enough(bolus & washes & allowed))[0]
    early = arterial[ttp[arterial] <= np.percentile(ttp[arterial], 10) + max(1, round(2.0 / dt))]
    chosen = early[np.argsort(peak[early])[::-1][:n_voxels]]
    aif = curves[chosen].mean(axis=0)
    info = {"aif_voxels": int(chosen.size), "aif_ttp_s": float(aif.argmax() * dt), "vof_scale": 1.0, "vof_hu": None}
    venous_like = delayed_match(curves, aif, max(1, round(VENOUS_LAG_S / dt))) >= VENOUS_MATCH
    late = np.nonzero(bolus & (ttp > aif.argmax()) & venous_like)[0]
    if late.size:
        auc = curves[late].sum(axis=1)
        vof = curves[late[np.argsort(auc)[::-1][:n_voxels]]].mean(axis=0)
        scale = venous_scale(aif, vof, dt)
        info["vof_scale"], info["vof_hu"] = float(scale), [round(float(v), 2) for v in vof]
        if scale > 1.0:
            aif = aif * scale
    info["aif_peak_hu"] = float(aif.max())
    voxel_mask = np.zeros(soft.shape, dtype=bool)
    voxel_mask[tuple(idx[chosen] for idx in where)] = True
    return aif, voxel_mask, info


def delayed_match(curves: np.ndarray, aif: np.ndarray, max_lag: int) -> np.ndarray:
    """Each curve's best Pearson correlation with the AIF delayed by 0 to ``max_lag`` frames: a vein's curve is a
    delayed, dispersed AIF (about 0.95); a voxel that a moved bone edge entered steps up and stays (about 0.5)."""
    aif = np.asarray(aif, dtype=np.float64)
    shifted = np.stack([np.r_[np.zeros(lag), aif[: aif.size - lag]] for lag in range(min(max_lag, aif.size - 2) + 1)])

    def standard(a: np.ndarray) -> np.ndarray:
        return (a - a.mean(axis=-1, keepdims=True)) / (a.std(axis=-1, keepdims=True) + 1e-9)

    return (standard(np.asarray(curves, dtype=np.float64)) @ standard(shifted).T / aif.size).max(axis=1)


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


def venous_scale(aif: np.ndarray, vof: np.ndarray, dt: float) -> float:
    """Partial-volume factor of an arterial curve from a venous one: the vein's blood volume relative to it.

    Whole blood passes both, so a venous curve free of partial volume has the area of the true arterial
    input; the factor is the vein's area over the artery's, each over the window, corrected for the part of
    the input that reaches the vein after the last frame (:func:`window_fraction` of the vein's residue).
    """
    residue, _ = deconvolve(np.asarray(vof, dtype=np.float32)[None], aif, dt, method="bsvd", truncation=0.1)
    fraction = float(window_fraction(residue[:, : len(aif)], aif)[0])
    return float(np.sum(vof) / max(float(np.sum(aif)) * fraction, 1e-6))


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


def parabolic_peak(curves: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sub-sample position of the peak at ``index`` from a parabola through it and its neighbours."""
    rows = np.arange(curves.shape[0])
    i = np.clip(index, 1, curves.shape[1] - 2)
    y0, y1, y2 = curves[rows, i - 1], curves[rows, i], curves[rows, i + 1]
    den = y0 - 2 * y1 + y2
    offset = np.where(np.abs(den) > 1e-12, 0.5 * (y0 - y2) / np.where(den == 0, 1, den), 0.0)
    return np.where((index > 0) & (index < curves.shape[1] - 1), i + np.clip(offset, -0.5, 0.5), index)


def residue_peak_time(residue: np.ndarray, dt: float, n_frames: int, method: str = "rise") -> np.ndarray:
    """Tmax (s) of flow-scaled residues ``(V, L)``, searched over the acquisition window (``n_frames``)."""
    k = residue[:, :n_frames]
    peak = k.argmax(axis=1)
    if method == "argmax":
        return (parabolic_peak(k, peak) * dt).astype(np.float32)
    if method != "rise":
        raise ValueError(f"tmax_method must be 'rise' or 'argmax', got {method!r}.")
    rows = np.arange(k.shape[0])
    half = 0.5 * k[rows, peak]
    # the rise that leads to the plateau: the first sample within 80 % of the peak, not the ringing maximum
    # of a long, flat residue (whose dips below half would otherwise move the crossing late)
    onset = (k >= 0.8 * k[rows, peak][:, None]).argmax(axis=1)
    before = (k < half[:, None]) & (np.arange(n_frames)[None, :] < onset[:, None])
    last_below = np.where(before.any(axis=1), n_frames - 1 - before[:, ::-1].argmax(axis=1), -1)
    j = np.clip(last_below, 0, n_frames - 2)
    k0, k1 = k[rows, j], k[rows, j + 1]
    frac = np.clip((half - k0) / np.maximum(k1 - k0, 1e-12), 0.0, 1.0)
    return (np.where(last_below >= 0, j + frac, 0.0) * dt).astype(np.float32)


def validate_series(ctp: np.ndarray, frame_interval: float, name: str = "ctp") -> None:
    """Raise ``ValueError`` naming ``name`` if the array is not a usable 4D series."""
    if ctp.ndim != 4:
        raise ValueError(f"{name}: a CT perfusion series must be 4D (X, Y, slices, time), got shape {ctp.shape}.")
    if ctp.shape[-1] < MIN_FRAMES:
        raise ValueError(f"{name}: {ctp.shape[-1]} frames is too few for perfusion analysis (need >= {MIN_FRAMES}).")
    if not np.isfinite(frame_interval) or frame_interval <= 0:
        raise ValueError(f"{name}: the frame interval must be a positive number of seconds, got {frame_interval}.")
    if not np.isfinite(np.sum(ctp, dtype=np.float64)):  # any NaN or inf makes the sum non-finite
        raise ValueError(f"{name}: the series contains NaN or infinite values.")


EVEN_TOLERANCE_S = 1e-3
"""Frame times whose steps agree within this (the precision of DICOM times) are even: not resampled."""


def uniform_grid(frame_times: np.ndarray, max_upsampling: float = 4.0) -> np.ndarray:
    """An even time grid over the acquisition at its shortest frame interval (at most ``max_upsampling``
    times as many frames as acquired)."""
    times = np.asarray(frame_times, dtype=np.float64)
    span = times[-1] - times[0]
    dt = max(float(np.min(np.diff(times))), span / (max_upsampling * (times.size - 1)))
    return times[0] + np.arange(int(np.floor(span / dt + 1e-6)) + 1) * dt


def resample_frames(series: np.ndarray, frame_times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``series`` (time last) from ``frame_times`` onto ``grid`` (float32)."""
    upper = np.clip(np.searchsorted(frame_times, grid, side="right"), 1, frame_times.size - 1)
    lower = upper - 1
    weight = ((grid - frame_times[lower]) / (frame_times[upper] - frame_times[lower])).astype(np.float32)
    series = np.asarray(series, dtype=np.float32)
    return series[..., lower] * (1.0 - weight) + series[..., upper] * weight


def compute_perfusion_maps(
    ctp: np.ndarray,
    frame_interval: float | None,
    spacing: tuple[float, float] = (1.0, 1.0),
    aif: np.ndarray | None = None,
    soft_tissue_hu: tuple[float, float] = (-20.0, 150.0),
    parenchyma_hu: tuple[float, float] = (20.0, 80.0),
    vessel_fraction: float = 0.3,
    smoothing_mm: float = 1.5,
    method: str = "osvd",
    oscillation_limit: float = 0.035,
    truncation: float = 0.1,
    tmax_method: str = "rise",
    baseline_frames: int | None = None,
    frame_times: np.ndarray | None = None,
    denoising: str = "tips",
    tips_range: float = 1.0,
) -> PerfusionMaps:
    """Compute CBF, CBV, MTT, TTP, Tmax and MIP from a 4D series ``(X, Y, Z, T)`` in HU.

    Args:
        ctp: the series in HU.
        frame_interval: seconds between frames (unused, may be ``None``, when ``frame_times`` is given).
        spacing: in-plane voxel size (mm), used for ``smoothing_mm``.
        aif: arterial input (HU above baseline, one value per frame); selected automatically when ``None``.
        soft_tissue_hu: baseline HU range searched for the AIF and VOF (excludes air and bone).
        parenchyma_hu: baseline HU range of brain parenchyma, where maps are computed (excludes CSF).
        vessel_fraction: voxels peaking above this fraction of the AIF peak are vessels, not parenchyma.
        smoothing_mm: in-plane spatial sigma (mm) of the denoising before deconvolution; 0 disables it.
        denoising: ``"tips"`` (default: the edge-preserving TIPS bilateral filter, :mod:`.denoising`) or
            ``"gaussian"`` (the in-plane Gaussian within tissue).
        tips_range: the TIPS filter's profile-distance scale, in units of what noise alone gives.
        method: ``"osvd"`` (per-voxel truncation from :data:`TRUNCATION_LADDER`) or ``"bsvd"`` (``truncation``).
        oscillation_limit: oSVD smoothness target (:func:`oscillation_index`).
        truncation: bSVD relative singular-value threshold.
        tmax_method: ``"rise"`` or ``"argmax"`` (see the module docstring).
        baseline_frames: pre-bolus frames; by default those before the AIF reaches 10 % of its peak.
        frame_times: acquisition time of each frame (s, strictly increasing) for uneven sampling; the
            series (and a given ``aif``) are resampled linearly to an even grid at the shortest interval.
            Times with steps equal within :data:`EVEN_TOLERANCE_S` are taken as even, without resampling.
    """
    if denoising not in DENOISING:
        raise ValueError(f"denoising must be one of {DENOISING}, got {denoising!r}.")
    if not tips_range > 0:
        raise ValueError(f"tips_range must be a positive multiple of the noise, got {tips_range!r}.")
    n_acquired = ctp.shape[-1] if ctp.ndim == 4 else 0
    info: dict = {}
    if frame_times is not None and ctp.ndim == 4:
        times = validate_frame_times(frame_times, n_acquired)
        if np.ptp(np.diff(times)) <= EVEN_TOLERANCE_S:  # even after all: no resampling
            frame_interval, frame_times = float((times[-1] - times[0]) / (times.size - 1)), None
    if frame_times is not None and ctp.ndim == 4:
        grid = uniform_grid(times)
        frame_interval = float(grid[1] - grid[0])
        info.update(frame_times_resampled=True, resampled_frames=int(grid.size))
    validate_series(ctp, np.nan if frame_interval is None else float(frame_interval))
    dt = float(frame_interval)
    if aif is not None:
        aif = np.asarray(aif, dtype=np.float64)
        if aif.shape != (n_acquired,):
            raise ValueError(f"aif: expected {n_acquired} values (one per frame), got shape {aif.shape}.")
    if frame_times is not None:
        ctp = resample_frames(ctp, times, grid)
        aif = None if aif is None else resample_frames(aif, times, grid).astype(np.float64)
    n_t = ctp.shape[-1]
    ctp = np.asarray(ctp, dtype=np.float32)
    mip = ctp.max(axis=-1)
    first = ctp[..., :2].mean(axis=-1)
    soft = (first > soft_tissue_hu[0]) & (first < soft_tissue_hu[1])
    if soft.sum() < 16:
        raise ValueError(f"ctp: only {int(soft.sum())} voxels have a baseline in {soft_tissue_hu} HU; is it in HU?")
    baselines: dict[int, np.ndarray] = {}

    def baseline_of(frames: int) -> np.ndarray:
        if frames not in baselines:
            baselines[frames] = ctp[..., :frames].mean(axis=-1)
        return baselines[frames]

    if aif is None:
        # a first baseline from the strongest (vessel) curves finds the AIF; the AIF's own rise then sets it
        rise = mip - first
        strongest = soft & (rise >= np.percentile(rise[soft], 99.0))
        n_base = baseline_frame_count((ctp[strongest] - first[strongest][:, None]).mean(axis=0))
        reach = [int(np.ceil(BONE_MARGIN_MM / float(s))) for s in spacing[:2]]
        allowed = ~ndimage.maximum_filter(first > BONE_HU, size=(2 * reach[0] + 1, 2 * reach[1] + 1, 1))
        aif, _, aif_info = select_arterial_input(ctp, baseline_of(n_base), soft, dt, mip=mip, arterial_allowed=allowed)
        if baseline_frames is None and baseline_frame_count(aif) != n_base:
            n_base = baseline_frame_count(aif)
            aif, _, aif_info = select_arterial_input(
                ctp, baseline_of(n_base), soft, dt, mip=mip, arterial_allowed=allowed
            )
        info.update(aif_info)
    else:
        n_base = baseline_frame_count(aif)
    n_base = int(n_base if baseline_frames is None else baseline_frames)
    baseline = baseline_of(n_base)
    info["baseline_frames"], info["curve_interval_s"] = n_base, dt
    if "vof_hu" not in info:  # a given AIF: the venous curve is still looked for, for the quality flags
        info["vof_hu"] = select_arterial_input(ctp, baseline, soft, dt, mip=mip)[2]["vof_hu"]
    if float(np.max(aif)) < MIN_AIF_PEAK_HU:
        raise ValueError(
            f"no contrast bolus: the arterial input peaks {float(np.max(aif)):.1f} HU above baseline "
            f"(need >= {MIN_AIF_PEAK_HU:g} HU); is this a contrast-enhanced perfusion series?"
        )
    info.update(
        aif_peak_s=float(parabolic_peak(aif[None], np.array([int(np.argmax(aif))]))[0] * dt),
        aif_area_hu_s=float(np.sum(aif) * dt),
    )
    vessel = mip - baseline > vessel_fraction * float(np.max(aif))
    tissue = soft & (baseline >= parenchyma_hu[0]) & (baseline <= parenchyma_hu[1]) & ~vessel
    sigma_px = tuple(smoothing_mm / float(s) for s in spacing[:2])
    # the noise of one voxel in one frame: from the baseline frames, else from frame-to-frame differences
    if n_base >= 2 and tissue.any():
        noise_hu = float(np.median(ctp[..., :n_base][tissue].std(axis=1, ddof=1)))
    elif tissue.any():  # median absolute frame-to-frame difference, as the SD of one frame's noise
        noise_hu = float(np.median(np.abs(np.diff(ctp[tissue], axis=1))) / 0.6745 / np.sqrt(2))
    else:
        noise_hu = None
    if denoising == "tips" and max(sigma_px) > 0 and noise_hu is not None:
        box = tuple(_extent(tissue, axis) for axis in range(3))
        concentration = ctp[box] - baseline[box][..., None]
        smooth = tips_filter(concentration, tissue[box], sigma_px, noise_hu, tips_range)[tissue[box]]
    else:
        smooth = smooth_tissue_curves(ctp, baseline, tissue, sigma_px)
    info["denoising"] = denoising

    def summarise(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        in_window = np.clip(window_fraction(k[:, :n_t], aif), MIN_WINDOW_FRACTION, 1.0)
        return k.max(axis=1), k.sum(axis=1) / in_window, residue_peak_time(k, dt, n_t, tmax_method)

    (peak, area, tmax_v), thresholds = deconvolve(
        smooth, aif, dt, method, oscillation_limit, truncation=truncation, summarise=summarise
    )
    scale = K_H / RHO
    cbf_v = scale * peak * 6000.0
    cbv_v = scale * area * dt * 100.0
    mtt_v = np.where(cbf_v > 1e-3, 60.0 * cbv_v / np.maximum(cbf_v, 1e-3), 0.0)
    ttp_v = parabolic_peak(smooth, smooth.argmax(axis=1)) * dt
    info["median_truncation"] = float(np.median(thresholds))
    # the parenchyma's mean enhancement from the curves already made (smoothing within tissue keeps the mean);
    # the noise from the raw baseline frames, as one voxel of one frame carries it
    info["tissue_peak_hu"] = float(smooth.mean(axis=0).max()) if smooth.size else 0.0
    info["noise_hu"] = noise_hu if n_base >= 2 else None
    vof = info.get("vof_hu")
    info["quality"] = quality_flags(None if vof is None else np.asarray(vof), info["tissue_peak_hu"], info["noise_hu"])
    maps = {}
    for name, values in (("cbf", cbf_v), ("cbv", cbv_v), ("mtt", mtt_v), ("tmax", tmax_v), ("ttp", ttp_v)):
        out = np.zeros(tissue.shape, dtype=np.float32)
        out[tissue] = np.clip(values, 0.0, None)
        maps[name] = out
    return PerfusionMaps(mip=mip, tissue=tissue, aif=np.asarray(aif, dtype=np.float32), info=info, **maps)
