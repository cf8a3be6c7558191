"""Small lesions beside large tiles of the same tissue: what a denoising does to a region a few mm across.

Built from the Kudo-style phantom's pieces (:mod:`.digital_phantom`: Parker's AIF, box residue, integer HU),
not from the cohort simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .digital_phantom import CSF_HU, PhantomDesign, convolve, parker_aif, residue, vessel_curves

LESION_CLASSES = {"core": (10.0, 2.0, 2.0), "penumbra": (25.0, 4.0, 4.0)}
"""Small-lesion classes: CBF (ml/100 g/min), CBV (ml/100 g) and delay (s) of the lesion tissue."""

HEALTHY = (60.0, 4.0, 0.0)
"""CBF, CBV and delay of the grey matter around the small lesions."""


@dataclass
class LesionPhantom:
    """Small square lesions (``sizes_mm``) inside healthy tiles, beside large tiles of the same lesion tissue."""

    ctp: np.ndarray
    aif: np.ndarray
    spacing: tuple[float, float, float]
    frame_interval: float
    truth_cbf: np.ndarray
    regions: dict[tuple[str, str], np.ndarray]
    """Per (class, size) — size ``"2 mm"`` ... or ``"large"`` — the voxels scored: a small lesion's own voxels,
    a large tile's interior (3 pixels in from its edge)."""


def make_lesion_phantom(
    noise_hu: float = 0.0,
    sizes_mm: tuple[int, ...] = (2, 4, 6),
    sections: int = 4,
    frame_interval: float = 1.0,
    shape: str = "box",
    seed: int = 0,
) -> LesionPhantom:
    """Each section: per lesion class a row of 16 mm tiles, a small lesion of each size centred in healthy grey
    matter, then a large tile of lesion tissue; an artery and a vein as in
    :func:`.digital_phantom.make_phantom`; 1 mm pixels."""
    d = PhantomDesign()
    times = d.frame_times(frame_interval)
    fine = np.arange(0.0, times[-1] + 10.0, d.fine_dt)
    aif_fine = parker_aif(fine, d.aif_peak_hu, d.aif_peak_s)
    scale = d.rho / d.k_h

    def curve(cbf: float, cbv: float, delay: float) -> np.ndarray:
        mtt = 60.0 * cbv / cbf
        tissue = convolve(aif_fine, residue(shape, fine, mtt), d.fine_dt)
        return scale * (cbf / 6000.0) * np.interp(times - delay, fine, tissue, left=0.0)

    tile, gap = 16, 2
    n_cols, n_rows = len(sizes_mm) + 1, len(LESION_CLASSES) + 1
    nx, ny = gap + n_cols * (tile + gap), gap + n_rows * (tile + gap)
    baseline = np.full((nx, ny, sections), CSF_HU)
    enhancement = np.zeros((nx, ny, sections, times.size))
    truth = np.zeros((nx, ny, sections), dtype=np.float32)
    regions: dict[tuple[str, str], np.ndarray] = {}
    healthy = curve(*HEALTHY)
    for row, (name, values) in enumerate(LESION_CLASSES.items()):
        lesion = curve(*values)
        y0 = gap + row * (tile + gap)
        for col in range(n_cols):
            x0 = gap + col * (tile + gap)
            sx, sy = slice(x0, x0 + tile), slice(y0, y0 + tile)
            baseline[sx, sy] = d.baseline_hu
            region = np.zeros((nx, ny, sections), dtype=bool)
            if col < len(sizes_mm):
                size = int(sizes_mm[col])
                enhancement[sx, sy] = healthy
                truth[sx, sy] = HEALTHY[0]
                c = tile // 2 - size // 2
                lx, ly = slice(x0 + c, x0 + c + size), slice(y0 + c, y0 + c + size)
                enhancement[lx, ly], truth[lx, ly] = lesion, values[0]
                region[lx, ly] = True
                regions[name, f"{size} mm"] = region
            else:
                enhancement[sx, sy], truth[sx, sy] = lesion, values[0]
                region[x0 + 3 : x0 + tile - 3, y0 + 3 : y0 + tile - 3] = True
                regions[name, "large"] = region
    artery, vein = vessel_curves(d, times, fine, aif_fine)
    y0 = gap + len(LESION_CLASSES) * (tile + gap)
    for col, signal in enumerate((artery, vein)):
        x0 = gap + col * (tile + gap) + 6
        baseline[x0 : x0 + 4, y0 + 6 : y0 + 10] = 40.0
        enhancement[x0 : x0 + 4, y0 + 6 : y0 + 10] = signal
    ctp = baseline[..., None] + enhancement
    if noise_hu > 0:
        ctp = ctp + np.random.default_rng(seed).normal(0.0, noise_hu, ctp.shape)
    return LesionPhantom(
        ctp=np.round(ctp).astype(np.float32),
        aif=artery.astype(np.float32),
        spacing=(d.spacing_mm, d.spacing_mm, 5.0),
        frame_interval=float(frame_interval),
        truth_cbf=truth,
        regions=regions,
    )


def lesion_errors(phantom: LesionPhantom, cbf: np.ndarray) -> dict[tuple[str, str], float]:
    """Median relative CBF error over each region of :attr:`LesionPhantom.regions`."""
    return {
        key: float(np.median(cbf[region] / phantom.truth_cbf[region] - 1.0)) for key, region in phantom.regions.items()
    }
