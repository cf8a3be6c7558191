"""Head motion injected into a 4D series, to test motion correction against a known truth.

Written apart from :mod:`scripts.perfusion.motion` (scipy's ``affine_transform``, not SimpleITK), so the
correction is checked against motion it did not make. A frame's content is rotated about the volume's centre
(x, y, z Euler angles) and shifted: the voxel at ``p`` (mm) shows what the still head had at
``R^-1 (p - c - shift) + c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation


@dataclass
class InjectedMotion:
    """Per frame: rotation (degrees, x y z), shift (mm) and the largest displacement of any head voxel (mm)."""

    angles_deg: np.ndarray
    shifts_mm: np.ndarray
    displacement_mm: np.ndarray


def move_volume(
    volume: np.ndarray, spacing: tuple[float, float, float], angles_deg: np.ndarray, shift_mm: np.ndarray
) -> np.ndarray:
    """``volume`` ``(X, Y, Z)`` with its content rotated about the centre and shifted (linear, edges repeated)."""
    scale = np.asarray(spacing, dtype=np.float64)
    centre = (np.asarray(volume.shape) - 1) / 2 * scale
    inverse = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix().T
    matrix = np.diag(1 / scale) @ inverse @ np.diag(scale)
    offset = np.diag(1 / scale) @ (centre - inverse @ (centre + np.asarray(shift_mm, dtype=np.float64)))
    return ndimage.affine_transform(volume, matrix, offset=offset, order=1, mode="nearest").astype(volume.dtype)


def displacement_of(
    points_mm: np.ndarray, centre_mm: np.ndarray, angles_deg: np.ndarray, shift_mm: np.ndarray
) -> float:
    """Largest distance (mm) the rotation about ``centre_mm`` and the shift move any of ``points_mm``."""
    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    moved = (points_mm - centre_mm) @ rotation.T + centre_mm + shift_mm
    return float(np.linalg.norm(moved - points_mm, axis=1).max()) if len(points_mm) else 0.0


def inject_motion(
    ctp: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    max_shift_mm: float = 5.0,
    max_angle_deg: float = 5.0,
    abrupt_frames: int = 3,
    drift: float = 0.3,
    in_plane: bool = False,
    still_frames: int = 3,
) -> tuple[np.ndarray, InjectedMotion]:
    """Move every frame after the first ``still_frames``: a slow drift (``drift`` times the maxima, a random
    walk) plus ``abrupt_frames`` frames jerked by up to the maxima. ``in_plane`` moves only in x, y and
    about z (a phantom whose slices differ). Returns the moved series and the motion applied."""
    n_t = ctp.shape[-1]
    axes = np.array([0.0, 0.0, 1.0]) if in_plane else np.ones(3)
    shift_axes = np.array([1.0, 1.0, 0.0]) if in_plane else np.ones(3)
    angles = np.zeros((n_t, 3))
    shifts = np.zeros((n_t, 3))
    steps = max(1, n_t - still_frames)
    walk_a = np.cumsum(rng.normal(0, drift * max_angle_deg / np.sqrt(steps), (steps, 3)), axis=0)
    walk_s = np.cumsum(rng.normal(0, drift * max_shift_mm / np.sqrt(steps), (steps, 3)), axis=0)
    angles[still_frames:] = np.clip(walk_a, -max_angle_deg, max_angle_deg)[: n_t - still_frames]
    shifts[still_frames:] = np.clip(walk_s, -max_shift_mm, max_shift_mm)[: n_t - still_frames]
    jerked = rng.choice(np.arange(still_frames, n_t), size=min(abrupt_frames, steps), replace=False)
    angles[jerked] = rng.uniform(-max_angle_deg, max_angle_deg, (len(jerked), 3))
    shifts[jerked] = rng.uniform(-max_shift_mm, max_shift_mm, (len(jerked), 3))
    angles, shifts = angles * axes, shifts * shift_axes
    scale = np.asarray(spacing, dtype=np.float64)
    centre = (np.asarray(ctp.shape[:3]) - 1) / 2 * scale
    head = np.argwhere(ctp[..., 0] > -200.0)[::7] * scale
    moved = np.array(ctp, dtype=np.float32, copy=True)
    displacement = np.zeros(n_t)
    for t in range(still_frames, n_t):
        moved[..., t] = move_volume(ctp[..., t], spacing, angles[t], shifts[t])
        displacement[t] = displacement_of(head, centre, angles[t], shifts[t])
    return moved, InjectedMotion(angles, shifts, displacement)
