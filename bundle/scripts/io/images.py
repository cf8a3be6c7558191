"""NIfTI inputs: 3D maps and 4D CT perfusion series with their frame timing, validated with errors that name
the file and the problem."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .files import CTPDataError
from .map_registry import MAPS

MIN_FRAMES = 10
"""Fewest frames a series may have: a baseline, the bolus and its wash-out."""


def validate_frame_times(frame_times: np.ndarray, n_frames: int, name: str = "frame_times") -> np.ndarray:
    """The frame times (s) as floats, or ``ValueError`` naming ``name``: one finite time per frame, increasing."""
    times = np.asarray(frame_times, dtype=np.float64).ravel()
    if times.size != n_frames:
        raise ValueError(f"{name}: {times.size} frame times for a series of {n_frames} frames.")
    if not np.isfinite(times).all():
        raise ValueError(f"{name}: frame times must be finite numbers of seconds.")
    steps = np.diff(times)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        kind = "duplicate" if steps[i] == 0 else "decreasing"
        raise ValueError(
            f"{name}: frame times must strictly increase; frames {i} and {i + 1} have {kind} times "
            f"({times[i]:g} s, {times[i + 1]:g} s)."
        )
    return times


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise CTPDataError(f"{path}: file not found.")
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise CTPDataError(f"{path}: not a readable NIfTI file ({err}).") from err


def _data(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    """The image's voxels as float32, or one error naming the file when they cannot be read (truncated gzip,
    short file)."""
    try:
        return np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # EOFError, OSError, zlib.error, ValueError ... from a damaged file
        raise CTPDataError(f"{path}: the voxel data cannot be read, the file is truncated or corrupt ({err}).") from err


def frame_times_sidecar(path: str | os.PathLike) -> Path:
    """The BIDS-style JSON sidecar of a series: ``ctp.nii.gz`` -> ``ctp.json``."""
    path = Path(path)
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    return path.with_name(f"{stem}.json")


def load_frame_times(path: str | os.PathLike, n_frames: int) -> np.ndarray | None:
    """Per-frame times (s) from the series' sidecar ``FrameTimesStart``, validated; ``None`` without a sidecar."""
    sidecar = frame_times_sidecar(path)
    if not sidecar.is_file():
        return None
    try:
        content = json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise CTPDataError(f"{sidecar}: not valid JSON ({err}).") from err
    if not isinstance(content, dict) or "FrameTimesStart" not in content:
        raise CTPDataError(f"{sidecar}: a frame-time sidecar needs 'FrameTimesStart' (one time in s per frame).")
    try:
        return validate_frame_times(content["FrameTimesStart"], n_frames, name=f"{sidecar} FrameTimesStart")
    except (TypeError, ValueError) as err:
        raise CTPDataError(
            str(err)
            if "FrameTimesStart" in str(err)
            else f"{sidecar}: FrameTimesStart must be a list of numbers ({err})."
        ) from err


def load_ctp(path: str | os.PathLike) -> tuple[np.ndarray, float, np.ndarray]:
    """Load a raw 4D CTP series (HU) and return ``(array, frame_interval_s, affine)``, validated.

    With a frame-time sidecar (:func:`load_frame_times`) the interval is the median of its steps and the
    header's pixdim[4] is not needed.
    """
    path = Path(path)
    img = _load(path)
    if img.ndim != 4:
        raise CTPDataError(f"{path}: a CTP series must be 4D (X, Y, slices, time), got shape {img.shape}.")
    if img.shape[3] < MIN_FRAMES:
        raise CTPDataError(f"{path}: {img.shape[3]} frames is too few for perfusion analysis (need >= {MIN_FRAMES}).")
    times = load_frame_times(path, img.shape[3])
    if times is not None:
        interval = float(np.median(np.diff(times)))
    else:
        interval = float(img.header.get_zooms()[3])
        if img.header.get_xyzt_units()[1] == "msec":
            interval /= 1000.0
        if not np.isfinite(interval) or interval <= 0:
            raise CTPDataError(
                f"{path}: no frame interval in the header (pixdim[4] = {interval}); set it in seconds "
                f"or give per-frame times in {frame_times_sidecar(path).name} (FrameTimesStart)."
            )
    data = _data(path, img)
    if not np.isfinite(data).all():
        raise CTPDataError(f"{path}: contains NaN or infinite values.")
    return data, interval, img.affine


def load_map(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load one 3D map and return ``(array, affine)``, rejecting NaN/inf voxels."""
    path = Path(path)
    img = _load(path)
    if img.ndim != 3:
        raise CTPDataError(f"{path}: a map must be 3D (X, Y, slices), got shape {img.shape}.")
    data = _data(path, img)
    if not np.isfinite(data).all():
        raise CTPDataError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN or infinite voxels.")
    return data, img.affine


NEGATIVE_FRACTION = 0.01
OVERRIDE = "check the map's units and scaling, or pass --check_values false to use it as it is"


def check_map_values(key: str, data: np.ndarray, path: str | os.PathLike, tissue: np.ndarray | None = None) -> None:
    """Refuse a map whose values are physically implausible for its kind: the median of its brain voxels
    outside the map's ``plausible_median`` (:data:`scripts.io.map_registry.MAPS`; brain = its non-zero voxels
    for maps that are zero outside the brain, else ``tissue``, the CBF map's non-zero voxels), or negative
    where the map cannot be (flow, volume, time; Tmax may be a little negative). Catches a power-of-ten
    scale, Tmax in ms, a MIP not in HU. ``CTPDataError`` names the file, the map and what was found."""
    spec = MAPS.get(key)
    if spec is None or spec.plausible_median is None:
        return
    low, high = spec.plausible_median
    unit = spec.unit
    if not spec.zero_outside_brain:
        if tissue is None or not tissue.any():
            return
        median = float(np.median(data[tissue]))
        if not low <= median <= high:
            raise CTPDataError(
                f"{path}: {key} does not look like {unit}: its median in the brain is {median:.4g}, expected "
                f"{low:g} to {high:g} {unit} (stored values without the rescale intercept?); {OVERRIDE}."
            )
        return
    brain = data[data != 0]
    if brain.size == 0:
        if low < 0:  # e.g. Tmax: no delay anywhere is possible, and leaves nothing to judge the scale by
            return
        raise CTPDataError(f"{path}: {key} is zero everywhere; {OVERRIDE}.")
    negative = float((brain < low - 1.0).mean()) if low < 0 else float((brain < 0).mean())
    median = float(np.median(brain))
    refusals = [
        (
            negative > NEGATIVE_FRACTION,
            f"{key} is negative in {negative:.0%} of the brain (a negated map?); {key} cannot be negative",
        ),
        (
            not low <= median <= high,
            f"{key} has a median of {median:.4g} {unit} in the brain, expected {low:g} to {high:g} {unit} (scaled "
            "by a power of ten, or in other units?)",
        ),
    ]
    if low < 0:  # a map that may be a little negative (Tmax): its scale first, a Tmax in ms is negative in places
        refusals.reverse()
    for refused, problem in refusals:
        if refused:
            raise CTPDataError(f"{path}: {problem}; {OVERRIDE}.")


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in ml from its spacing in mm (the first three values)."""
    return float(np.prod([float(s) for s in spacing[:3]])) / 1000.0
