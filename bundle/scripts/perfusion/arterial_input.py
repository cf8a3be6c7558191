"""The arterial input (AIF) found automatically, rescaled for partial volume by the venous output (VOF).

The AIF is taken from the unsmoothed curves: among vessel-like voxels in soft tissue, away from bone, single
boluses that wash out, the highest of those that peak earliest. The VOF (the largest-area late curves shaped
like a delayed AIF) rescales it, since whole blood passes both (:func:`venous_scale`).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from .svd import deconvolve, parabolic_peak, window_fraction

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


RESAMPLED_AIF_WINDOW = 3
"""In-plane window (voxels) the automatic AIF is summed over in a series whose frames were resampled (motion
correction): linear interpolation spreads a vessel by at most one voxel each way (:func:`window_sum`)."""


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


EARLIEST_PERCENTILE = 1.0
"""Percentile of the strong arterial candidates' times to peak that "earliest" counts from
(:func:`select_arterial_input`)."""


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
    window: int = 1,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Automatic AIF: among vessel-like voxels, the highest of those that peak earliest; VOF-rescaled.

    Vessel-like voxels enhance by at least ``vessel_level`` times the ``candidate_percentile`` of the soft-tissue
    peaks where ``arterial_allowed`` (all soft tissue when not given): a skull edge that residual motion moves into
    soft tissue peaks at bone's HU, and counted it set the threshold above a motion-corrected series' arteries.
    Of those, a bolus curve rises and falls once (total variation at most
    :data:`BOLUS_VARIATION` times twice its peak), and an arterial one also washes out (its last quarter
    below :data:`WASHOUT_FRACTION` of its peak) and lies where ``arterial_allowed`` (e.g. away from bone):
    a voxel that a moved bone edge enters jumps up and down or keeps its step. Each rule applies only when
    at least ``n_voxels`` voxels pass it. "Earliest" is within 2 s of the :data:`EARLIEST_PERCENTILE` time to
    peak of the strong arterial candidates (peak at least half their 99th percentile, so that noise spikes do not
    set it): at a scanner's 512² the venous sinus gives most of the candidates, and the former rule, the 10th
    percentile of all of them, chose the sinus as the AIF. The VOF is the mean of the largest-area bolus curves
    peaking after the AIF whose shape is a delayed AIF's (:func:`delayed_match` at least :data:`VENOUS_MATCH`;
    none: no VOF). ``mip`` (the series' maximum over time) is computed when not given. ``window`` > 1 reads the
    AIF as each chosen voxel's in-plane ``window x window`` sum (:func:`window_sum`), for resampled series, unless
    that sum is no single bolus (the window used: ``aif_window`` in the summary).

    Returns the AIF curve (HU above baseline), a boolean mask of the voxels used and a summary dict.
    """
    peak_map = (ctp.max(axis=-1) if mip is None else mip) - baseline
    # vessels: enhancing at least `vessel_level` of the strongest voxels (robust high percentile), judged where an
    # artery may lie: a skull edge that residual motion moves into soft tissue peaks at bone's HU
    judged = soft if arterial_allowed is None else soft & arterial_allowed
    judged = judged if judged.any() else soft
    candidates = soft & (peak_map >= vessel_level * np.percentile(peak_map[judged], candidate_percentile))
    where = np.nonzero(candidates)
    curves = ctp[candidates] - baseline[candidates][:, None]
    peak = curves.max(axis=1)
    ttp = curves.argmax(axis=1)

    def enough(rule: np.ndarray) -> np.ndarray:
        return rule if rule.sum() >= n_voxels else np.ones_like(rule)

    bolus = enough(single_bolus(curves))
    washes = curves[:, -max(1, curves.shape[1] // 4) :].mean(axis=1) < WASHOUT_FRACTION * peak
    allowed = np.ones_like(bolus) if arterial_allowed is None else arterial_allowed[where]
    arterial = np.nonzero(enough(bolus & washes & allowed))[0]
    strong = arterial[peak[arterial] >= 0.5 * np.percentile(peak[arterial], 99.0)]
    early = arterial[ttp[arterial] <= np.percentile(ttp[strong], EARLIEST_PERCENTILE) + max(1, round(2.0 / dt))]
    chosen = early[np.argsort(peak[early])[::-1][:n_voxels]]
    aif = curves[chosen].mean(axis=0)
    if window > 1:  # the window's sum, if it is itself one bolus (a neighbour a moved bone edge entered is not)
        summed = window_sum(ctp, baseline, [i[chosen] for i in where], window)
        if single_bolus(summed[None])[0]:
            aif = summed
        else:
            window = 1
    info = {"aif_voxels": int(chosen.size), "aif_ttp_s": float(aif.argmax() * dt), "aif_window": int(window)}
    info.update(vof_scale=1.0, vof_hu=None)
    venous_like = delayed_match(curves, aif, max(1, round(VENOUS_LAG_S / dt))) >= VENOUS_MATCH
    late = np.nonzero(bolus & (ttp > aif.argmax()) & venous_like)[0]
    if late.size:
        auc = curves[late].sum(axis=1)
        vof = curves[late[np.argsort(auc)[::-1][:n_voxels]]].mean(axis=0)
        scale = venous_scale(aif, vof, dt)
        info["vof_scale"], info["vof_hu"] = float(scale), [round(float(v), 2) for v in vof]
        if scale > 1.0 or window > 1:  # a window's sum holds more than one voxel of blood: scaled down too
            aif = aif * scale
    info["aif_peak_hu"] = float(aif.max())
    voxel_mask = np.zeros(soft.shape, dtype=bool)
    voxel_mask[tuple(idx[chosen] for idx in where)] = True
    return aif, voxel_mask, info


def single_bolus(curves: np.ndarray) -> np.ndarray:
    """Whether each curve ``(V, T)`` rises and falls once: its total variation at most :data:`BOLUS_VARIATION` times
    the ``2 x peak`` of one clean rise and fall."""
    return np.abs(np.diff(curves, axis=1)).sum(axis=1) <= BOLUS_VARIATION * 2.0 * curves.max(axis=1)


def window_sum(ctp: np.ndarray, baseline: np.ndarray, index: list[np.ndarray], window: int) -> np.ndarray:
    """Mean over voxels ``index`` of the enhancement summed over each one's in-plane ``window x window``.

    A frame resampled by motion correction spreads a vessel one or two voxels wide over its neighbours by an amount
    that changes with the frame's sub-voxel shift (linear interpolation at half a voxel halves its peak), which
    distorts an AIF read voxel by voxel; the interpolation's weights sum to one, so the window's sum keeps the
    vessel's signal in every frame (plus its neighbours' small tissue enhancement; the venous scale sets the area).
    """
    x, y, z = (np.asarray(i) for i in index)
    total = np.zeros((x.size, ctp.shape[-1]))
    for dx, dy in itertools.product(range(-(window // 2), window // 2 + 1), repeat=2):
        xs, ys = np.clip(x + dx, 0, ctp.shape[0] - 1), np.clip(y + dy, 0, ctp.shape[1] - 1)
        total += ctp[xs, ys, z] - baseline[xs, ys, z][:, None]
    return total.mean(axis=0)


def delayed_match(curves: np.ndarray, aif: np.ndarray, max_lag: int) -> np.ndarray:
    """Each curve's best Pearson correlation with the AIF delayed by 0 to ``max_lag`` frames: a vein's curve is a
    delayed, dispersed AIF (about 0.95); a voxel that a moved bone edge entered steps up and stays (about 0.5)."""
    aif = np.asarray(aif, dtype=np.float64)
    shifted = np.stack([np.r_[np.zeros(lag), aif[: aif.size - lag]] for lag in range(min(max_lag, aif.size - 2) + 1)])

    def standard(a: np.ndarray) -> np.ndarray:
        return (a - a.mean(axis=-1, keepdims=True)) / (a.std(axis=-1, keepdims=True) + 1e-9)

    return (standard(np.asarray(curves, dtype=np.float64)) @ standard(shifted).T / aif.size).max(axis=1)


def venous_scale(aif: np.ndarray, vof: np.ndarray, dt: float) -> float:
    """Partial-volume factor of an arterial curve from a venous one: the vein's blood volume relative to it.

    Whole blood passes both, so a venous curve free of partial volume has the area of the true arterial
    input; the factor is the vein's area over the artery's, each over the window, corrected for the part of
    the input that reaches the vein after the last frame (:func:`.svd.window_fraction` of the vein's residue).
    """
    residue, _ = deconvolve(np.asarray(vof, dtype=np.float32)[None], aif, dt, method="bsvd", truncation=0.1)
    fraction = float(window_fraction(residue[:, : len(aif)], aif)[0])
    return float(np.sum(vof) / max(float(np.sum(aif)) * fraction, 1e-6))


def find_arterial_input(
    ctp: np.ndarray,
    first: np.ndarray,
    soft: np.ndarray,
    mip: np.ndarray,
    spacing: tuple[float, float],
    dt: float,
    aif: np.ndarray | None = None,
    baseline_frames: int | None = None,
    window: int = 1,
) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """The arterial input (given, or found by :func:`select_arterial_input` away from bone), the baseline of
    every voxel, its number of frames (those before the AIF reaches 10 % of its peak, unless
    ``baseline_frames``) and what was found. ``first``: the mean of the first two frames; ``soft``: soft tissue;
    ``window``: of :func:`select_arterial_input`.

    A first baseline from the strongest (vessel) curves finds the AIF; the AIF's own rise then sets it. With a
    given AIF the venous curve is still looked for (for the quality flags). An AIF peaking below
    :data:`MIN_AIF_PEAK_HU` is no bolus: refused.
    """
    baselines: dict[int, np.ndarray] = {}

    def baseline_of(frames: int) -> np.ndarray:
        if frames not in baselines:
            baselines[frames] = ctp[..., :frames].mean(axis=-1)
        return baselines[frames]

    info: dict = {}
    if aif is None:
        rise = mip - first
        strongest = soft & (rise >= np.percentile(rise[soft], 99.0))
        n_base = baseline_frame_count((ctp[strongest] - first[strongest][:, None]).mean(axis=0))
        reach = [int(np.ceil(BONE_MARGIN_MM / float(s))) for s in spacing[:2]]
        allowed = ~ndimage.maximum_filter(first > BONE_HU, size=(2 * reach[0] + 1, 2 * reach[1] + 1, 1))
        select = dict(mip=mip, arterial_allowed=allowed, window=window)
        aif, _, aif_info = select_arterial_input(ctp, baseline_of(n_base), soft, dt, **select)
        if baseline_frames is None and baseline_frame_count(aif) != n_base:
            n_base = baseline_frame_count(aif)
            aif, _, aif_info = select_arterial_input(ctp, baseline_of(n_base), soft, dt, **select)
        info.update(aif_info)
    else:
        n_base = baseline_frame_count(aif)
    n_base = int(n_base if baseline_frames is None else baseline_frames)
    baseline = baseline_of(n_base)
    info["baseline_frames"], info["curve_interval_s"] = n_base, dt
    if "vof_hu" not in info:
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
    return aif, baseline, n_base, info
