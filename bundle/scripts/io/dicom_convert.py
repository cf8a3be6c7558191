"""A DICOM study to the datalist's patient folder: the CTP series as ``ctp.nii.gz`` with its frame times, the
vendor's map series (derived images matched by SeriesDescription) as ``<map>.nii.gz``."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from .dicom import dicom_files, is_derived, provenance, read_ctp_dicom, read_pixels, stack_images
from .files import CTPDataError, save_json, save_nifti
from .images import check_map_values, frame_times_sidecar
from .map_registry import dicom_patterns, required_maps

logger = logging.getLogger(__name__)


def read_map_series(images: list[tuple[Path, object]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """One derived map series (one image per slice) as ``(array (column, row, slice), RAS affine)`` in the
    map's physical units (each image's RescaleSlope / RescaleIntercept applied)."""
    stack = stack_images(images, lambda header: 0.0, f"{name} map series", order_name="")
    array = np.empty((stack.size[1], stack.size[0], len(stack.positions)), dtype=np.float32)
    for k, z in enumerate(stack.positions):
        array[:, :, k] = read_pixels(stack.members[z][0][1]).T
    return array, stack.affine()


def find_map_series(
    files: list[tuple[Path, object]], patterns: dict[str, str] | None = None
) -> dict[str, list[tuple[Path, object]]]:
    """The derived series matching each map's SeriesDescription pattern (the map registry's,
    :func:`scripts.io.map_registry.dicom_patterns`, overridable per map); one error naming both series when two
    match one map."""
    patterns = {**dicom_patterns(), **(patterns or {})}
    series: dict[str, list[tuple[Path, object]]] = {}
    for path, header in files:
        if is_derived(header):
            series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    found: dict[str, list[tuple[Path, object]]] = {}
    described: dict[str, str] = {}
    for images in series.values():
        description = str(images[0][1].get("SeriesDescription", ""))
        for name, pattern in patterns.items():
            if re.search(pattern, description, flags=re.IGNORECASE):
                if name in found:
                    raise CTPDataError(
                        f"{images[0][0]}: series '{description}' and '{described[name]}' both match the {name} "
                        f"pattern {pattern!r}; make the pattern more specific (map_patterns)."
                    )
                found[name], described[name] = images, description
                break
    return found


def import_vendor_maps(
    folder: str | os.PathLike,
    output_dir: str | os.PathLike,
    patterns: dict[str, str] | None = None,
    files: list[tuple[Path, object]] | None = None,
) -> dict[str, str]:
    """Write the vendor map series under ``folder`` as ``<map>.nii.gz`` into ``output_dir``.

    The registry's required maps (CBF, CBV, TTP, Tmax) must be there, the others (MTT, MIP) may; without a MIP
    series the MIP is computed from the study's CTP series (the maximum over time) when there is one. Values
    are checked against plausible ranges for their kind (:func:`~scripts.io.images.check_map_values`), so a map exported
    without its rescale slope is refused naming the file. Returns the written paths.
    """
    files = files if files is not None else dicom_files(folder)
    found = find_map_series(files, patterns)
    missing = [name for name in required_maps() if name not in found]
    if missing:
        descriptions = sorted({str(h.get("SeriesDescription", "")) for _, h in files if is_derived(h)})
        raise CTPDataError(
            f"{folder}: no series for {', '.join(missing)} among the derived series {descriptions}; set "
            "map_patterns (a regular expression per map, matched against SeriesDescription)."
        )
    maps = {name: read_map_series(images, name) for name, images in found.items()}
    reference, reference_affine = maps["cbf"]
    tissue = reference != 0

    def check(name: str, source: str | os.PathLike) -> None:
        array, affine = maps[name]
        if array.shape != reference.shape or not np.allclose(affine, reference_affine, atol=1e-3):
            raise CTPDataError(f"{source}: the {name} series is not on the cbf series' grid.")
        check_map_values(name, array, source, tissue)

    for name in maps:
        check(name, found[name][0][0])
    if "mip" not in maps:
        if not any(not is_derived(h) for _, h in files):
            raise CTPDataError(f"{folder}: no MIP series and no CTP series to compute the MIP from.")
        series = read_ctp_dicom(folder, files=files)
        maps["mip"] = (series.array.max(axis=-1), series.affine)
        check("mip", folder)
    out = Path(output_dir)
    return {name: str(save_nifti(out / f"{name}.nii.gz", array, affine)) for name, (array, affine) in maps.items()}


def convert_dicom_study(
    folder: str | os.PathLike,
    output_dir: str | os.PathLike,
    frame_interval: float | None = None,
    map_patterns: dict[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Convert a DICOM study to a patient folder of the datalist format; return the written paths.

    The CTP series (original images) becomes ``ctp.nii.gz`` (int16 HU) with its sidecar ``ctp.json``
    (``FrameTimesStart`` and the DICOM provenance); vendor map series (derived images matched by
    ``map_patterns``, see :func:`import_vendor_maps`) become ``cbf.nii.gz``, ``cbv.nii.gz``, ... .
    """
    if folder is None or output_dir is None:
        raise ValueError("pass --input (a DICOM study folder or DICOMDIR) and --output_dir (the patient folder).")
    out = Path(output_dir)
    existing = sorted(out.glob("*.nii.gz")) if out.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: already exists; pass --overwrite true or choose another --output_dir.")
    files = dicom_files(folder)
    written: dict[str, str] = {}
    has_ctp = any(not is_derived(header) for _, header in files)
    if any(is_derived(header) for _, header in files):
        try:
            written.update(import_vendor_maps(folder, out, map_patterns, files))
        except CTPDataError as err:
            if not has_ctp or "no series for" not in str(err):
                raise
            logger.warning("%s: derived series are not vendor maps, skipped (%s)", folder, err)
    if has_ctp:
        series = read_ctp_dicom(folder, frame_interval, files)
        hu = np.clip(np.round(series.array), -32768, 32767).astype(np.int16)
        ctp = save_nifti(out / "ctp.nii.gz", hu, series.affine, frame_interval=series.frame_interval)
        sidecar = {"FrameTimesStart": series.frame_times.round(6).tolist(), "dicom": provenance(series, folder)}
        written.update(ctp=str(ctp), sidecar=str(save_json(frame_times_sidecar(ctp), sidecar)))
    return written
