"""Digital head phantom for CT perfusion: anatomy, vascular territories and ischemic lesions.

Geometry is defined in millimetres over a fixed field of view, so the same patient can be rasterised at
128x128 or at the paper's 512x512 (0.4366 mm). Axes: x lateral (+ = left), y anterior, z superior.
All fields are arrays of shape ``(X, Y, Z)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

FIELD_OF_VIEW_MM = 512 * 0.43664551
"""Field of view of the paper's 512x512 maps (mm)."""

# anatomical classes
AIR, BONE, CSF, GM, WM, ARTERY, VEIN = range(7)
TISSUE_NAMES = ("air", "bone", "csf", "gm", "wm", "artery", "vein")
# vascular territories
NO_TERRITORY, ACA, MCA, PCA = range(4)
# ischemic state by construction; label values are the first three (DESIGN.md)
HEALTHY, PENUMBRA, CORE, OLIGAEMIA = range(4)

BASELINE_HU = {AIR: -1000.0, BONE: 1000.0, CSF: 10.0, GM: 35.0, WM: 29.0, ARTERY: 40.0, VEIN: 40.0}


@dataclass(frozen=True)
class Grid:
    """Voxel grid: in-plane size, number of slices, and spacing (mm)."""

    size: int = 128
    slices: int = 8
    slice_thickness: float = 5.0
    first_slice_mm: float = 15.0

    @property
    def pixel_mm(self) -> float:
        return FIELD_OF_VIEW_MM / self.size

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (self.pixel_mm, self.pixel_mm, self.slice_thickness)

    def affine(self) -> np.ndarray:
        """Voxel-to-world (mm) affine with the origin at the image centre."""
        aff = np.diag([*self.spacing, 1.0])
        aff[:2, 3] = -FIELD_OF_VIEW_MM / 2 + self.pixel_mm / 2
        aff[2, 3] = self.first_slice_mm + self.slice_thickness / 2
        return aff

    def coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y, z (mm) of every voxel centre; z is height above the slab reference."""
        aff = self.affine()
        idx = [np.arange(n, dtype=np.float64) for n in (self.size, self.size, self.slices)]
        axes = [aff[i, i] * idx[i] + aff[i, 3] for i in range(3)]
        return np.meshgrid(*axes, indexing="ij")


def smooth_field(shape: tuple[int, ...], sigma_px: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise, rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return (field - field.mean()) / max(field.std(), 1e-12)


@dataclass
class Anatomy:
    """A patient's head: tissue classes, territories, hemisphere side, and normalised brain radius."""

    tissue: np.ndarray
    territory: np.ndarray
    left: np.ndarray
    brain_radius: np.ndarray
    coords: tuple[np.ndarray, np.ndarray, np.ndarray]


def head_anatomy(grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Rasterise one patient's head with random size, pose, gyral pattern and ventricle size."""
    x, y, z = grid.coordinates()
    angle = np.deg2rad(rng.uniform(-6, 6))
    x0, y0 = rng.uniform(-4, 4, size=2)
    u = np.cos(angle) * (x - x0) + np.sin(angle) * (y - y0)
    w = -np.sin(angle) * (x - x0) + np.cos(angle) * (y - y0)
    scale = rng.uniform(0.92, 1.06)
    height = np.sqrt(np.clip(1 - ((z - 40.0) / 95.0) ** 2, 0.05, None))
    a, b = 75.0 * scale * height, 95.0 * scale * height  # head semi-axes (mm)
    skull = rng.uniform(5.5, 8.0)
    a_in, b_in = a - skull, b - skull
    head_r = np.hypot(u / a, w / b)
    brain_r = np.hypot(u / a_in, w / b_in)
    theta = np.arctan2(w, u)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    gyri = 0.5 * np.sin(14 * theta + phase[0] + 0.08 * z) + 0.5 * np.sin(23 * theta + phase[1] - 0.05 * z)

    tissue = np.full(x.shape, AIR, dtype=np.uint8)
    tissue[head_r <= 1] = BONE
    tissue[brain_r <= 1] = CSF
    tissue[brain_r <= 0.965] = GM
    tissue[brain_r <= 0.84 + 0.035 * gyri] = WM
    deep = np.hypot((np.abs(u) - 0.25 * a_in) / (0.12 * a_in), (w - 0.03 * b_in) / (0.2 * b_in)) <= 1
    tissue[deep & (z < 60)] = GM
    vent = rng.uniform(0.7, 1.4)
    vent_extent = np.clip(1 - ((z - 50.0) / 28.0) ** 2, 0, None)
    ventricle = np.hypot((np.abs(u) - 0.09 * a_in) / (0.06 * a_in * vent + 1e-6), w / (0.3 * b_in * vent_extent + 1e-6))
    tissue[(ventricle <= 1) & (vent_extent > 0)] = CSF
    tissue[(np.abs(u) < 1.2) & (np.abs(w) > 0.3 * b_in) & (brain_r <= 1)] = CSF  # interhemispheric fissure

    # vessels: middle cerebral arteries in the Sylvian fissures, anterior cerebral artery, sagittal sinus
    pixel = grid.pixel_mm
    radius = max(2.0, 0.8 * pixel)
    mca = np.hypot(np.abs(u) - 0.47 * a_in, w - 0.12 * b_in) <= radius
    tissue[mca & (z < 50)] = ARTERY
    aca = np.hypot(u, w - 0.5 * b_in) <= max(1.6, 0.8 * pixel)
    tissue[aca & (z > 25) & (z < 75)] = ARTERY
    sinus = np.hypot(u, w + b_in - 5.0) <= max(4.0, 0.8 * pixel)
    tissue[sinus & (brain_r <= 1.02)] = VEIN

    wobble = 0.06 * smooth_field(x.shape, (6.0 / pixel, 6.0 / pixel, 1.0), rng)
    territory = np.full(x.shape, MCA, dtype=np.uint8)
    aca_width = 0.28 * (1 + 0.4 * np.clip((z - 40.0) / 50.0, -0.5, 1.0))
    territory[(np.abs(u) / a_in < aca_width + wobble) & (w / b_in > -0.25 + wobble)] = ACA
    territory[w / b_in < -0.55 + wobble] = PCA
    territory[brain_r > 1] = NO_TERRITORY
    return Anatomy(tissue=tissue, territory=territory, left=u > 0, brain_radius=brain_r, coords=(u, w, z))


@dataclass
class Lesion:
    """Ischemic state and the perfusion changes it implies, relative to healthy tissue.

    ``delay`` replaces the healthy arrival delay in lesion voxels, or adds to it everywhere when
    ``extra_delay``; ``latent`` holds what a lesion model knows and no map shows (tissue fate models).
    """

    state: np.ndarray
    rcbf: np.ndarray
    rcbv: np.ndarray
    delay: np.ndarray
    affected_left: bool | None
    extra_delay: bool = False
    latent: dict = field(default_factory=dict)


def _grade(severity: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((severity - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _lesion_from_severity(
    severity: np.ndarray, allowed: np.ndarray, brain: np.ndarray, s_pen: float, s_core: float, rim: float
) -> Lesion:
    """Turn a severity field into states: core > s_core >= penumbra > s_pen >= oligaemia > s_pen - rim."""
    state = np.full(severity.shape, HEALTHY, dtype=np.uint8)
    hypo = allowed & brain & (severity > s_pen)
    core = hypo & (severity > s_core)
    olig = brain & ~hypo & (severity > s_pen - rim)
    state[olig] = OLIGAEMIA
    state[hypo] = PENUMBRA
    state[core] = CORE
    rcbf, rcbv, delay = np.ones(severity.shape), np.ones(severity.shape), np.zeros(severity.shape)
    q = _grade(severity, s_pen - rim, s_pen)
    rcbf[olig], rcbv[olig], delay[olig] = 0.95 - 0.2 * q[olig], 1.0 + 0.1 * q[olig], 2.0 + 3.5 * q[olig]
    pen = hypo & ~core
    q = _grade(severity, s_pen, s_core)
    rcbf[pen], rcbv[pen], delay[pen] = 0.6 - 0.28 * q[pen], 1.05 - 0.25 * q[pen], 6.5 + 3.5 * q[pen]
    top = severity[core].max() if core.any() else s_core + 1
    q = _grade(severity, s_core, top)
    rcbf[core], rcbv[core], delay[core] = 0.28 - 0.2 * q[core], 0.55 - 0.3 * q[core], 10.0 + 4.0 * q[core]
    return Lesion(state=state, rcbf=rcbf, rcbv=rcbv, delay=delay, affected_left=None)


def no_lesion(anatomy: Anatomy) -> Lesion:
    """Healthy brain (WIS patients)."""
    shape = anatomy.tissue.shape
    return Lesion(np.zeros(shape, np.uint8), np.ones(shape), np.ones(shape), np.zeros(shape), None)


def brain_tissue(anatomy: Anatomy) -> np.ndarray:
    """Grey and white matter: where perfusion and labels are defined."""
    return (anatomy.tissue == GM) | (anatomy.tissue == WM)


def proximal_severity(
    anatomy: Anatomy, grid: Grid, rng: np.random.Generator, radii_mm: tuple[tuple[float, float], ...]
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Severity of a proximal occlusion: 1 at a deep centre of the affected hemisphere, falling off over an
    ellipsoid whose semi-axes are drawn from ``radii_mm`` ranges, perturbed by smooth noise.

    Returns the severity, the occluded territory (MCA 80 %, else MCA + ACA, on the affected side) and
    whether the left side is affected.
    """
    u, w, z = anatomy.coords
    left = bool(rng.random() < 0.5)
    side = anatomy.left if left else ~anatomy.left
    territories = [MCA] if rng.random() < 0.8 else [MCA, ACA]
    allowed = side & np.isin(anatomy.territory, territories)
    sign = 1.0 if left else -1.0
    z_mid = grid.first_slice_mm + grid.slices * grid.slice_thickness / 2
    centre = (sign * rng.uniform(30, 40), rng.uniform(-10, 15), z_mid + rng.uniform(-10, 10))
    radii = tuple(rng.uniform(lo, hi) for lo, hi in radii_mm)
    dist = np.sqrt(sum(((c - c0) / r) ** 2 for c, c0, r in zip((u, w, z), centre, radii)))
    noise = smooth_field(u.shape, (8.0 / grid.pixel_mm, 8.0 / grid.pixel_mm, 1.0), rng)
    return 1.0 - dist + 0.12 * noise, allowed, left


def distal_severity(
    anatomy: Anatomy,
    grid: Grid,
    rng: np.random.Generator,
    radius_mm: tuple[float, float],
    depth_mm: tuple[float, float],
) -> np.ndarray:
    """Severity of one to three distal occlusions: the maximum of ellipsoidal fall-offs (in-plane radius
    from ``radius_mm``, half-height from ``depth_mm``) around random points of the outer brain, plus smooth
    noise."""
    u, w, z = anatomy.coords
    candidates = np.argwhere(brain_tissue(anatomy) & (anatomy.brain_radius > 0.45) & (anatomy.brain_radius < 0.92))
    severity = np.full(u.shape, -np.inf)
    for _ in range(int(rng.integers(1, 4))):
        i, j, k = candidates[rng.integers(len(candidates))]
        radius = rng.uniform(*radius_mm)
        radii = (radius, radius * rng.uniform(0.7, 1.3), rng.uniform(*depth_mm))
        dist = np.sqrt(sum(((c - c[i, j, k]) / r) ** 2 for c, r in zip((u, w, z), radii)))
        severity = np.maximum(severity, 1.0 - dist)
    noise = smooth_field(u.shape, (4.0 / grid.pixel_mm, 4.0 / grid.pixel_mm, 1.0), rng)
    return severity + 0.08 * noise


def lvo_lesion(anatomy: Anatomy, grid: Grid, rng: np.random.Generator) -> Lesion:
    """Territory-sized lesion of a proximal occlusion: core inside penumbra, benign-oligaemia rim.

    The ``separable`` lesion model: each class has its own range of delay (Tmax) and relative CBF, so the
    RAPID thresholds recover the labels by construction (kept to compare with :mod:`scripts.simulation.fate`).

    MCA occlusions (80 %) or ICA occlusions (MCA + ACA territories); severity falls off from a deep
    centre in the affected hemisphere, perturbed by smooth noise.
    """
    severity, allowed, left = proximal_severity(anatomy, grid, rng, ((45, 65), (60, 85), (30, 50)))
    side = anatomy.left if left else ~anatomy.left
    brain = brain_tissue(anatomy)
    s_pen = rng.uniform(0.35, 0.55)
    hypo = allowed & brain & (severity > s_pen)
    core_fraction = rng.uniform(0.04, 0.16)
    s_core = float(np.quantile(severity[hypo], 1 - core_fraction)) if hypo.any() else 2.0
    lesion = _lesion_from_severity(severity, allowed, brain & side, s_pen, s_core, rim=0.25)
    lesion.affected_left = left
    return lesion


def distal_lesion(anatomy: Anatomy, grid: Grid, rng: np.random.Generator) -> Lesion:
    """One to three small distal lesions (Non-LVO): mostly penumbra, a small core or none (``separable``)."""
    brain = brain_tissue(anatomy)
    severity = distal_severity(anatomy, grid, rng, radius_mm=(10, 22), depth_mm=(4, 9))
    s_core = rng.uniform(0.45, 0.75) if rng.random() < 0.7 else 2.0
    return _lesion_from_severity(severity, brain, brain, 0.0, s_core, rim=0.4)
