"""Datalists: the decathlon-style index of a cohort, validated with errors that name the file and the field.

Format (``shared/DESIGN.md``): ``{"training": [...], "validation": [...], "test": [...]}``; each item has
``id``, the map paths ``cbf``, ``cbv``, ``ttp``, ``tmax``, ``mip``, ``label`` (relative to the datalist file),
``nihss`` (integer 0-42) and ``group`` (``LVO``, ``Non-LVO`` or ``WIS``); ``ctp`` optional.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .files import CTPDataError
from .images import check_map_values, load_map
from .map_registry import datalist_maps


def required_keys() -> tuple[str, ...]:
    """Keys every datalist item must have: its id, every datalist map, label, NIHSS and group."""
    return ("id", *datalist_maps(), "label", "nihss", "group")


def file_keys() -> tuple[str, ...]:
    """Item keys holding file paths, relative to the datalist unless absolute."""
    return (*datalist_maps(), "label", "ctp")


GROUPS = ("LVO", "Non-LVO", "WIS")


SPLITS = ("training", "validation", "test")


LABEL_VALUES = (0, 1, 2)


def check_patient_id(pid: object, where: str) -> str:
    """``pid`` as a string that is safe as one folder or file name, or ``CTPDataError`` naming ``where``.

    Patient ids become output folders and file names (inference, evaluation reports, montages, the voxel
    baseline), so a datalist, folder name or DICOM header must not be able to write elsewhere: no path
    separator, not ``.`` or ``..``, no control character, not empty (``shared/DESIGN.md``).
    """
    text = str(pid)
    reason = None
    if not text.strip():
        reason = "it is empty"
    elif "/" in text or "\\" in text or os.sep in text or (os.altsep and os.altsep in text):
        reason = "it holds a path separator"
    elif text in (".", ".."):
        reason = "it is a relative folder"
    elif any(ord(c) < 32 or ord(c) == 127 for c in text):
        reason = "it holds a control character"
    if reason:
        raise CTPDataError(f"{where}: patient id {text!r} cannot be a folder name ({reason}).")
    return text


def validate_item(item: dict, where: str, base: Path | None = None, check_files: bool = True) -> dict:
    """Check one datalist item; return it with paths made absolute (relative to ``base``)."""
    if not isinstance(item, dict):
        raise CTPDataError(f"{where}: each item must be an object, got {type(item).__name__}.")
    missing = [key for key in required_keys() if key not in item]
    name = f"{where} (id {item.get('id', '?')})"
    if missing:
        raise CTPDataError(f"{name}: missing key(s) {', '.join(missing)}.")
    check_patient_id(item["id"], where)
    nihss = item["nihss"]
    if isinstance(nihss, bool) or not isinstance(nihss, (int, np.integer)) or not 0 <= int(nihss) <= 42:
        raise CTPDataError(f"{name}: nihss must be an integer 0-42, got {nihss!r}.")
    if item["group"] not in GROUPS:
        raise CTPDataError(f"{name}: group must be one of {', '.join(GROUPS)}, got {item['group']!r}.")
    out = resolve_paths(item, base)
    for key in file_keys():
        if key in out and check_files and not Path(out[key]).is_file():
            raise CTPDataError(f"{name}: {key} file not found: {out[key]}.")
    return out


def resolve_paths(item: dict, base: Path | None) -> dict:
    """A copy of ``item`` whose file paths (:func:`file_keys`) relative to ``base`` are made absolute."""
    out = dict(item)
    for key in file_keys():
        if key in out:
            path = Path(out[key])
            out[key] = str(path if path.is_absolute() or base is None else base / path)
    return out


def read_datalist(path: str | os.PathLike) -> dict:
    """The datalist file's JSON object, or one error naming the file: missing, not JSON, not an object."""
    path = Path(path)
    if not path.is_file():
        raise CTPDataError(f"{path}: datalist not found.")
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CTPDataError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(content, dict):
        raise CTPDataError(f"{path}: a datalist is a JSON object with keys {', '.join(SPLITS)}.")
    return content


def load_datalist(
    path: str | os.PathLike, splits: tuple[str, ...] = SPLITS, check_files: bool = True
) -> dict[str, list[dict]]:
    """Read and validate a datalist; item paths come back absolute. Missing splits give empty lists."""
    path = Path(path)
    content = read_datalist(path)
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
                raise CTPDataError(
                    f"{path}: patient id {checked['id']!r} appears in both {seen[checked['id']]} and {split}."
                )
            seen[checked["id"]] = split
            result[split].append(checked)
    return result


def check_patient(item: dict, keys: tuple[str, ...] | None = None, check_values: bool = True) -> None:
    """Load a validated item's maps and label (``keys``; by default every datalist map and the label): same shape
    and affine, finite, label values in {0, 1, 2}, and (``check_values``) map values plausible for their kind
    (:func:`~scripts.io.images.check_map_values`)."""
    keys = (*datalist_maps(), "label") if keys is None else keys
    reference_key, reference_shape, reference_affine, tissue = None, None, None, None
    for key in keys:
        data, affine = load_map(item[key])
        if reference_key is None:
            reference_key, reference_shape, reference_affine = key, data.shape, affine
        elif data.shape != reference_shape:
            raise CTPDataError(
                f"patient {item['id']}: {item[key]} has shape {data.shape} but {reference_key} has {reference_shape}."
            )
        elif not np.allclose(affine, reference_affine, atol=1e-3):
            raise CTPDataError(
                f"patient {item['id']}: {item[key]} has a different affine (voxel grid) from {reference_key}."
            )
        if check_values:
            check_map_values(key, data, item[key], tissue)
        if key == "cbf":
            tissue = data != 0
        if key == "label":
            bad = np.setdiff1d(np.unique(data), LABEL_VALUES)
            if bad.size:
                raise CTPDataError(
                    f"{item[key]}: label values must be 0, 1, 2; "
                    f"found {[int(v) if float(v).is_integer() else float(v) for v in bad]}."
                )
