"""Head motion in a CT perfusion series: rigid per-frame registration to a reference frame (SimpleITK).

Motion is the main reason perfusion software fails on real studies: a voxel's curve stops being one voxel's
tissue. Each frame is registered rigidly (3D Euler transform: 3 rotations, 3 translations) to the reference
frame (the first, acquired before the bolus) with ITK's registration framework: mean squares of the HU
(the skull and the skin-air border dominate, which contrast enhancement hardly changes), two resolution
levels (in-plane averages; slices are kept) ending at :data:`REGISTRATION_MM` voxels, regular-step gradient
descent, a fixed sampling seed per frame so that a study always gives the same result; frames are registered
in parallel threads. The frame is then resampled onto the reference grid (linear interpolation; at the
volume's edges the nearest voxel, so nothing is filled with a made-up value).

Each frame's displacement is the largest distance any head voxel moved (mm). Frames that moved less than
:data:`STILL_VOXEL_FRACTION` of the in-plane voxel are kept as acquired (resampling would only blur their
noise); frames that moved more than ``limit_mm`` are excluded (the time grid bridges the gap, as for uneven
sampling): through-plane motion of that size leaves slices with no data, and a frame that far off has often
moved during its own rotation too.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

STILL_VOXEL_FRACTION = 0.2
"""Displacement, as a fraction of the smaller in-plane voxel size, below which a frame is left as acquired."""

HEAD_HU = -200.0
"""Voxels of the reference frame above this (HU) are the head, whose displacement is measured."""

CLIP_HU = (-200.0, 1500.0)
"""HU range the registration compares (air and metal beyond it carry no alignment information)."""

REGISTRATION_MM = 2.0
"""In-plane voxel size (mm) the registration works at, at the finest (0.5 mm voxels are shrunk 4 times):
sub-millimetre motion is still found, at the cost of a 128² study whatever the scanner's matrix."""


@dataclass
class MotionCorrection:
    """What the correction found: per-frame displacement (mm), the frames excluded and those resampled."""

    displacement_mm: np.ndarray
    excluded: np.ndarray
    resampled: np.ndarray
    reference_frame: int = 0
    limit_mm: float = 10.0

    def as_dict(self) -> dict:
        """JSON-ready summary for ``perfusion.json``."""
        return {
            "reference_frame": self.reference_frame,
            "limit_mm": self.limit_mm,
            "displacement_mm": [None if np.isnan(v) else round(float(v), 3) for v in self.displacement_mm],
            "max_displacement_mm": round(float(np.nanmax(self.displacement_mm, initial=0.0)), 3),
            "unregistered_frames": [int(i) for i in np.nonzero(np.isnan(self.displacement_mm))[0]],
            "excluded_frames": [int(i) for i in np.nonzero(self.excluded)[0]],
            "resampled_frames": int(self.resampled.sum()),
        }


def _image(volume: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    """A SimpleITK image of an ``(X, Y, Z)`` array (SimpleITK indexes arrays ``(Z, Y, X)``)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


def levels(image: sitk.Image, shrink: int) -> tuple[sitk.Image, sitk.Image]:
    """The registration's two levels: ``image`` averaged in-plane over ``2 * shrink``, then ``shrink`` voxels;
    slices are never merged, so a slab of a few thick slices registers too."""
    return sitk.BinShrink(image, [2 * shrink, 2 * shrink, 1]), sitk.BinShrink(image, [shrink, shrink, 1])


def register_frame(
    fixed: sitk.Image,
    moving: sitk.Image,
    shrink: int = 1,
    seed: int = 0,
    fixed_levels: tuple[sitk.Image, sitk.Image] | None = None,
) -> sitk.Euler3DTransform:
    """Rigid transform mapping points of ``fixed`` to ``moving`` (both clipped to :data:`CLIP_HU`), found on
    their :func:`levels` (the last at about :data:`REGISTRATION_MM`); ``fixed_levels``: the fixed image's, when
    one reference serves many frames."""
    transform = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    pairs = zip((2 * shrink, shrink), fixed_levels or levels(fixed, shrink), levels(moving, shrink))
    for factor, fixed_level, moving_level in pairs:
        registration = sitk.ImageRegistrationMethod()
        registration.SetMetricAsMeanSquares()
        registration.MetricUseFixedImageGradientFilterOff()  # gradients on the fly: no 4-slice minimum
        registration.MetricUseMovingImageGradientFilterOff()
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(0.1 if factor == shrink else 0.25, seed)
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0,
            minStep=3e-4,
            numberOfIterations=200,
            relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-8,
        )
        registration.SetOptimizerScalesFromPhysicalShift()
        registration.SetInitialTransform(transform, inPlace=False)
        result = registration.Execute(fixed_level, moving_level)
        transform = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0))
    return transform


def displacement_mm(transform: sitk.Transform, points: np.ndarray) -> float:
    """Largest distance (mm) the transform moves any of ``points`` ``(N, 3)``."""
    if not len(points):
        return 0.0
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    center, translation = np.asarray(transform.GetCenter()), np.asarray(transform.GetTranslation())
    moved = (points - center) @ matrix.T + center + translation
    return float(np.linalg.norm(moved - points, axis=1).max())


def correct_motion(
    ctp: np.ndarray,
    spacing: tuple[float, float, float],
    limit_mm: float = 10.0,
    reference_frame: int = 0,
) -> tuple[np.ndarray, MotionCorrection]:
    """Register every frame of ``ctp`` ``(X, Y, Z, T)`` (HU) rigidly to ``reference_frame``.

    Returns the corrected series (float32; frames left as acquired where they did not move) and the per-frame
    displacement, with the frames beyond ``limit_mm`` marked excluded (they stay in the array: the caller drops
    them with their times).
    """
    series = np.asarray(ctp, dtype=np.float32)
    n_t = series.shape[-1]
    fixed_volume = series[..., reference_frame]
    fixed = _image(np.clip(fixed_volume, *CLIP_HU), spacing)
    shrink = max(1, int(round(REGISTRATION_MM / min(spacing[:2]))))
    fixed_levels = levels(fixed, shrink)  # once for the study, not once per frame
    head = np.argwhere(fixed_volume > HEAD_HU)[::7] * np.asarray(spacing, dtype=np.float64)
    still = STILL_VOXEL_FRACTION * min(spacing[:2])
    out = series.copy()
    moved = np.zeros(n_t)
    resampled = np.zeros(n_t, dtype=bool)

    def one_frame(t: int) -> None:
        try:
            moving = _image(np.clip(series[..., t], *CLIP_HU), spacing)
            transform = register_frame(fixed, moving, shrink, seed=t, fixed_levels=fixed_levels)
        except RuntimeError as err:  # ITK could not register (e.g. too little overlap): motion unknown
            logger.warning("frame %d: rigid registration failed (%s); kept as acquired", t, str(err).splitlines()[-1])
            moved[t] = np.nan
            return
        moved[t] = displacement_mm(transform, head)
        if moved[t] < still:
            return
        frame = sitk.Resample(
            _image(series[..., t], spacing),
            fixed,
            transform,
            sitk.sitkLinear,
            0.0,
            sitk.sitkFloat32,
            useNearestNeighborExtrapolator=True,
        )
        out[..., t] = sitk.GetArrayFromImage(frame).transpose(2, 1, 0)
        resampled[t] = True

    frames = [t for t in range(n_t) if t != reference_frame]
    with ThreadPoolExecutor(min(len(frames), os.cpu_count() or 1) or 1) as pool:
        list(pool.map(one_frame, frames))
    excluded = np.nan_to_num(moved, nan=0.0) > limit_mm
    return out, MotionCorrection(moved, excluded, resampled, reference_frame, float(limit_mm))
