"""DICOM CT perfusion in: a study folder becomes a 4D series in HU with per-frame times and a NIfTI (RAS) affine.

pydicom reads every file (pixel data decoded by its plugins: pylibjpeg-libjpeg for JPEG Lossless,
pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-rle for RLE, pyjpegls for JPEG-LS); nothing here parses or
encodes DICOM by hand. What this module adds is the CTP logic that DICOM leaves to the reader:

- **Which files.** Every file under the folder (searched recursively; a ``DICOMDIR`` file is skipped, its
  referenced files are in the tree). Files that are not DICOM are skipped; DICOM files that are not CT are
  refused. Derived images (``ImageType`` DERIVED, e.g. vendor maps) are not part of the series.
- **Frames, whatever the vendor layout** (one series with many acquisitions, or one series per time point):
  the images are grouped by slice position, and each position's images are sorted by time; frame *k* is
  the *k*-th image of every position. Every position must have the same number of images.
- **Time** comes from the first of :data:`TIME_SOURCES` that every image carries, with distinct values
  at each slice position: GE's private Mid Scan Time (``GEMS_ACQU_01`` (0019,xx24), a binary double in a DS
  element: GE cine runs repeat one ``AcquisitionTime`` on every frame), ``AcquisitionDateTime``,
  ``AcquisitionTime`` (with ``AcquisitionDate``),
  ``ContentTime`` (with ``ContentDate``), ``TriggerTime`` (ms), ``TemporalPositionIndex`` (an order only:
  needs ``frame_interval``). A frame's time is the median of its slices' times; frame times are seconds
  from the first frame, uneven intervals kept.
- **Geometry.** Slices are ordered by ``ImagePositionPatient`` along the slice normal (row x column
  direction); the affine maps (column, row, slice) indices to RAS millimetres as NIfTI writers do (DICOM's
  LPS with x and y negated). ``RescaleSlope``/``RescaleIntercept`` are applied (the modality LUT).

Refused, each with one line naming a file: mixed image sizes, spacings or orientations; a non-CT modality;
multi-frame (Enhanced CT) images, not supported yet; gantry tilt (``GantryDetectorTilt`` or slice positions
sheared off the normal; resample the series first, e.g. with dcm2niix, which corrects tilt); uneven slice
spacing or a missing slice position; a slice position with fewer images than the others (a missing slice
in a frame); two images at one position and time; images without usable or with malformed time, or with a
time more than a frame interval from the other slices of their frame; undecodable pixel data.

MONAI's own DICOM readers (``LoadImage`` with ``PydicomReader`` / ``ITKReader``) stack one series into a 3D
volume; they do not group a study's images by time, hence this reader.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import CTPDataError, save_json, save_nifti
from .images import MIN_FRAMES, check_map_values, frame_times_sidecar, load_ctp, load_frame_times, validate_frame_times
from .map_registry import dicom_patterns, required_maps

logger = logging.getLogger(__name__)

GE_MID_SCAN_TIME = "GEMidScanTime"
"""GE's private "Mid Scan Time [sec]", (0019,xx24) in the ``GEMS_ACQU_01`` block: the per-frame time of a cine
acquisition, whose standard time attributes are the run's start on every frame. GE stores it in a DS element
as a binary little-endian double (text is accepted too)."""
TIME_SOURCES = (
    GE_MID_SCAN_TIME,
    "AcquisitionDateTime",
    "AcquisitionTime",
    "ContentTime",
    "TriggerTime",
    "TemporalPositionIndex",
)
"""Where a CTP image's time is read from: the first that every image carries with distinct values at each slice
position (a cine run's constant ``AcquisitionTime`` is skipped)."""

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
POSITION_TOLERANCE_MM = 0.01
SPACING_TOLERANCE = 0.05  # relative difference of a slice gap from the median gap


@dataclass
class DicomSeries:
    """A CTP series read from DICOM: ``array`` (X=column, Y=row, slice, time) in HU, ``affine`` (RAS, mm),
    ``frame_times`` (s from the first frame), and per slice the first frame's file (``reference_files``,
    in the array's slice order; a DICOM SEG references them)."""

    array: np.ndarray
    affine: np.ndarray
    frame_times: np.ndarray
    reference_files: list[Path]
    time_source: str
    study: dict = field(default_factory=dict)

    @property
    def frame_interval(self) -> float:
        """The median step between frames (s)."""
        return float(np.median(np.diff(self.frame_times)))


def _pydicom():
    import pydicom  # imported lazily: the NIfTI paths do not need it

    return pydicom


def dicom_files(folder: str | os.PathLike) -> list[tuple[Path, object]]:
    """``(path, header)`` of every DICOM file under ``folder`` (pixel data not read); non-DICOM files skipped."""
    pydicom = _pydicom()
    root = Path(folder)
    if root.is_file() and root.name.upper() == "DICOMDIR":
        root = root.parent
    if not root.is_dir():
        raise CTPDataError(f"{root}: DICOM input not found (a folder of DICOM files or a DICOMDIR).")
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.upper() == "DICOMDIR" or path.name.startswith("."):
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            logger.debug("%s: not DICOM, skipped", path)
            continue
        except Exception as err:  # truncated or corrupt files raise several types
            raise CTPDataError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err}).") from err
        found.append((path, header))
    if not found:
        raise CTPDataError(f"{root}: no DICOM file found.")
    return found


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a DICOMDIR or a folder holding at least one DICOM file (checked by its preamble)."""
    path = Path(path)
    if path.is_file():
        return path.name.upper() == "DICOMDIR"
    if not path.is_dir():
        return False
    for candidate in path.rglob("*"):
        if candidate.is_file() and not candidate.name.startswith("."):
            try:
                with open(candidate, "rb") as handle:
                    handle.seek(128)
                    if handle.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def _is_derived(header) -> bool:
    return "DERIVED" in [str(v).upper() for v in (header.get("ImageType") or [])]


def _time_value(header, source: str):
    """The raw value of ``source`` in ``header`` (see :data:`TIME_SOURCES`), ``None`` when absent."""
    if source != GE_MID_SCAN_TIME:
        value = header.get(source)
        return None if value in (None, "") else value
    try:
        block = header.private_block(0x0019, "GEMS_ACQU_01")
    except KeyError:
        return None
    element = header.get_item(block.get_tag(0x24))  # unconverted: the bytes as stored
    return None if element is None or not element.value else element.value


def _ge_seconds(raw) -> float:
    """GE's Mid Scan Time: a binary little-endian double in a DS element, or (rewritten files) DS text."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            return float(raw.decode("ascii").strip("\x00 "))
        except (UnicodeDecodeError, ValueError):
            if len(raw) != 8:
                raise ValueError(f"{len(raw)} bytes, neither DS text nor one 8-byte double") from None
            value = struct.unpack("<d", bytes(raw))[0]
            if not np.isfinite(value):
                raise ValueError("not a finite double") from None
            return value
    return float(raw)


def _seconds(header, source: str) -> float | None:
    """The time of one image in seconds from ``source`` (see :data:`TIME_SOURCES`), ``None`` when absent."""
    value = _time_value(header, source)
    if value is None:
        return None
    try:
        return _parse_time(header, source, value)
    except (TypeError, ValueError, OverflowError) as err:
        raise CTPDataError(f"{header.filename}: {source} {value!r} is not a valid time ({err}).") from err


def _parse_time(header, source: str, value) -> float | None:
    pydicom = _pydicom()
    if source == GE_MID_SCAN_TIME:
        return _ge_seconds(value)
    if source == "AcquisitionDateTime":
        dt = pydicom.valuerep.DT(value)
        return dt.replace(tzinfo=None).timestamp() if isinstance(dt, datetime.datetime) else None
    if source in ("AcquisitionTime", "ContentTime"):
        tm = pydicom.valuerep.TM(value)
        seconds = tm.hour * 3600 + tm.minute * 60 + tm.second + tm.microsecond / 1e6
        date = header.get(source.replace("Time", "Date"))
        if date:
            day = pydicom.valuerep.DA(date)
            seconds += datetime.datetime(day.year, day.month, day.day).timestamp()
        return seconds
    if source == "TriggerTime":
        return float(value) / 1000.0
    return float(value)  # TemporalPositionIndex: an order, scaled by the frame interval later


def _geometry(path: Path, header) -> tuple[np.ndarray, np.ndarray, tuple[float, float], tuple[int, int]]:
    try:
        orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
        position = np.asarray(header.ImagePositionPatient, dtype=np.float64)
        spacing = tuple(float(v) for v in header.PixelSpacing)
        size = (int(header.Rows), int(header.Columns))
    except (AttributeError, TypeError, ValueError) as err:
        raise CTPDataError(
            f"{path}: missing or bad geometry ({err}); a CT image needs ImagePositionPatient, "
            "ImageOrientationPatient, PixelSpacing, Rows and Columns."
        ) from err
    if orientation.size != 6 or position.size != 3 or len(spacing) != 2:
        raise CTPDataError(f"{path}: ImageOrientationPatient, ImagePositionPatient or PixelSpacing is malformed.")
    return orientation, position, spacing, size


def _check_ct(path: Path, header) -> None:
    modality = str(header.get("Modality", ""))
    if modality != "CT":
        raise CTPDataError(f"{path}: modality {modality or 'missing'}; a CT perfusion study holds CT images only.")
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise CTPDataError(
            f"{path}: a multi-frame (Enhanced) CT image; export the study as single-frame CT images (most "
            "scanners and PACS offer it), which this reader takes."
        )
    tilt = float(header.get("GantryDetectorTilt", 0) or 0)
    if abs(tilt) > 1e-3:
        raise CTPDataError(
            f"{path}: gantry tilt of {tilt:g} degrees; resample the series to an untilted grid first "
            "(e.g. dcm2niix corrects tilt)."
        )


def _time_source(images: list[tuple[Path, object]]) -> str:
    """The first of :data:`TIME_SOURCES` that every image carries with distinct values at each slice position
    (some scanners stamp every image of a series with the series' start in one of them)."""
    carried = [s for s in TIME_SOURCES if all(_time_value(header, s) is not None for _, header in images)]
    if not carried:
        missing = next(path for path, h in images if all(_time_value(h, s) is None for s in TIME_SOURCES))
        raise CTPDataError(
            f"{missing}: no usable acquisition time (none of {', '.join(TIME_SOURCES)}); cannot order the CTP frames."
        )
    positions = [tuple(np.round(np.asarray(h.get("ImagePositionPatient") or [0, 0, 0], float), 2)) for _, h in images]
    for source in carried:
        if len({(p, _seconds(h, source)) for p, (_, h) in zip(positions, images)}) == len(images):
            return source
    return carried[0]  # none tells the frames apart: the duplicate check names the images


@dataclass
class _Stack:
    """Images on one slice grid: ``members[z]`` = the ``(order value, path)`` of every image at position ``z``
    (mm along the normal), sorted; ``positions`` ascending."""

    positions: list[float]
    members: dict[float, list[tuple[float, Path]]]
    orientation: np.ndarray
    spacing: tuple[float, float]
    size: tuple[int, int]
    gap: float
    origin: np.ndarray

    def affine(self) -> np.ndarray:
        """(column, row, slice) indices to RAS mm."""
        row_dir, col_dir = self.orientation[:3], self.orientation[3:]
        affine = np.eye(4)
        affine[:3, 0] = LPS_TO_RAS @ row_dir * self.spacing[1]
        affine[:3, 1] = LPS_TO_RAS @ col_dir * self.spacing[0]
        affine[:3, 2] = LPS_TO_RAS @ np.cross(row_dir, col_dir) * self.gap
        affine[:3, 3] = LPS_TO_RAS @ self.origin
        return affine


def _stack(images: list[tuple[Path, object]], order, what: str, order_name: str = "time") -> _Stack:
    """Check that ``images`` share one grid (size, spacing, orientation, no shear, even slice gaps, no two
    images at one position and ``order`` value) and group them by slice position."""
    first_path, first = images[0]
    orientation, _, spacing, size = _geometry(first_path, first)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    members: dict[float, list[tuple[float, Path]]] = {}
    origins: dict[float, np.ndarray] = {}
    in_plane_ref = None
    for path, header in images:
        o, position, sp, z = _geometry(path, header)
        if z != size or not np.allclose(sp, spacing, atol=1e-4) or not np.allclose(o, orientation, atol=1e-4):
            raise CTPDataError(
                f"{path}: image size {z[1]}x{z[0]}, spacing {sp} or orientation differs from {first_path} "
                f"({size[1]}x{size[0]}, {spacing}); a {what} must be one grid (mixed series?)."
            )
        in_plane = np.array([position @ row_dir, position @ col_dir])
        if in_plane_ref is None:
            in_plane_ref = in_plane
        elif np.abs(in_plane - in_plane_ref).max() > 0.1:
            raise CTPDataError(
                f"{path}: slice origin is shifted {np.abs(in_plane - in_plane_ref).max():.2f} mm in-plane from "
                f"{first_path}: the slices are sheared (gantry tilt); resample the series first (e.g. dcm2niix)."
            )
        key = round(float(position @ normal) / POSITION_TOLERANCE_MM) * POSITION_TOLERANCE_MM
        members.setdefault(key, []).append((order(header), path))
        origins.setdefault(key, position)
    positions = sorted(members)
    for z in positions:
        group = members[z] = sorted(members[z], key=lambda item: item[0])
        for (value, path), (previous, other) in zip(group[1:], group[:-1]):
            if value == previous:
                raise CTPDataError(
                    f"{path}: same position ({z:g} mm){' and ' + order_name if order_name else ''} as {other}: "
                    "duplicate image."
                )
    if len(positions) > 1:
        gaps = np.diff(positions)
        gap = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - gap) > SPACING_TOLERANCE * gap)
        if bad.size:
            i = int(bad[0])
            raise CTPDataError(
                f"{members[positions[i + 1]][0][1]}: slice gap {gaps[i]:.3g} mm between {positions[i]:g} and "
                f"{positions[i + 1]:g} mm, others {gap:.3g} mm: a slice position is missing or spacing is uneven."
            )
    else:
        gap = float(first.get("SliceThickness", 1.0) or 1.0)
    return _Stack(positions, members, orientation, spacing, size, gap, origins[positions[0]])


def read_ctp_dicom(
    folder: str | os.PathLike, frame_interval: float | None = None, files: list[tuple[Path, object]] | None = None
) -> DicomSeries:
    """Read the CT perfusion series under ``folder`` (see the module docstring for rules and refusals).

    Args:
        folder: a folder of DICOM files (any depth) or a DICOMDIR.
        frame_interval: seconds between frames; needed only when the images carry no time but
            ``TemporalPositionIndex``.
        files: the ``(path, header)`` pairs of :func:`dicom_files` when already read.
    """
    images = [(p, h) for p, h in (files if files is not None else dicom_files(folder)) if not _is_derived(h)]
    if not images:
        raise CTPDataError(f"{folder}: no original CT images (only derived images such as vendor maps).")
    for path, header in images:
        _check_ct(path, header)
    source = _time_source(images)
    if source == "TemporalPositionIndex" and not frame_interval:
        raise CTPDataError(
            f"{images[0][0]}: the images carry only TemporalPositionIndex (an order, no time); "
            "pass frame_interval (seconds between frames)."
        )
    stack = _stack(images, lambda header: _seconds(header, source), "CTP study")
    counts = {z: len(v) for z, v in stack.members.items()}
    n_frames = max(counts.values())
    short = [z for z in stack.positions if counts[z] != n_frames]
    if short:
        z = short[0]
        raise CTPDataError(
            f"{stack.members[z][0][1]}: the slice at {z:g} mm has {counts[z]} images, other slices {n_frames}: "
            "a frame is missing this slice."
        )
    if n_frames < MIN_FRAMES:
        raise CTPDataError(f"{folder}: {n_frames} frames is too few for perfusion analysis (need >= {MIN_FRAMES}).")
    times = np.array([[seconds for seconds, _ in stack.members[z]] for z in stack.positions])
    frame_times = np.median(times, axis=0)
    steps = np.diff(frame_times)
    if steps.size and np.all(steps > 0):  # each image near its frame's time, or the frames are mixed up
        local = np.minimum(np.r_[steps, np.inf], np.r_[np.inf, steps])
        off = np.abs(times - frame_times) / local
        if off.max() > 1.0:
            k, t = np.unravel_index(int(np.argmax(off)), off.shape)
            raise CTPDataError(
                f"{stack.members[stack.positions[k]][t][1]}: its {source} is {abs(times[k, t] - frame_times[t]):.3g} s "
                f"from the other slices of frame {t + 1}, more than a frame interval: the frames cannot be assembled."
            )
    frame_times = frame_times - frame_times[0]
    if source == "TemporalPositionIndex":
        frame_times = frame_times * float(frame_interval)
    try:
        frame_times = validate_frame_times(frame_times, n_frames, name=f"{folder} frame times ({source})")
    except ValueError as err:
        raise CTPDataError(str(err)) from err
    array = np.empty((stack.size[1], stack.size[0], len(stack.positions), n_frames), dtype=np.float32)
    for k, z in enumerate(stack.positions):
        for t, (_, path) in enumerate(stack.members[z]):
            array[:, :, k, t] = read_pixels(path).T
    study = {key: str(images[0][1].get(key, "")) for key in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}
    references = [stack.members[z][0][1] for z in stack.positions]
    return DicomSeries(array, stack.affine(), frame_times, references, source, study)


def read_map_series(images: list[tuple[Path, object]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """One derived map series (one image per slice) as ``(array (column, row, slice), RAS affine)`` in the
    map's physical units (each image's RescaleSlope / RescaleIntercept applied)."""
    stack = _stack(images, lambda header: 0.0, f"{name} map series", order_name="")
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
        if _is_derived(header):
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
        descriptions = sorted({str(h.get("SeriesDescription", "")) for _, h in files if _is_derived(h)})
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
        if not any(not _is_derived(h) for _, h in files):
            raise CTPDataError(f"{folder}: no MIP series and no CTP series to compute the MIP from.")
        series = read_ctp_dicom(folder, files=files)
        maps["mip"] = (series.array.max(axis=-1), series.affine)
        check("mip", folder)
    out = Path(output_dir)
    return {name: str(save_nifti(out / f"{name}.nii.gz", array, affine)) for name, (array, affine) in maps.items()}


def provenance(series: DicomSeries, folder: str | os.PathLike) -> dict:
    """What a converted series came from: the folder, UIDs, time source and the first frame's files."""
    return {
        "folder": str(folder),
        **series.study,
        "time_source": series.time_source,
        "reference_files": [str(p) for p in series.reference_files],
    }


def load_ctp_series(
    path: str | os.PathLike, frame_interval: float | None = None
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray | None, dict | None]:
    """A raw CTP series from a 4D NIfTI (with optional frame-time sidecar) or a DICOM folder:
    ``(array, frame_interval_s, affine, frame_times or None, DICOM provenance or None)``."""
    if is_dicom_folder(path):
        series = read_ctp_dicom(path, frame_interval)
        return series.array, series.frame_interval, series.affine, series.frame_times, provenance(series, path)
    array, interval, affine = load_ctp(path)
    return array, interval, affine, load_frame_times(path, array.shape[3]), None


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
    has_ctp = any(not _is_derived(header) for _, header in files)
    if any(_is_derived(header) for _, header in files):
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


def read_header(path: str | os.PathLike):
    """The header of one DICOM file (pixel data not read)."""
    return _pydicom().dcmread(path, stop_before_pixels=True)


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """One image's pixels (rows, columns) in modality units (HU for CT), decoded whatever the transfer syntax."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        return np.asarray(pydicom.pixels.apply_modality_lut(pixels, ds), dtype=np.float32)
    except Exception as err:  # decoders raise many types: missing plugin, corrupt stream, truncated file
        syntax = ""
        try:
            syntax = f" (transfer syntax {ds.file_meta.TransferSyntaxUID.name})"
        except Exception:
            pass
        raise CTPDataError(f"{path}: cannot decode the pixel data{syntax}: {err}") from err
