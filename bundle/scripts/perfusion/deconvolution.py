"""Perfusion maps (CBF, CBV, MTT, TTP, Tmax, MIP) from a raw 4D CT perfusion series.

Pipeline, vectorised over voxels (no per-voxel Python loops):

0. Uneven acquisitions (``frame_times``) are resampled linearly to an even grid at their shortest interval.
1. The arterial input (AIF, :mod:`.arterial_input`) is chosen automatically from the unsmoothed curves: the
   highest-enhancing voxels that peak earliest; the venous output (VOF) from the largest-area late voxels
   rescales the AIF for partial volume (``AUC_AIF = AUC_VOF``, the areas compared over what each holds of the
   bolus within the window, :func:`.arterial_input.venous_scale`). A given AIF skips this step. The AIF is
   searched in soft tissue (baseline HU inside ``soft_tissue_hu``: no air, no bone), the AIF also away from
   bone and among curves that rise, fall and wash out once (a moved skull edge mimics an artery otherwise).
2. The baseline is the frames before the AIF reaches 10 % of its peak (no tissue enhances before its
   artery); concentration = HU minus the voxel's mean baseline (CT enhancement is linear in contrast).
   A CBV area sums ``T`` frames less ``T`` times the baseline, so the baseline's noise counts ``T`` times and
   dominates CBV noise (Li et al., Med Phys 2019;46:4869). With ``baseline="arrival"`` (the default) the maps are
   computed twice: the second time each voxel's baseline also takes the frames before its own bolus arrives (its Tmax
   behind the artery, less :data:`ARRIVAL_MARGIN_S`, :func:`arrival_baseline`): more frames exactly where the
   bolus is late, the hypoperfused tissue.
3. Maps are computed in parenchyma (baseline inside ``parenchyma_hu``: no CSF) that does not enhance like a
   vessel. Curves are denoised in-plane within tissue (per-voxel CT noise would otherwise dominate): by
   default with the edge-preserving TIPS bilateral filter (:mod:`.denoising`; spatial sigma ``smoothing_mm``),
   which keeps a small lesion's curve its own; ``denoising="gaussian"`` smooths with a plain Gaussian, which
   spreads healthy flow into small ischaemic regions.
4. Deconvolution (:mod:`.svd`) is the delay-insensitive block-circulant SVD (Wu et al. 2003): the AIF zero-padded to
   ``2T`` forms a circulant matrix, whose SVD is its discrete Fourier transform, so truncating singular values
   below ``lambda * s_max`` is exactly zeroing those frequencies. With ``method="osvd"`` (default) ``lambda``
   is chosen per voxel as the smallest value of a ladder whose residue has an oscillation index below
   ``oscillation_limit``; the index is spike-aware (:func:`.svd.oscillation_index`), so a curve that is not an
   exact discrete convolution (every real scan) cannot drive the choice to a spike. ``method="bsvd"`` uses
   one fixed ``truncation``. The default was chosen on the independent phantom
   (:mod:`scripts.perfusion.digital_phantom`, ``benchmarks/perfusion_phantom.py``), not on the cohort simulator.
5. From the flow-scaled residue ``k(t) = (rho/k_H) CBF R(t - delay)``: CBF = ``(k_H/rho) max k`` (x6000),
   CBV = ``(k_H/rho) sum k dt`` (x100) divided by the fraction of the curve's area the window holds
   (:func:`.svd.window_fraction`: without it CBV reads low wherever the bolus has not washed out by the last
   frame), MTT = ``60 CBV / CBF``. Tmax is the time of the residue's peak behind the artery chosen as AIF,
   negative where tissue fills before it (its circulant residue begins in the wrapped end, read up to
   :data:`.svd.RISE_LEAD_S` before lag 0); the other maps are clipped at 0.
   ``tmax_method="rise"`` (default) reads it at the half-maximum rise that leads to the peak's plateau, which
   equals the time of the maximum for any non-increasing residue and is not shifted by the deconvolution's
   low-pass blur; ``"argmax"`` is the vendor convention (parabolic peak of ``k``), known to read about +2 s
   high at 1 s sampling (Kudo 2013). TTP is the parabolic peak time of the smoothed concentration, from the
   first frame.
6. MIP is the maximum HU over time (the whole image). Other maps are 0 outside tissue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io.images import MIN_FRAMES, validate_frame_times
from ..io.map_registry import computed_maps, signed_maps
from ..physics import K_H, RHO
from .arterial_input import find_arterial_input
from .denoising import DENOISING, denoise_curves, noise_level
from .quality import quality_flags
from .svd import METHODS, deconvolve, parabolic_peak, residue_peak_time, window_fraction

BASELINES = ("aif", "arrival")
"""Baselines: the frames before the arterial input rises (``aif``), or also those before each voxel's own
bolus arrives (``arrival``, :func:`arrival_baseline`)."""

ARRIVAL_MARGIN_S = 2.0
"""Seconds before a voxel's Tmax that its baseline frames stop (``baseline="arrival"``): the bolus's foot,
and a Tmax read late by noise, stay out of the baseline."""

MIN_WINDOW_FRACTION = 0.5
"""Smallest :func:`.svd.window_fraction` CBV is corrected by: a residue peaking so late (noise) is not trusted
further."""


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
    baseline: str = "arrival",
    aif_window: int = 1,
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
        method: ``"osvd"`` (per-voxel truncation from :data:`.svd.TRUNCATION_LADDER`) or ``"bsvd"`` (``truncation``).
        oscillation_limit: oSVD smoothness target (:func:`.svd.oscillation_index`).
        truncation: bSVD relative singular-value threshold.
        tmax_method: ``"rise"`` or ``"argmax"`` (see the module docstring).
        baseline_frames: pre-bolus frames; by default those before the AIF reaches 10 % of its peak.
        frame_times: acquisition time of each frame (s, strictly increasing) for uneven sampling; the
            series (and a given ``aif``) are resampled linearly to an even grid at the shortest interval.
            Times with steps equal within :data:`EVEN_TOLERANCE_S` are taken as even, without resampling.
        baseline: ``"aif"`` or ``"arrival"`` (:data:`BASELINES`; see the module docstring).
        aif_window: the automatic AIF's in-plane window (:func:`.arterial_input.window_sum`; 3 once resampled).
    """
    check_settings(denoising, tips_range, method, baseline)
    ctp, aif, dt, info = even_series(ctp, frame_interval, aif, frame_times)
    mip = ctp.max(axis=-1)
    first = ctp[..., :2].mean(axis=-1)
    soft = (first > soft_tissue_hu[0]) & (first < soft_tissue_hu[1])
    if soft.sum() < 16:
        raise ValueError(f"ctp: only {int(soft.sum())} voxels have a baseline in {soft_tissue_hu} HU; is it in HU?")
    found = find_arterial_input(ctp, first, soft, mip, spacing, dt, aif, baseline_frames, window=aif_window)
    aif, base, n_base, aif_info = found
    info.update(aif_info)
    vessel = mip - base > vessel_fraction * float(np.max(aif))
    tissue = soft & (base >= parenchyma_hu[0]) & (base <= parenchyma_hu[1]) & ~vessel
    sigma_px = tuple(smoothing_mm / float(s) for s in spacing[:2])
    noise_hu = noise_level(ctp, tissue, n_base)
    deconvolution = {"method": method, "oscillation_limit": oscillation_limit, "truncation": truncation}
    smooth = denoise_curves(ctp, base, tissue, sigma_px, noise_hu, denoising, tips_range)
    values, thresholds = residue_maps(smooth, aif, dt, tmax_method, **deconvolution)
    if baseline == "arrival":
        base = arrival_baseline(ctp, tissue, n_base, values["tmax"], dt, base)
        smooth = denoise_curves(ctp, base, tissue, sigma_px, noise_hu, denoising, tips_range)
        values, thresholds = residue_maps(smooth, aif, dt, tmax_method, **deconvolution)
    info.update(denoising=denoising, baseline=baseline)
    info["median_truncation"] = float(np.median(thresholds))
    # the parenchyma's mean enhancement from the curves already made (smoothing within tissue keeps the mean);
    # the noise from the raw baseline frames, as one voxel of one frame carries it
    info["tissue_peak_hu"] = float(smooth.mean(axis=0).max()) if smooth.size else 0.0
    info["noise_hu"] = noise_hu if n_base >= 2 else None
    vof = info.get("vof_hu")
    info["quality"] = quality_flags(None if vof is None else np.asarray(vof), info["tissue_peak_hu"], info["noise_hu"])
    maps, signed = {}, signed_maps()  # Tmax < 0: tissue that fills before the AIF
    for name, voxels in values.items():
        out = np.zeros(tissue.shape, dtype=np.float32)
        out[tissue] = voxels if name in signed else np.clip(voxels, 0.0, None)
        maps[name] = out
    return PerfusionMaps(mip=mip, tissue=tissue, aif=np.asarray(aif, dtype=np.float32), info=info, **maps)


def check_settings(denoising: str, tips_range: float, method: str, baseline: str) -> None:
    """Raise ``ValueError`` naming the setting of :func:`compute_perfusion_maps` that is not one it knows, before
    any work (the deconvolution would refuse a method only after the denoising)."""
    if denoising not in DENOISING:
        raise ValueError(f"denoising must be one of {DENOISING}, got {denoising!r}.")
    if not tips_range > 0:
        raise ValueError(f"tips_range must be a positive multiple of the noise, got {tips_range!r}.")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


def even_series(
    ctp: np.ndarray, frame_interval: float | None, aif: np.ndarray | None, frame_times: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, float, dict]:
    """The series (float32) and a given ``aif`` on an even time grid, its interval (s) and what was done.

    Uneven ``frame_times`` are resampled linearly at their shortest interval (:func:`uniform_grid`); times
    whose steps agree within :data:`EVEN_TOLERANCE_S` are even already. The series is validated first.
    """
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
    if aif is not None:
        aif = np.asarray(aif, dtype=np.float64)
        if aif.shape != (n_acquired,):
            raise ValueError(f"aif: expected {n_acquired} values (one per frame), got shape {aif.shape}.")
    if frame_times is not None:
        ctp = resample_frames(ctp, times, grid)
        aif = None if aif is None else resample_frames(aif, times, grid).astype(np.float64)
    return np.asarray(ctp, dtype=np.float32), aif, float(frame_interval), info


def arrival_baseline(
    ctp: np.ndarray, tissue: np.ndarray, n_base: int, tmax: np.ndarray, dt: float, base: np.ndarray
) -> np.ndarray:
    """``base`` with each ``tissue`` voxel's baseline re-taken over the frames before its own bolus arrives.

    A voxel's curve cannot rise before the artery's (``n_base`` frames) plus its own delay (``tmax``, seconds,
    one value per tissue voxel in ``ctp[tissue]`` order) less :data:`ARRIVAL_MARGIN_S`; at most half the frames.
    """
    most = max(n_base, ctp.shape[-1] // 2)
    stop = n_base + np.floor((tmax - ARRIVAL_MARGIN_S) / dt).astype(np.int64)
    stops = np.zeros(tissue.shape, dtype=np.int64)
    stops[tissue] = np.clip(stop, n_base, most)
    out = np.array(base, dtype=np.float32, copy=True)
    for z in range(ctp.shape[2]):  # a slice's cumulative sum at a time, not a second copy of the series
        inside = tissue[..., z]
        if not inside.any():
            continue
        total = np.cumsum(ctp[:, :, z, :most][inside], axis=-1, dtype=np.float64)  # no stop lies beyond
        count = stops[..., z][inside]
        out[..., z][inside] = total[np.arange(count.size), count - 1] / count
    return out


def residue_maps(
    curves: np.ndarray, aif: np.ndarray, dt: float, tmax_method: str = "rise", **deconvolution: Any
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """CBF, CBV, MTT, Tmax and TTP of denoised concentration curves ``(V, T)`` by ``aif``; each voxel's truncation.

    CBF is the residue's peak, CBV its area over the part of the bolus the window holds (:func:`.svd.window_fraction`,
    at least :data:`MIN_WINDOW_FRACTION`), MTT their ratio (central volume theorem), both in the units of the
    module docstring; Tmax and TTP in seconds. ``deconvolution``: keyword arguments of :func:`.svd.deconvolve`
    (``method``, ``oscillation_limit``, ``truncation``).
    """
    n_t = curves.shape[1]

    def summarise(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        in_window = np.clip(window_fraction(k[:, :n_t], aif), MIN_WINDOW_FRACTION, 1.0)
        return k.max(axis=1), k.sum(axis=1) / in_window, residue_peak_time(k, dt, n_t, tmax_method)

    (peak, area, tmax), thresholds = deconvolve(curves, aif, dt, summarise=summarise, **deconvolution)
    scale = K_H / RHO
    cbf = scale * peak * 6000.0
    cbv = scale * area * dt * 100.0
    mtt = np.where(cbf > 1e-3, 60.0 * cbv / np.maximum(cbf, 1e-3), 0.0)
    ttp = parabolic_peak(curves, curves.argmax(axis=1)) * dt
    return {"cbf": cbf, "cbv": cbv, "mtt": mtt, "tmax": tmax, "ttp": ttp}, thresholds
