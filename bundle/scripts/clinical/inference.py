"""What MONAI lacks for the inference workflow: writing each patient's outputs (label, probabilities, clinical
report, montage) into its folder atomically, running the engine so an interruption leaves no half-written
patient, and loading the model; finding the studies and their maps is :mod:`scripts.clinical.studies`.

Inputs (``--input``): a datalist JSON (items of ``split``), a folder of patient folders, or one patient
folder. A patient folder holds ``cbf/cbv/ttp/tmax/mip.nii.gz`` or a raw ``ctp.nii.gz`` (4D, frame interval
in pixdim[4]) or a DICOM CTP study (:mod:`scripts.io.dicom`); a datalist item has the map paths or a ``ctp``
path (NIfTI or DICOM folder). A folder holding several DICOM studies, each in its own subfolder, is a
folder of patients. NIHSS comes from the datalist item, else from ``--nihss``; a model with NIHSS input
refuses a study without it.

Outputs: ``<output_dir>/<id>/`` with ``label.nii.gz`` (uint8, the input map's affine and header),
``probabilities.nii.gz`` (optional, 3 channels; background outside the brain mask, like the label),
``report.json``, ``report.png`` and, for raw input, ``maps/``; for a DICOM study also ``seg.dcm``,
``report_sr.dcm`` and ``report_sc.dcm`` in the input's study (:mod:`scripts.clinical.dicom_outputs`). Each
folder is built as ``.<id>.partial`` and renamed into place when complete, so a failed or interrupted run
leaves no half-written patient.

Speed (``inference.json``): the network sees only the brain's bounding box (MIP mask plus ``crop_margin``
pixels, slices without brain skipped, padded to a multiple of 32; ``brain_crop false`` for whole slices) and
the labels are pasted back onto the input grid; ``precision auto`` is bf16 only where the device computes it
natively (:func:`scripts.learning.engine.precision.native_bf16`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from ..io import (
    CTPDataError,
    check_patient_id,
    datalist_maps,
    save_json,
    save_nifti,
    write_failure,
)
from ..learning.engine.checkpoints import latest_checkpoint
from ..learning.engine.precision import with_precision
from ..learning.engine.stopping import run_until_signal
from ..learning.model.weights import fit_weights, load_network_weights
from ..learning.tracking.registry import is_model_uri, registered_weights
from ..perfusion.brain_mask import brain_mask_from_mip
from .dicom_outputs import save_dicom_outputs
from .report import clinical_report, save_montage
from .studies import PARTIAL

logger = logging.getLogger(__name__)


class SaveStudyOutputsd(MapTransform):
    """Write one patient's outputs (label, optional probabilities, report JSON and PNG) and move them into place.

    Expects, per decollated item: ``pred`` (1, X, Y, Z) labels on the input grid, ``study`` (the prepared
    item: id, map paths, NIHSS or -1), optionally ``brain`` and ``probabilities`` (3, X, Y, Z). The map files
    are read again for the exact header and the Tmax map. Items without ``study`` (e.g. from MONAI Label)
    pass through unchanged.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        keys: str = "pred",
        study_key: str = "study",
        probabilities_key: str | None = None,
        method: str = "model",
        montage: bool = True,
        overwrite: bool = False,
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.study_key, self.probabilities_key = Path(output_dir), study_key, probabilities_key
        self.method, self.montage, self.overwrite = method, montage, overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.study_key not in d:
            return d
        study = d[self.study_key]
        pid = check_patient_id(study["id"], "inference outputs")
        reference = nib.load(study["cbf"])
        label = np.asarray(convert_to_numpy(d[self.keys[0]])[0], dtype=np.uint8)
        if label.shape != reference.shape:
            raise CTPDataError(
                f"patient {pid}: prediction shape {label.shape} differs from {study['cbf']} {reference.shape}."
            )
        staging = self.output_dir / PARTIAL.format(pid)
        try:
            report = self._write(staging, study, pid, label, reference, d)
        except OSError as err:  # a full disk or quota: nothing of this patient is left, the others are whole
            shutil.rmtree(staging, ignore_errors=True)
            raise write_failure(
                self.output_dir,
                err,
                f"patient {pid}'s outputs",
                "nothing of them is left and the patients before are complete; free space and rerun with --resume true",
            ) from err
        _move_into_place(staging, self.output_dir / pid, self.overwrite)
        volumes = report["volumes_ml"]
        logger.info("patient %s: core %.1f ml, penumbra %.1f ml", pid, volumes["core"], volumes["penumbra"])
        d["report"] = report
        return d

    def _write(self, staging: Path, study: Mapping, pid: str, label: np.ndarray, reference: Any, d: Mapping) -> dict:
        """Write one patient's outputs into ``staging``; return its report."""
        staging.mkdir(parents=True, exist_ok=True)
        save_nifti(staging / "label.nii.gz", label, reference.affine, header=reference.header)
        tmax = np.asarray(nib.load(study["tmax"]).dataobj, dtype=np.float32)
        mip = np.asarray(nib.load(study["mip"]).dataobj, dtype=np.float32)
        brain = convert_to_numpy(d["brain"])[0] > 0 if "brain" in d else brain_mask_from_mip(mip)
        if self.probabilities_key and self.probabilities_key in d:  # background outside the brain, as the label
            probabilities = np.moveaxis(
                np.asarray(convert_to_numpy(d[self.probabilities_key]), dtype=np.float32), 0, -1
            )
            background = np.eye(probabilities.shape[-1], dtype=np.float32)[0]
            probabilities = np.where(brain[..., None], probabilities, background)
            save_nifti(staging / "probabilities.nii.gz", probabilities, reference.affine)
        nihss = int(convert_to_numpy(study["nihss"]).reshape(-1)[0])
        report = clinical_report(
            label,
            tmax,
            reference.header.get_zooms()[:3],
            brain,
            nihss=nihss if nihss >= 0 else None,
            patient_id=pid,
            method=self.method,
        )
        report["inputs"] = {k: str(study[k]) for k in ("ctp", *datalist_maps()) if k in study}
        computed = staging / "maps" / "perfusion.json"  # maps made here from the raw series: their quality flags
        perfusion = json.loads(computed.read_text()) if computed.is_file() else {}
        report["quality"] = perfusion.get("quality")
        if perfusion:
            report["curves"] = {
                "interval_s": perfusion["curve_interval_s"],
                "aif_hu": perfusion["aif_hu"],
                "vof_hu": perfusion["vof_hu"],
            }
        save_json(staging / "report.json", report)
        if self.montage:
            save_montage(staging / "report.png", mip, label, report, affine=reference.affine)
        if "dicom_reference" in study:
            references = json.loads(Path(study["dicom_reference"]).read_text())["dicom"]["reference_files"]
            montage = staging / "report.png" if self.montage else None
            save_dicom_outputs(staging, label, report, references, montage)
        return report


def _move_into_place(staging: Path, target: Path, overwrite: bool) -> None:
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target}: outputs already exist; pass --overwrite true.")
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def run_inference(evaluator: Any, output_dir: str | os.PathLike) -> list[str]:
    """Run the inference engine; on failure or SIGTERM / SIGINT (:mod:`scripts.learning.engine.stopping`: stopped
    between patients) remove the unfinished patient folders. Return the finished ids."""
    out = Path(output_dir)
    try:
        run_until_signal(evaluator, "inference", "finished patients are kept; rerun with --resume true for the rest")
    finally:
        for stale in out.glob(PARTIAL.format("*")):
            shutil.rmtree(stale, ignore_errors=True)
    done = sorted(p.name for p in out.iterdir() if p.is_dir() and (p / "report.json").is_file())
    logger.info("inference outputs for %d patient(s) in %s", len(done), out)
    return done


def default_checkpoint(bundle_root: str | os.PathLike, run_dir: str | os.PathLike = "runs/default") -> str | None:
    """``<bundle>/models/model.pt`` when present, else the best checkpoint of the default training run
    (``runs/default/model/best_*.pt``)."""
    model = Path(bundle_root) / "models" / "model.pt"
    return str(model) if model.is_file() else latest_checkpoint(Path(run_dir) / "model", "best")


def load_model(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike | None,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
    tracking_uri: str | None = None,
) -> torch.nn.Module:
    """Load the trained weights into ``network`` (clear errors for a missing or unfitting checkpoint); in eval
    mode on ``device``, wrapped in :class:`~scripts.learning.engine.precision.FastForward` when a speed option is asked
    for. ``precision`` ``auto`` is bf16 where the device computes it natively
    (:func:`~scripts.learning.engine.precision.native_bf16`), else fp32.

    ``checkpoint`` is a file, or an MLflow model URI (``models:/NAME/VERSION``, ``models:/NAME@alias``) of a
    network registered by the training (``--registered_model_name``), fetched from ``tracking_uri``'s store.
    """
    if is_model_uri(checkpoint):
        fit_weights(network, registered_weights(str(checkpoint), tracking_uri), str(checkpoint))
    elif not checkpoint or not Path(checkpoint).is_file():
        raise CTPDataError(
            f"{checkpoint or 'bundle/models/model.pt'}: no trained model; train first or pass --checkpoint PATH."
        )
    else:
        load_network_weights(network, checkpoint)
    network.to(device).eval()
    return with_precision(network, precision, channels_last).eval()
