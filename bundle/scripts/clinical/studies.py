"""The studies an inference run labels: found from a datalist, a folder of patient folders, one patient folder or
DICOM studies, checked, and given their maps (computed from a raw 4D series where no maps are given) before the
network runs. Work in progress lives in ``.<id>.partial`` folders until it is complete."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.utils import str2bool

from ..io import (
    SPLITS,
    CTPDataError,
    check_patient,
    check_patient_id,
    datalist_maps,
    read_datalist,
    resolve_paths,
)
from ..io.dicom import dicom_files, is_dicom_folder
from ..perfusion.brain_mask import brain_mask_from_mip
from ..perfusion.maps import compute_maps

logger = logging.getLogger(__name__)


PARTIAL = ".{}.partial"


def _patient_folder(folder: Path) -> dict | None:
    if all((folder / f"{k}.nii.gz").is_file() for k in datalist_maps()):
        return {"id": folder.name, **{k: str(folder / f"{k}.nii.gz") for k in datalist_maps()}}
    if (folder / "ctp.nii.gz").is_file():
        return {"id": folder.name, "ctp": str(folder / "ctp.nii.gz")}
    return None


def _dicom_studies(folder: Path) -> list[dict]:
    """One item per DICOM study (StudyInstanceUID) under ``folder``: the folder itself when it holds one
    study, else each study's own subfolder (its name is the patient id)."""
    files = dicom_files(folder)
    by_study: dict[str, set[str]] = {}
    for path, header in files:
        top = path.relative_to(folder).parts[0] if len(path.relative_to(folder).parts) > 1 else ""
        by_study.setdefault(str(header.get("StudyInstanceUID", "")), set()).add(top)
    if len(by_study) == 1:
        return [{"id": folder.name, "ctp": str(folder)}]
    tops = [next(iter(t)) for t in by_study.values() if len(t) == 1 and "" not in t]
    if len(tops) != len(by_study) or len(set(tops)) != len(tops):
        raise CTPDataError(f"{folder}: {len(by_study)} DICOM studies mixed in one folder; put each in its own folder.")
    return [{"id": top, "ctp": str(folder / top)} for top in sorted(tops)]


def find_studies(source: str | os.PathLike, split: str = "test") -> list[dict]:
    """Study items (``id``, map paths or ``ctp``, optional ``nihss``) from a datalist, a folder of patients or
    one patient."""
    path = Path(source)
    if path.is_file() and path.name.upper() == "DICOMDIR":  # DICOM media: the study tree is beside it
        path = path.parent
    if path.is_file():
        content = read_datalist(path)
        splits = [s for s in SPLITS if s in content] if split == "all" else [split]
        if any(not isinstance(content.get(s), list) for s in splits):
            raise CTPDataError(f"{path}: datalist has no list '{split}'.")
        items = []
        for s in splits:
            for i, item in enumerate(content[s]):
                if not isinstance(item, dict) or "id" not in item:
                    raise CTPDataError(f"{path} {s}[{i}]: each item needs an 'id'.")
                check_patient_id(item["id"], f"{path} {s}[{i}]")
                study = {k: v for k, v in item.items() if k in ("id", "nihss", "ctp", *datalist_maps())}
                items.append(resolve_paths(study, path.parent))
        return items
    if not path.is_dir():
        raise CTPDataError(f"{path}: input not found (a datalist JSON, a folder of patients or one patient folder).")
    single = _patient_folder(path)
    if single is not None:
        return [single]
    items = [item for item in (_patient_folder(p) for p in sorted(path.iterdir()) if p.is_dir()) if item is not None]
    if not items and is_dicom_folder(path):
        return _dicom_studies(path)
    if not items:
        raise CTPDataError(
            f"{path}: no patient found (folders with {', '.join(k + '.nii.gz' for k in datalist_maps())} or "
            "ctp.nii.gz, or DICOM studies)."
        )
    return items


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise CTPDataError(f"{folder}: output folder is not writable ({err.strerror or err}).") from err


def prepare_studies(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str = "test",
    nihss: int | None = None,
    needs_nihss: bool = False,
    overwrite: bool = False,
    perfusion: Mapping[str, Any] | None = None,
    check_values: bool = True,
    resume: bool = False,
) -> list[dict]:
    """Find and check the studies, compute maps for raw 4D series; return dataset items for the inference config.

    Every check runs before any network: missing, unreadable or mismatched maps, NaN/inf, map values
    implausible for their kind (unless ``check_values`` is false), a series without frame timing, missing
    NIHSS for a NIHSS model, existing outputs without ``overwrite``, an unwritable folder. With ``resume``,
    patients whose outputs are complete (written atomically, so a folder with its ``report.json``) are left out:
    an interrupted run (SIGTERM, SIGKILL, a full disk) continues where it stopped.
    """
    out = Path(output_dir)
    check_writable(out)
    for stale in out.glob(PARTIAL.format("*")):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    studies = find_studies(source, split)
    if not studies:
        raise CTPDataError(f"{source}: no study in split '{split}'.")
    if str2bool(resume) and not overwrite:
        remaining = [item for item in studies if not (out / str(item["id"]) / "report.json").is_file()]
        done = len(studies) - len(remaining)
        logger.info("resume: %d patient(s) already done in %s, %d to go", done, out, len(remaining))
        studies = remaining
    try:
        return [prepare_study(item, out, nihss, needs_nihss, overwrite, perfusion, check_values) for item in studies]
    except BaseException:
        for stale in out.glob(PARTIAL.format("*")):  # maps computed before the failure
            shutil.rmtree(stale, ignore_errors=True)
        raise


def prepare_study(
    item: dict,
    out: Path,
    nihss: int | None,
    needs_nihss: bool,
    overwrite: bool,
    perfusion: Mapping[str, Any] | None,
    check_values: bool = True,
) -> dict:
    """Check one study, compute its maps when only a raw series is given; return its dataset item."""
    pid = check_patient_id(item["id"], f"study {item.get('ctp') or item.get('cbf') or ''}".strip())
    if (out / pid).exists() and not overwrite:
        raise FileExistsError(
            f"{out / pid}: outputs already exist; pass --overwrite true or choose another --output_dir."
        )
    value = item.get("nihss", nihss)
    if value is None and needs_nihss:
        raise CTPDataError(
            f"patient {pid}: the model takes NIHSS but none is given; add 'nihss' to the datalist or pass --nihss."
        )
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= 42
    ):
        raise CTPDataError(f"patient {pid}: nihss must be an integer 0-42, got {value!r}.")
    item = {**item, "id": pid, "nihss": torch.tensor([float(value if value is not None else 0)])}
    missing = [k for k in datalist_maps() if k not in item]
    if missing:
        if "ctp" not in item:
            raise CTPDataError(
                f"patient {pid}: missing map(s) {', '.join(missing)} and no raw 'ctp' series to compute them from."
            )
        staging = out / PARTIAL.format(pid) / "maps"
        shutil.rmtree(staging, ignore_errors=True)
        logger.info("patient %s: computing maps from %s", pid, item["ctp"])
        start = time.perf_counter()
        paths = compute_maps(item["ctp"], staging, overwrite=True, **dict(perfusion or {}))
        logger.info("patient %s: maps computed in %.1f s", pid, time.perf_counter() - start)
        item.update({k: paths[k] for k in datalist_maps()})
        if "dicom" in json.loads((staging / "perfusion.json").read_text()):
            item["dicom_reference"] = str(staging / "perfusion.json")
    for key in datalist_maps():
        if not Path(item[key]).is_file():
            raise CTPDataError(f"patient {pid}: {key} file not found: {item[key]}.")
    check_patient(item, keys=datalist_maps(), check_values=check_values)
    if not brain_mask_from_mip(np.asarray(nib.load(item["mip"]).dataobj, dtype=np.float32)).any():
        raise CTPDataError(
            f"patient {pid}: no brain found in {item['mip']} (the MIP's brain mask is empty; is it a head CT in HU?)."
        )
    item["study"] = {k: item[k] for k in ("id", *datalist_maps(), "ctp", "dicom_reference") if k in item}
    item["study"]["nihss"] = int(value) if value is not None else -1
    return item
