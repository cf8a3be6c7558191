"""A synthetic study written as a DICOM CT perfusion study, as scanners write one, so the whole DICOM path can
be tested end to end (DICOM in, maps, labels, DICOM SEG out).

Each image is a CT Image Storage instance (pydicom datasets, pydicom's encoders) with the geometry and
timing attributes real scanners write: ImagePositionPatient / ImageOrientationPatient / PixelSpacing /
SliceThickness, stored values 0..4095 with RescaleIntercept -1024, AcquisitionDateTime, AcquisitionDate
and AcquisitionTime, ContentDate and ContentTime (or only the attributes asked for), AcquisitionNumber and
TemporalPositionIndex per frame. Slices of one frame get times a few ms apart, as a rotating gantry gives.
Vendor layouts: ``"single"`` (one series, one acquisition per frame) or ``"per-frame"`` (one series per
time point). Transfer syntaxes: :data:`TRANSFER_SYNTAXES` (JPEG Lossless is Process 14 with predictor 6,
encoded by imagecodecs, hence ``1.2.840.10008.1.2.4.57``; JPEG-LS, JPEG 2000 and RLE by pydicom's own
encoders).

Vendor maps (``write_map_series``): one DERIVED\\SECONDARY CT series per map with its own rescale slope
(e.g. 0.01 for CBF), as perfusion software exports them.
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ImplicitVRLittleEndian, generate_uid

from ..io import CTPDataError, load_ctp, load_frame_times, load_map

TRANSFER_SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "implicit": "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "jpeg-lossless": "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Process 14
    "jpeg-ls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
}
LAYOUTS = ("single", "per-frame")
DEFAULT_TIME_TAGS = ("AcquisitionDateTime", "AcquisitionTime", "ContentTime")
START = datetime.datetime(2026, 1, 1, 8, 0, 0)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
SLICE_DELAY_S = 0.005  # time between two slices of one frame


def _grid(affine: np.ndarray, shape: Sequence[int]) -> tuple[list[float], list[float], list[np.ndarray], float]:
    """DICOM geometry from a NIfTI affine: orientation, pixel spacing (row, column), per-slice positions, gap."""
    columns = RAS_TO_LPS @ affine[:3, 0]  # x index: along a row
    rows = RAS_TO_LPS @ affine[:3, 1]  # y index: down a column
    slices = RAS_TO_LPS @ affine[:3, 2]
    spacing_x, spacing_y, gap = (float(np.linalg.norm(v)) for v in (columns, rows, slices))
    row_dir, col_dir = columns / spacing_x, rows / spacing_y
    if abs(row_dir @ col_dir) > 1e-6 or np.linalg.norm(np.cross(np.cross(row_dir, col_dir), slices)) > 1e-6 * gap:
        raise ValueError("the affine is sheared; only orthogonal grids are written as DICOM.")
    positions = [RAS_TO_LPS @ (affine @ np.array([0.0, 0.0, k, 1.0]))[:3] for k in range(shape[2])]
    return [*row_dir.tolist(), *col_dir.tolist()], [spacing_y, spacing_x], positions, gap


def _uid() -> str:
    return generate_uid()


def _geometry_attributes(orientation: list[float], spacing: list[float], gap: float) -> dict:
    return {
        "ImageOrientationPatient": [round(v, 6) for v in orientation],
        "PixelSpacing": [round(v, 6) for v in spacing],
        "SliceThickness": round(gap, 4),
    }


def _image(
    stored: np.ndarray,
    syntax: str,
    attributes: dict,
    position: np.ndarray,
    bits_stored: int = 12,
    signed: bool = False,
):
    """One CT Image Storage dataset with ``attributes`` holding ``stored`` (rows, columns; 16-bit, unsigned
    or ``signed``), encoded with ``syntax``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid()
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, int(signed)
    uid = TRANSFER_SYNTAXES[syntax]
    if syntax == "jpeg-lossless":
        ds.PixelData = encapsulate([imagecodecs.ljpeg_encode(stored, bitspersample=bits_stored)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
    else:
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if syntax == "implicit" else TRANSFER_SYNTAXES["explicit"]
        )
        ds.PixelData = np.ascontiguousarray(stored).astype("<i2" if signed else "<u2").tobytes()
        if syntax not in ("explicit", "implicit"):
            ds.compress(uid)
    return ds


def _stamp(seconds: float, tags: Sequence[str], index: int) -> dict:
    when = START + datetime.timedelta(seconds=seconds)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    values = {
        "AcquisitionDateTime": {"AcquisitionDateTime": date + time},
        "AcquisitionTime": {"AcquisitionDate": date, "AcquisitionTime": time},
        "ContentTime": {"ContentDate": date, "ContentTime": time},
        "TriggerTime": {"TriggerTime": round(seconds * 1000.0, 3)},
        "TemporalPositionIndex": {"TemporalPositionIndex": index + 1},
    }
    out = {}
    for tag in tags:
        out.update(values[tag])
    return out


def write_ctp_dicom(
    ctp: str | os.PathLike,
    output_dir: str | os.PathLike,
    layout: str = "single",
    transfer_syntax: str = "explicit",
    time_tags: Sequence[str] = DEFAULT_TIME_TAGS,
    patient_id: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the 4D CTP NIfTI ``ctp`` (HU, frame timing from its header or sidecar) as a DICOM CT study.

    The folder is filled under a temporary name and renamed into place when complete. Returns the study's
    UIDs and the number of files written.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}.")
    out = Path(output_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass overwrite=True (--overwrite true).")
    series, interval, affine = load_ctp(ctp)
    times = load_frame_times(ctp, series.shape[3])
    if times is None:
        times = np.arange(series.shape[3]) * interval
    orientation, spacing, positions, gap = _grid(affine, series.shape)
    pid = patient_id or Path(ctp).parent.name
    study_uid, frame_of_reference = _uid(), _uid()
    series_uids = [_uid()] * series.shape[3] if layout == "single" else [_uid() for _ in range(series.shape[3])]
    common = {
        "Modality": "CT",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "Manufacturer": "ctp-stroke-bundle (synthetic)",
        "PatientName": f"Synthetic^{pid}",
        "PatientID": pid,
        "PatientBirthDate": "",
        "PatientSex": "O",
        "PatientPosition": "HFS",
        "StudyInstanceUID": study_uid,
        "StudyDate": START.strftime("%Y%m%d"),
        "StudyTime": START.strftime("%H%M%S"),
        "StudyID": "1",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "StudyDescription": "CT perfusion (synthetic)",
        "FrameOfReferenceUID": frame_of_reference,
        "PositionReferenceIndicator": "",
        **_geometry_attributes(orientation, spacing, gap),
        "GantryDetectorTilt": 0,
        "KVP": 80,
        "RescaleIntercept": -1024,
        "RescaleSlope": 1,
        "RescaleType": "HU",
        "WindowCenter": 40,
        "WindowWidth": 80,
    }
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    stored = np.clip(np.round(series) + 1024, 0, 4095).astype(np.uint16)
    count = 0
    for t in range(series.shape[3]):
        for k in range(series.shape[2]):
            attributes = {
                "SeriesInstanceUID": series_uids[t],
                "SeriesNumber": 1 if layout == "single" else t + 1,
                "SeriesDescription": "CTP" if layout == "single" else f"CTP t{t + 1}",
                "AcquisitionNumber": t + 1,
                "InstanceNumber": (t * series.shape[2] + k + 1) if layout == "single" else k + 1,
                "SliceLocation": round(float(positions[k][2]), 4),
                **_stamp(float(times[t]) + k * SLICE_DELAY_S, time_tags, t),
            }
            ds = _image(stored[:, :, k, t].T, transfer_syntax, {**common, **attributes}, positions[k])
            folder = staging / (f"series{1:03d}" if layout == "single" else f"series{t + 1:03d}")
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"IM{t:03d}_{k:03d}.dcm", enforce_file_format=True)
            count += 1
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return {"study": study_uid, "frame_of_reference": frame_of_reference, "files": count}


def write_map_series(
    maps: dict[str, str | os.PathLike],
    output_dir: str | os.PathLike,
    descriptions: dict[str, str],
    slopes: dict[str, float],
    study_uid: str | None = None,
    frame_of_reference: str | None = None,
    patient_id: str = "synthetic",
) -> int:
    """Write NIfTI maps as vendor-style DICOM map series: one DERIVED\\SECONDARY CT series per map, stored
    value = map / slope (signed 16 bit), SeriesDescription from ``descriptions``. Returns the file count."""
    study_uid, frame_of_reference = study_uid or _uid(), frame_of_reference or _uid()
    count = 0
    for number, (name, path) in enumerate(maps.items(), start=100):
        data, affine = load_map(path)
        orientation, spacing, positions, gap = _grid(affine, data.shape)
        stored = np.round(data / slopes[name])
        if np.abs(stored).max() > 32767:
            raise CTPDataError(f"{path}: values do not fit 16 bits with slope {slopes[name]}.")
        stored = stored.astype(np.int16)
        series = {
            "Modality": "CT",
            "ImageType": ["DERIVED", "SECONDARY", "PERFUSION"],
            "PatientID": patient_id,
            "PatientName": f"Synthetic^{patient_id}",
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": _uid(),
            "FrameOfReferenceUID": frame_of_reference,
            "SeriesNumber": number,
            "SeriesDescription": descriptions[name],
            **_geometry_attributes(orientation, spacing, gap),
            "RescaleIntercept": 0,
            "RescaleSlope": slopes[name],
        }
        for k in range(data.shape[2]):
            attributes = {**series, "InstanceNumber": k + 1}
            ds = _image(stored[:, :, k].T, "explicit", attributes, positions[k], bits_stored=16, signed=True)
            folder = Path(output_dir) / f"series{number:03d}_{name}"
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"IM{k:03d}.dcm", enforce_file_format=True)
            count += 1
    return count
