"""Datalists and NIfTI files: atomic writing and validation with errors that name the file and the problem.

Datalist format (``shared/DESIGN.md``): decathlon-style ``{"training": [...], "validation": [...], "test": [...]}``;
each item has ``id``, the map paths ``cbf``, ``cbv``, ``ttp``, ``tmax``, ``mip``, ``label`` (relative to the
datalist file), ``nihss`` (integer 0-42) and ``group`` (``LVO``, ``Non-LVO`` or ``WIS``); ``ctp`` optional.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np

from .perfusion import MIN_FRAMES, validate_frame_times

MAP_KEYS = ("cbf", "cbv", "ttp", "tmax", "mip")
REQUIRED_KEYS = ("id", *MAP_KEYS, "label", "nihss", "group")
GROUPS = ("LVO", "Non-LVO", "WIS")
SPLITS = ("training", "validation", "test")
LABEL_VALUES = (0, 1, 2)


class CTPDataError(ValueError):
    """Input data that cannot be used; the message names the file or field and the problem."""


def _temporary(path: Path) -> Path:
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    return path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")


def _write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_nifti(
    path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, frame_interval: float | None = None,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write a NIfTI atomically; a 4D series gets ``pixdim[4] = frame_interval`` (seconds). With ``header``
    (e.g. the input map's), its fields are kept and only the data type follows ``array``."""
    array = np.asarray(array)
    img = nib.Nifti1Image(array, affine, header.copy() if header is not None else None)
    img.set_data_dtype(array.dtype)
    if header is not None:
        img.header.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.header.set_sform(affine, code=int(header["sform_code"]) or 1)
        img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    if frame_interval is not None:
        zooms = img.header.get_zooms()
        img.header.set_zooms((*zooms[:3], float(frame_interval)))
    return _write_atomically(path, lambda tmp: nib.save(img, tmp))


def save_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return _write_atomically(path, lambda tmp: tmp.write_text(text))


def save_bytes(path: str | os.PathLike, content: bytes) -> Path:
    """Write a binary file (e.g. a PNG) atomically."""
    return _write_atomically(path, lambda tmp: tmp.write_bytes(content))


def save_json(path: str | os.PathLike, content: Any) -> Path:
    """Write JSON atomically."""
    return save_text(path, json.dumps(content, indent=2) + "\n")


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise CTPDataError(f"{path}: file not found.")
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise CTPDataError(f"{path}: not a readable NIfTI file ({err}).") from err


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
        raise CTPDataError(str(err) if "FrameTimesStart" in str(err)
                           else f"{sidecar}: FrameTimesStart must be a list of numbers ({err}).") from err


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
            raise CTPDataError(f"{path}: no frame interval in the header (pixdim[4] = {interval}); set it in seconds "
                               f"or give per-frame times in {frame_times_sidecar(path).name} (FrameTimesStart).")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.isfinite(data).all():
        raise CTPDataError(f"{path}: contains NaN or infinite values.")
    return data, interval, img.affine


def load_map(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load one 3D map and return ``(array, affine)``, rejecting NaN/inf voxels."""
    path = Path(path)
    img = _load(path)
    if img.ndim != 3:
        raise CTPDataError(f"{path}: a map must be 3D (X, Y, slices), got shape {img.shape}.")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.isfinite(data).all():
        raise CTPDataError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN or infinite voxels.")
    return data, img.affine


def validate_item(item: dict, where: str, base: Path | None = None, check_files: bool = True) -> dict:
    """Check one datalist item; return it with paths made absolute (relative to ``base``)."""
    if not isinstance(item, dict):
        raise CTPDataError(f"{where}: each item must be an object, got {type(item).__name__}.")
    missing = [key for key in REQUIRED_KEYS if key not in item]
    name = f"{where} (id {item.get('id', '?')})"
    if missing:
        raise CTPDataError(f"{name}: missing key(s) {', '.join(missing)}.")
    nihss = item["nihss"]
    if isinstance(nihss, bool) or not isinstance(nihss, (int, np.integer)) or not 0 <= int(nihss) <= 42:
        raise CTPDataError(f"{name}: nihss must be an integer 0-42, got {nihss!r}.")
    if item["group"] not in GROUPS:
        raise CTPDataError(f"{name}: group must be one of {', '.join(GROUPS)}, got {item['group']!r}.")
    out = dict(item)
    for key in (*MAP_KEYS, "label", "ctp"):
        if key in out:
            path = Path(out[key])
            path = path if path.is_absolute() or base is None else base / path
            if check_files and not path.is_file():
                raise CTPDataError(f"{name}: {key} file not found: {path}.")
            out[key] = str(path)
    return out


def load_datalist(
    path: str | os.PathLike, splits: tuple[str, ...] = SPLITS, check_files: bool = True
) -> dict[str, list[dict]]:
    """Read and validate a datalist; item paths come back absolute. Missing splits give empty lists."""
    path = Path(path)
    if not path.is_file():
        raise CTPDataError(f"{path}: datalist not found.")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CTPDataError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(content, dict):
        raise CTPDataError(f"{path}: a datalist is a JSON object with keys {', '.join(SPLITS)}.")
    result: dict[str, list[dict]] = {}
    seen: dict[str, str] = {}
    for split in splits:
        items = content.get(split, [])
        if not isinstance(items, list):
            raise CTPDataError(f"{path}: '{split}' must be a list of items.")
        result[split] = []
        for i, item in enumerate(items):
            checked = validate_item(item, f"{path} {split}[{i}]", path.parent, check_files)
            if checked["id"] in seen:
                raise CTPDataError(f"{path}: patient id {checked['id']!r} appears in both {seen[checked['id']]} and {split}.")
            seen[checked["id"]] = split
            result[split].append(checked)
    return result


def check_patient(item: dict, keys: tuple[str, ...] = (*MAP_KEYS, "label")) -> None:
    """Load a validated item's maps and label (``keys``): same shape and affine, finite, label values in {0, 1, 2}."""
    reference_key, reference_shape, reference_affine = None, None, None
    for key in keys:
        data, affine = load_map(item[key])
        if reference_key is None:
            reference_key, reference_shape, reference_affine = key, data.shape, affine
        elif data.shape != reference_shape:
            raise CTPDataError(
                f"patient {item['id']}: {item[key]} has shape {data.shape} but {reference_key} has {reference_shape}."
            )
        elif not np.allclose(affine, reference_affine, atol=1e-3):
            raise CTPDataError(f"patient {item['id']}: {item[key]} has a different affine (voxel grid) from {reference_key}.")
        if key == "label":
            bad = np.setdiff1d(np.unique(data), LABEL_VALUES)
            if bad.size:
                raise CTPDataError(f"{item[key]}: label values must be 0, 1, 2; found {[int(v) if float(v).is_integer() else float(v) for v in bad]}.")
