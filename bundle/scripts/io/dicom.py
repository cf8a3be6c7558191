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
- **Time** (:mod:`.dicom_time`) comes from the first of its ``TIME_SOURCES`` that every image carries, with
  distinct values at each slice position: GE's private Mid Scan Time (``GEMS_ACQU_01`` (0019,xx24), a binary
  double in a DS element: GE cine runs repeat one ``AcquisitionTime`` on every frame), ``AcquisitionDateTime``,
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

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from .dicom_pixels import read_pixels
from .dicom_time import image_seconds, time_source
from .files import CTPDataError
from .images import MIN_FRAMES, load_ctp, load_frame_times, validate_frame_times

logger = logging.getLogger(__name__)


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

    return pydicom


def dicom_files(folder: str | os.PathLike) -> list[tuple[Path, object]]:
    """``(path, header)`` of every DICOM file under ``folder`` (pixel data not read); non-DICOM files skipped."""
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


def is_derived(header) -> bool:
    return "DERIVED" in [str(v).upper() for v in (header.get("ImageType") or [])]


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


@dataclass
class ImageStack:
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


def stack_images(images: list[tuple[Path, object]], order, what: str, order_name: str = "time") -> ImageStack:
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
    return ImageStack(positions, members, orientation, spacing, size, gap, origins[positions[0]])


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
    images = [(p, h) for p, h in (files if files is not None else dicom_files(folder)) if not is_derived(h)]
    if not images:
        raise CTPDataError(f"{folder}: no original CT images (only derived images such as vendor maps).")
    for path, header in images:
        _check_ct(path, header)
    source = time_source(images)
    if source == "TemporalPositionIndex" and not frame_interval:
        raise CTPDataError(
            f"{images[0][0]}: the images carry only TemporalPositionIndex (an order, no time); "
            "pass frame_interval (seconds between frames)."
        )
    stack = stack_images(images, lambda header: image_seconds(header, source), "CTP study")
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
    logger.info("%s: decoding %d slices x %d frames (time from %s)", folder, len(stack.positions), n_frames, source)
    for k, z in enumerate(stack.positions):
        for t, (_, path) in enumerate(stack.members[z]):
            array[:, :, k, t] = read_pixels(path).T
    study = {key: str(images[0][1].get(key, "")) for key in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}
    references = [stack.members[z][0][1] for z in stack.positions]
    return DicomSeries(array, stack.affine(), frame_times, references, source, study)


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


def read_header(path: str | os.PathLike):
    """The header of one DICOM file (pixel data not read)."""
    return pydicom.dcmread(path, stop_before_pixels=True)
