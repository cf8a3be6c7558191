"""Simulate one patient's 4D CT perfusion study with known tissue truth.

The head phantom (:mod:`scripts.simulation.phantom`) gives anatomy and the ischemic state by construction; healthy
perfusion values vary smoothly within each tissue class; lesions scale CBF and CBV and set the arrival
delay (and so Tmax); tissue curves follow the indicator-dilution model (:mod:`scripts.simulation.tracer`) on a fine
time grid, are sampled at the frame interval, and get CT noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..perfusion.svd import parabolic_peak
from . import fate
from . import phantom as ph
from .tracer import ArterialInput, TissueCurveTable, disperse

GROUPS = ("LVO", "Non-LVO", "WIS")
LESION_MODELS = {
    "fate": {"LVO": fate.fate_lvo_lesion, "Non-LVO": fate.fate_distal_lesion},
    "separable": {"LVO": ph.lvo_lesion, "Non-LVO": ph.distal_lesion},
}
"""Lesion models: ``fate`` (labels are the tissue's latent fate, :mod:`scripts.simulation.fate`; the default) and
``separable`` (the former construction, one map separates each class, :func:`scripts.simulation.phantom.lvo_lesion`)."""
REFERENCE_PIXEL_MM = 0.43664551
REFERENCE_SLICE_MM = 5.0


@dataclass
class Study:
    """A simulated study: the 4D series in HU and everything known by construction."""

    ctp: np.ndarray
    frame_interval: float
    grid: ph.Grid
    label: np.ndarray
    state: np.ndarray
    tissue: np.ndarray
    truth: dict[str, np.ndarray]
    aif: ArterialInput
    noise_sigma_hu: float
    meta: dict = field(default_factory=dict)


def voxel_noise_sigma(noise_hu: float, grid: ph.Grid) -> float:
    """Per-voxel noise for ``noise_hu`` specified at the paper's 0.4366 mm x 5 mm voxel (sigma ~ 1/sqrt(volume))."""
    volume_ratio = (grid.pixel_mm / REFERENCE_PIXEL_MM) ** 2 * (grid.slice_thickness / REFERENCE_SLICE_MM)
    return float(noise_hu / np.sqrt(volume_ratio))


def random_arterial_input(rng: np.random.Generator) -> ArterialInput:
    """A patient's AIF: peak 200-500 HU, arrival 4-9 s, width and recirculation varied."""
    return ArterialInput(
        peak_hu=rng.uniform(200, 500),
        t0=rng.uniform(4, 9),
        alpha=rng.uniform(2.5, 4.0),
        beta=rng.uniform(1.2, 2.0),
        recirculation=rng.uniform(0.1, 0.25),
        recirculation_delay=rng.uniform(10, 15),
    )


def simulate_study(
    group: str,
    grid: ph.Grid,
    rng: np.random.Generator,
    noise_hu: float = 8.0,
    n_frames: int = 60,
    frame_interval: float = 1.0,
    lesion_model: str = "fate",
) -> Study:
    """Simulate one study of ``group`` (``"LVO"``, ``"Non-LVO"`` or ``"WIS"``) on ``grid`` with a lesion of
    ``lesion_model`` (see :data:`LESION_MODELS`)."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}.")
    if lesion_model not in LESION_MODELS:
        raise ValueError(f"lesion_model must be one of {tuple(LESION_MODELS)}, got {lesion_model!r}.")
    anatomy = ph.head_anatomy(grid, rng)
    if group == "WIS":
        lesion = ph.no_lesion(anatomy)
    else:
        lesion = LESION_MODELS[lesion_model][group](anatomy, grid, rng)
    tissue, shape = anatomy.tissue, anatomy.tissue.shape
    brain = ph.brain_tissue(anatomy)
    sigma = (5.0 / grid.pixel_mm, 5.0 / grid.pixel_mm, 0.7)
    cbf, cbv, mtt, delay = true_perfusion(anatomy, lesion, brain, sigma, rng)

    aif = random_arterial_input(rng)
    times = np.arange(n_frames) * frame_interval
    table = TissueCurveTable(aif, duration=float(times[-1]) + frame_interval)
    enhancement = np.zeros(shape + (n_frames,), dtype=np.float32)
    enhancement[brain] = table.sample(cbf[brain], mtt[brain], delay[brain], times)

    add_vessels(enhancement, anatomy, lesion, aif, times, table, rng)

    ttp = np.zeros(shape, dtype=np.float32)
    curves = enhancement[brain]
    ttp[brain] = parabolic_peak(curves, curves.argmax(axis=1)) * frame_interval
    del curves

    lookup = np.array([ph.BASELINE_HU[c] for c in range(len(ph.TISSUE_NAMES))], dtype=np.float32)
    baseline = lookup[tissue]
    baseline += np.where(tissue == ph.BONE, 250.0, 1.0) * ph.smooth_field(shape, sigma, rng)
    baseline[lesion.state == ph.CORE] -= rng.uniform(1, 3)  # early ischemic hypodensity

    noise_sigma = voxel_noise_sigma(noise_hu, grid)
    ctp = enhancement
    ctp += baseline[..., None]
    add_ct_noise(ctp, noise_sigma, rng)

    label = np.where(brain & (lesion.state == ph.PENUMBRA), 1, 0) + np.where(brain & (lesion.state == ph.CORE), 2, 0)
    truth = {
        "cbf": cbf.astype(np.float32),
        "cbv": cbv.astype(np.float32),
        "mtt": mtt.astype(np.float32),
        "tmax": delay.astype(np.float32),
        "ttp": ttp,
    }
    meta = {
        "affected_side": None if lesion.affected_left is None else ("left" if lesion.affected_left else "right"),
        "lesion_model": lesion_model if group != "WIS" else None,
    }
    if (
        lesion.latent
    ):  # the fate model's parameters, and its true relative flow now and during ischaemia (for its oracle)
        meta["fate"] = {key: value for key, value in lesion.latent.items() if np.ndim(value) == 0}
        truth["rcbf"] = np.where(brain, lesion.rcbf, 0.0).astype(np.float32)
        truth["rcbf_ischaemic"] = np.where(brain, lesion.latent["rcbf_ischaemic"], 0.0).astype(np.float32)
    return Study(
        ctp=ctp,
        frame_interval=float(frame_interval),
        grid=grid,
        label=label.astype(np.uint8),
        state=np.where(brain, lesion.state, 0).astype(np.uint8),
        tissue=tissue,
        truth=truth,
        aif=aif,
        noise_sigma_hu=noise_sigma,
        meta=meta,
    )


def true_perfusion(
    anatomy: ph.Anatomy, lesion: ph.Lesion, brain: np.ndarray, sigma: tuple[float, ...], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True CBF, CBV, MTT and delay in ``brain``: healthy class means per patient with smooth within-class
    variation (``sigma`` px), times the lesion's relative flow and volume, its delay added or in place."""
    tissue, shape = anatomy.tissue, anatomy.tissue.shape
    gm = tissue == ph.GM
    cbf0 = np.where(gm, rng.uniform(50, 70), rng.uniform(20, 28)) * (1 + 0.12 * ph.smooth_field(shape, sigma, rng))
    cbv0 = np.where(gm, rng.uniform(3.5, 4.5), rng.uniform(1.7, 2.3)) * (1 + 0.08 * ph.smooth_field(shape, sigma, rng))
    delay0 = rng.uniform(0.3, 1.0) + 0.3 * np.abs(ph.smooth_field(shape, sigma, rng))
    cbf = np.where(brain, cbf0 * lesion.rcbf, 0.0)
    cbv = np.where(brain, cbv0 * lesion.rcbv, 0.0)
    mtt = np.where(brain, 60.0 * cbv / np.maximum(cbf, 1e-6), 0.0)
    lesion_delay = (
        delay0 + lesion.delay if lesion.extra_delay else np.where(lesion.state == ph.HEALTHY, delay0, lesion.delay)
    )
    return cbf, cbv, mtt, np.where(brain, lesion_delay, 0.0)


def add_vessels(
    enhancement: np.ndarray,
    anatomy: ph.Anatomy,
    lesion: ph.Lesion,
    aif: ArterialInput,
    times: np.ndarray,
    table: TissueCurveTable,
    rng: np.random.Generator,
) -> None:
    """Vessels' enhancement, in place: arteries carry the (partial-volumed) AIF, the occluded side's MCA a late
    collateral trickle, veins the AIF delayed and dispersed."""
    tissue = anatomy.tissue
    partial_volume = rng.uniform(0.6, 1.0)
    artery = tissue == ph.ARTERY
    enhancement[artery] = partial_volume * aif(times)
    if lesion.affected_left is not None:
        occluded = artery & (anatomy.left == lesion.affected_left) & (anatomy.territory == ph.MCA)
        enhancement[occluded] = 0.5 * partial_volume * aif(times - rng.uniform(3, 6))
    fine = table.t
    venous = disperse(aif(fine - rng.uniform(4, 6)), table.dt, tau=rng.uniform(2, 4))
    enhancement[tissue == ph.VEIN] = np.interp(times, fine, venous)


def add_ct_noise(ctp: np.ndarray, noise_sigma: float, rng: np.random.Generator) -> None:
    """CT noise of SD ``noise_sigma`` (HU), spatially correlated in-plane, added in place frame by frame (each
    frame drawn slices-first, so it is contiguous)."""
    if noise_sigma <= 0:
        return
    shape = ctp.shape[:3]
    slices_first = (shape[2], shape[0], shape[1])
    gain = None
    for t in range(ctp.shape[-1]):
        frame = ndimage.gaussian_filter(rng.standard_normal(slices_first, dtype=np.float32), (0.0, 0.6, 0.6))
        gain = gain or noise_sigma / max(float(frame.std()), 1e-12)
        ctp[..., t] += gain * frame.transpose(1, 2, 0)
