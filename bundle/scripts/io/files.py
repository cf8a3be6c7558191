"""Files the bundle writes, written atomically (a temporary file renamed into place), and the error that
names a bad input file."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


class CTPDataError(ValueError):
    """Input data that cannot be used; the message names the file or field and the problem."""


class OutputWriteError(OSError):
    """An output that could not be written (full disk, quota, read-only folder); the message names the folder,
    the cause and what was kept."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_failure(folder: str | os.PathLike, err: OSError, what: str, kept: str) -> OutputWriteError:
    """One line for an output write that failed: ``<folder>: <what> could not be written (<cause>); <kept>``."""
    cause = "no space left on the device" if err.errno in NO_SPACE_ERRNOS else (err.strerror or str(err))
    error = OutputWriteError(f"{folder}: {what} could not be written ({cause}); {kept}")
    error.errno = err.errno
    return error


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
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    frame_interval: float | None = None,
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


def save_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as CSV atomically; the columns are every key in first-seen order (blank where absent)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return save_text(path, buffer.getvalue())
