"""The bottom layer: datalists, NIfTI maps and series, DICOM CTP studies and vendor maps, atomic file writing,
and the input error type."""

from . import dicom
from .datalist import (
    GROUPS,
    LABEL_VALUES,
    SPLITS,
    check_patient,
    check_patient_id,
    file_keys,
    load_datalist,
    read_datalist,
    required_keys,
    resolve_paths,
    validate_item,
)
from .files import CTPDataError, OutputWriteError, save_bytes, save_csv, save_json, save_nifti, save_text, write_failure
from .images import (
    MIN_FRAMES,
    check_map_values,
    frame_times_sidecar,
    load_ctp,
    load_frame_times,
    load_map,
    validate_frame_times,
    voxel_volume_ml,
)
from .map_registry import MAPS, datalist_maps, network_maps

__all__ = [
    "CTPDataError",
    "OutputWriteError",
    "GROUPS",
    "LABEL_VALUES",
    "MAPS",
    "MIN_FRAMES",
    "SPLITS",
    "datalist_maps",
    "file_keys",
    "network_maps",
    "required_keys",
    "check_map_values",
    "check_patient",
    "check_patient_id",
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
    "write_failure",
    "validate_frame_times",
    "validate_item",
    "voxel_volume_ml",
]
