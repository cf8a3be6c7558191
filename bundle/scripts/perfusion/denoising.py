"""Lesion-preserving denoising of CT perfusion curves: the TIPS bilateral filter (Mendrik et al. 2011).

A Gaussian smooths every voxel's time-intensity profile (TIP) with its neighbours' whatever they are, so
healthy flow spreads into a small ischaemic region and inflates the flow measured there. The
time-intensity-profile-similarity (TIPS) bilateral filter of Mendrik et al. (Phys Med Biol 2011;56:3857-72)
weighs each neighbour by its distance *and* by how alike the two profiles are: the same tissue averages, a
neighbour whose curve differs (another tissue, a lesion border) barely counts.

Here, per voxel ``p`` and in-plane neighbour ``q`` (tissue only):

    w(p, q) = exp(-|p - q|^2 / (2 sigma_s^2)) * exp(-D^2(p, q) / (2 (h sigma_D)^2))

``D^2`` is the mean squared difference of the two profiles projected on the tissue's
:data:`TIPS_COMPONENTS` leading temporal components (:func:`signal_basis`): the bolus's shapes keep nearly
all of the difference between core and healthy curves, while white noise keeps only ``k / T`` of its
energy (over all frames, the noise term would swamp that difference at typical 5-15 HU). ``sigma_D^2 =
2 sigma_n^2`` is what noise alone gives ``D^2`` for identical tissue (``sigma_n``: the median single-voxel
noise over the baseline frames), so ``h`` (``range_scale``) is unitless. The filter runs
separably, along x then along y (Pham and van Vliet 2005), so its cost grows with the kernel's width, not its
area; slices are filtered in parallel threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

DENOISING = ("tips", "gaussian")
"""Denoisings of the curves before deconvolution: the TIPS bilateral filter or a Gaussian within tissue."""

TIPS_COMPONENTS = 3
"""Temporal components the profiles are projected on before their distance is taken."""


def signal_basis(curves: np.ndarray, tissue: np.ndarray, components: int = TIPS_COMPONENTS) -> np.ndarray:
    """The leading temporal singular vectors ``(T, k)`` of the tissue's profiles (at most 20000 of them): the
    few shapes the bolus gives; white noise spreads evenly over all ``T`` and keeps its variance per component."""
    sample = curves[tissue]
    sample = sample[:: max(1, len(sample) // 20000)]
    if len(sample) < components:
        return np.eye(curves.shape[-1], components, dtype=np.float32)
    _, _, vt = np.linalg.svd(sample.astype(np.float64), full_matrices=False)
    return vt[:components].T.astype(np.float32)


def _pass(
    curves: np.ndarray, tissue: np.ndarray, axis: int, sigma: float, range_var: float, basis: np.ndarray
) -> np.ndarray:
    """One bilateral pass along ``axis`` (0 or 1) of one slice's profiles ``(X, Y, T)``, within ``tissue``."""
    radius = int(np.ceil(3.0 * sigma))
    if radius == 0 or sigma <= 0:
        return curves
    profiles = curves @ basis
    weight_sum = np.zeros(curves.shape[:2], dtype=np.float32)
    total = np.zeros_like(curves)
    length = curves.shape[axis]
    for offset in range(-radius, radius + 1):
        # p takes q = p + offset: both inside the slice
        lo, hi = max(0, -offset), min(length, length - offset)
        if lo >= hi:
            continue
        p = [slice(None), slice(None)]
        q = [slice(None), slice(None)]
        p[axis], q[axis] = slice(lo, hi), slice(lo + offset, hi + offset)
        p, q = tuple(p), tuple(q)
        distance = np.mean((profiles[p] - profiles[q]) ** 2, axis=-1)
        w = np.exp(-(offset * offset) / (2.0 * sigma * sigma) - distance / (2.0 * range_var)).astype(np.float32)
        w *= tissue[q]
        weight_sum[p] += w
        total[p] += w[..., None] * curves[q]
    return np.where(weight_sum[..., None] > 0, total / np.maximum(weight_sum, 1e-12)[..., None], curves)


def tips_filter(
    curves: np.ndarray,
    tissue: np.ndarray,
    sigma_px: tuple[float, float],
    noise_hu: float,
    range_scale: float = 1.0,
) -> np.ndarray:
    """TIPS bilateral filter of concentration profiles ``(X, Y, Z, T)`` within ``tissue`` ``(X, Y, Z)``.

    ``sigma_px``: spatial Gaussian sigma in pixels (x, y); ``noise_hu``: median single-voxel noise of a frame;
    ``range_scale``: the profile-distance scale in units of what noise alone gives. Voxels outside ``tissue``
    neither give nor take. Returns float32 profiles of the same shape.
    """
    curves = np.asarray(curves, dtype=np.float32)
    basis = signal_basis(curves, tissue)
    range_var = float(range_scale**2 * 2.0 * max(noise_hu, 1e-3) ** 2)
    out = np.empty_like(curves)

    def one_slice(z: int) -> None:
        mask = tissue[:, :, z].astype(np.float32)
        filtered = curves[:, :, z] * mask[..., None]
        for axis in (0, 1):
            filtered = _pass(filtered, mask, axis, float(sigma_px[axis]), range_var, basis)
        out[:, :, z] = filtered * mask[..., None]

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one_slice, range(curves.shape[2])))
    return out


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


def noise_level(ctp: np.ndarray, tissue: np.ndarray, n_base: int) -> float | None:
    """The noise of one voxel in one frame (HU): the median SD over the ``n_base`` baseline frames in ``tissue``,
    else (fewer than 2) the median absolute frame-to-frame difference as one frame's SD; ``None`` without tissue."""
    if n_base >= 2 and tissue.any():
        return float(np.median(ctp[..., :n_base][tissue].std(axis=1, ddof=1)))
    if tissue.any():
        return float(np.median(np.abs(np.diff(ctp[tissue], axis=1))) / 0.6745 / np.sqrt(2))
    return None


def denoise_curves(
    ctp: np.ndarray,
    baseline: np.ndarray,
    tissue: np.ndarray,
    sigma_px: tuple[float, float],
    noise_hu: float | None,
    denoising: str = "tips",
    tips_range: float = 1.0,
) -> np.ndarray:
    """Concentration curves ``(V, T)`` of the ``tissue`` voxels (``ctp`` minus its ``baseline``), denoised in-plane:
    by :func:`tips_filter` (``"tips"``, when the noise is known) or :func:`smooth_tissue_curves` (``"gaussian"``)."""
    if denoising == "tips" and max(sigma_px) > 0 and noise_hu is not None:
        box = tuple(_extent(tissue, axis) for axis in range(3))
        concentration = ctp[box] - baseline[box][..., None]
        return tips_filter(concentration, tissue[box], sigma_px, noise_hu, tips_range)[tissue[box]]
    return smooth_tissue_curves(ctp, baseline, tissue, sigma_px)
