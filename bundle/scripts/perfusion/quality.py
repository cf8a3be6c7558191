"""Quality flags a reader can act on: what in a study's own curves makes its maps less trustworthy.

A flagged study still gets its maps and labels; the flags travel with them (``perfusion.json``, the inference
``report.json`` and montage) so that whoever reads the volumes knows what to check. Each flag states what was
measured and the limit it crossed:

* ``bolus_truncated``: the venous output curve (VOF) is still above :data:`TRUNCATION_FRACTION` of its peak at the
  last frame, or peaks at the last frame. The acquisition ended before the bolus washed out, so CBV (an area) and
  CBF are underestimated and long delays are cut short. A scan should cover the VOF's downslope: in a study of
  the minimal CTP scan duration (70 acute stroke scans, PMC5134896), lesion volumes stabilised once the fitted VOF
  had fallen to a median 0.39 of its peak, and 60-70 s scans were recommended.
* ``no_venous_curve``: no vessel curve peaks after the arterial input: truncation and the AIF's partial-volume
  scaling cannot be checked.
* ``low_contrast_to_noise``: the parenchyma's mean peak enhancement is below :data:`MIN_TISSUE_CNR` times the
  median single-voxel noise (SD over the baseline frames): each voxel's curve is mostly noise, the maps rest on the
  smoothing (typical studies: enhancement 15-40 HU, noise 3-15 HU).
* ``motion``: a frame moved more than :data:`MOTION_FLAG_MM` from the first (rigid registration,
  :mod:`scripts.perfusion.motion`), frames were left out beyond the workflow's limit, or a frame could not be
  registered. The maps come from the corrected series; voxels at the skull and the slab's top and bottom slices
  are the least trustworthy.

The limits are heuristics stated for the reader, not validated decision thresholds.
"""

from __future__ import annotations

import numpy as np

TITLES = {
    "bolus_truncated": "Bolus truncated",
    "no_venous_curve": "No venous curve",
    "low_contrast_to_noise": "Low contrast-to-noise",
    "motion": "Patient motion",
}
"""Short titles: the meanings of the flags' codes in the DICOM SR."""

TRUNCATION_FRACTION = 0.5
"""VOF height at the last frame, relative to its peak, above which the bolus counts as truncated."""

MIN_TISSUE_CNR = 1.0
"""Parenchyma peak enhancement over the median single-voxel baseline noise below which the study is flagged."""

MOTION_FLAG_MM = 2.0
"""Largest head displacement of any frame (mm) above which the study is flagged for motion."""


def quality_flags(vof: np.ndarray | None, tissue_peak_hu: float, noise_hu: float | None) -> list[dict]:
    """Flags (``{"flag", "value", "limit", "message"}``) from the VOF (HU above baseline, one value per frame, or
    ``None`` when none was found), the parenchyma's mean peak enhancement and the median voxel noise (HU; ``None``
    when fewer than 2 baseline frames leave it unmeasured)."""
    flags = []
    if vof is None or not np.size(vof):
        flags.append(
            {
                "flag": "no_venous_curve",
                "value": None,
                "limit": None,
                "message": "no venous curve found after the arterial input: truncation and AIF scaling unchecked",
            }
        )
    else:
        vof = np.asarray(vof, dtype=np.float64)
        last = float(vof[-1] / max(float(vof.max()), 1e-6))
        if last > TRUNCATION_FRACTION or int(np.argmax(vof)) == vof.size - 1:
            flags.append(
                {
                    "flag": "bolus_truncated",
                    "value": round(last, 3),
                    "limit": TRUNCATION_FRACTION,
                    "message": f"the venous curve is still at {100 * last:.0f} % of its peak at the last frame: "
                    "the scan ended before the bolus washed out; CBV and CBF are underestimated",
                }
            )
    cnr = None if noise_hu is None else float(tissue_peak_hu / max(noise_hu, 1e-6))
    if cnr is not None and cnr < MIN_TISSUE_CNR:
        flags.append(
            {
                "flag": "low_contrast_to_noise",
                "value": round(cnr, 2),
                "limit": MIN_TISSUE_CNR,
                "message": f"parenchyma enhances {tissue_peak_hu:.1f} HU against {noise_hu:.1f} HU of voxel noise: "
                "the maps rest on the smoothing",
            }
        )
    return flags


def motion_flags(motion: dict) -> list[dict]:
    """The ``motion`` flag from a motion summary (:meth:`scripts.perfusion.motion.MotionCorrection.as_dict`)."""
    largest, excluded, failed = motion["max_displacement_mm"], motion["excluded_frames"], motion["unregistered_frames"]
    if largest <= MOTION_FLAG_MM and not excluded and not failed:
        return []
    parts = [f"the head moved up to {largest:.1f} mm (corrected by rigid registration)"]
    if excluded:
        parts.append(f"{len(excluded)} frame(s) beyond {motion['limit_mm']:g} mm left out")
    if failed:
        parts.append(f"{len(failed)} frame(s) could not be registered")
    return [{"flag": "motion", "value": largest, "limit": MOTION_FLAG_MM, "message": "; ".join(parts)}]
