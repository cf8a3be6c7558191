"""The bottom layer: datalists, NIfTI maps and series, DICOM CTP studies and vendor maps, atomic file writing,
and the input error type."""

from . import dicom
from .datalist import (
    FILE_KEYS,
    GROUPS,
    LABEL_VALUES,
    MAP_KEYS,
    REQUIRED_KEYS,
    SPLITS,
    check_patient,
    load_datalist,
    read_datalist,
    resolve_paths,
    validate_item,
)
from .files import CTPDataError, save_bytes, save_csv, save_json, save_nifti, save_text
from .images import (
    MAP_RANGES,
    MIN_FRAMES,
    check_map_values,
    frame_times_sidecar,
    load_ctp,
    load_frame_times,
    load_map,
    validate_frame_times,
    voxel_volume_ml,
)

__all__ = [
    "CTPDataError",
    "FILE_KEYS",
    "GROUPS",
    "LABEL_VALUES",
    "MAP_KEYS",
    "MAP_RANGES",
    "MIN_FRAMES",
    "REQUIRED_KEYS",
    "SPLITS",
    "check_map_values",
    "check_patient",
    "frame_times_sidecar",
    "load_ctp",
    "load_datalist",
    "load_frame_times",
    "load_map",
    "read_datalist",
    "resolve_paths",
    "dicom",
    "save_bytes",
    "save_csv",
    "save_json",
    "save_nifti",
    "save_text",
    "validate_frame_times",
    "validate_item",
    "voxel_volume_ml",
]
