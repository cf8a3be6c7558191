"""Bundle workflow: perfusion maps from one raw CTP series (4D NIfTI or a DICOM study folder), written as 3D
NIfTI maps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import save_json, save_nifti
from ..io.dicom import load_ctp_series
from ..io.map_registry import computed_maps
from .arterial_input import RESAMPLED_AIF_WINDOW
from .deconvolution import compute_perfusion_maps
from .motion import correct_motion
from .quality import motion_flags


def compute_maps(
    ctp: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    aif: str | os.PathLike | None = None,
    frame_interval: float | None = None,
    motion_correction: bool = True,
    motion_limit_mm: float = 10.0,
    **settings,
) -> dict[str, str]:
    """Compute CBF, CBV, MTT, TTP, Tmax and MIP from ``ctp`` into ``output_dir``; return the written paths.

    Args:
        ctp: 4D NIfTI (X, Y, slices, time) in HU with the frame interval in pixdim[4], or uneven per-frame
            times in a JSON sidecar (``ctp.json``: ``{"FrameTimesStart": [0, 1, 2, 3.5, ...]}``); or a DICOM
            study folder (:mod:`scripts.io.dicom`), whose provenance goes into ``perfusion.json``.
        output_dir: folder for ``<map>.nii.gz`` and ``perfusion.json`` (AIF and settings used).
        overwrite: replace maps already in ``output_dir``.
        aif: optional text file with one AIF value (HU above baseline) per frame.
        frame_interval: seconds between frames, for DICOM images whose only timing is TemporalPositionIndex.
        motion_correction: register every frame rigidly to the first (:mod:`scripts.perfusion.motion`); frames
            that moved more than ``motion_limit_mm`` are left out; displacement and flags go into ``perfusion.json``.
        settings: keyword arguments of :func:`scripts.perfusion.deconvolution.compute_perfusion_maps`.
    """
    if ctp is None:
        raise ValueError("ctp: no 4D series given; pass --ctp path/to/ctp.nii.gz.")
    out = Path(output_dir)
    targets = {name: out / f"{name}.nii.gz" for name in computed_maps()}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out}: maps already exist ({existing[0]}, ...); pass overwrite=True (--overwrite true)."
        )
    series, interval, affine, frame_times, dicom = load_ctp_series(ctp, frame_interval)
    given_aif = None
    if aif is not None:
        try:
            given_aif = np.loadtxt(aif, dtype=np.float64).ravel()
        except (OSError, ValueError) as err:
            raise ValueError(f"{aif}: cannot read the AIF as numbers ({err}).") from err
    voxel_mm = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    motion = None
    if motion_correction:
        series, motion = correct_motion(series, voxel_mm, motion_limit_mm)
        if motion.excluded.any():
            keep = ~motion.excluded
            times = np.arange(series.shape[-1]) * interval if frame_times is None else frame_times
            series, frame_times = series[..., keep], times[keep]
            given_aif = None if given_aif is None else given_aif[keep]
        if motion.resampled.any():  # resampled vessels: the AIF read over a window (unless the caller chose)
            settings.setdefault("aif_window", RESAMPLED_AIF_WINDOW)
    try:
        maps = compute_perfusion_maps(
            series, interval, voxel_mm[:2], aif=given_aif, frame_times=frame_times, **settings
        )
    except ValueError as err:
        raise ValueError(f"{ctp}: {err}") from err
    if motion is not None:
        maps.info["motion"] = motion.as_dict()
        maps.info["quality"] = [*maps.info["quality"], *motion_flags(maps.info["motion"])]
    for name, array in maps.as_dict().items():
        save_nifti(targets[name], array, affine)
    report = {
        "ctp": str(ctp),
        "frame_interval_s": interval,
        "frame_times_s": None if frame_times is None else frame_times.tolist(),
        "aif_hu": maps.aif.round(3).tolist(),
        **maps.info,
        **{key: value for key, value in settings.items() if key != "aif_window"},  # the window used is in info
        "motion_correction": motion_correction,
    }
    if dicom is not None:
        report["dicom"] = dicom
    save_json(out / "perfusion.json", report)
    return {name: str(path) for name, path in targets.items()}
