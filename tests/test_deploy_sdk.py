"""deploy/app.py run by the real MONAI Deploy App SDK (4.0, Holoscan on CPU) in its own virtual environment
(``.ci/deploy`` makes ``.venv-deploy``; ``CTP_DEPLOY_PYTHON`` names another interpreter), compared with the
bundle's own inference on the same DICOM study."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import missing_engine

from scripts.clinical.dicom_outputs import read_segmentation, sr_volumes
from scripts.clinical.pipeline import label_studies
from scripts.learning.model.networks import create_network
from scripts.simulation.dicom_study import write_ctp_dicom

ROOT = Path(__file__).resolve().parents[1]
WIDTH = json.loads((ROOT / "bundle/configs/inference.json").read_text())["encoder_width"]


def deploy_python() -> Path:
    """The interpreter of the Deploy SDK's environment; skip here (fail under CI=true) where there is none."""
    python = Path(os.environ.get("CTP_DEPLOY_PYTHON") or ROOT / ".venv-deploy" / "bin" / "python")
    if not python.is_file():
        missing_engine(f"no MONAI Deploy SDK environment at {python} (make it with: bash .ci/deploy)")
    check = subprocess.run([python, "-c", "import monai.deploy, holoscan"], capture_output=True, text=True)
    if check.returncode != 0:
        missing_engine(f"{python} cannot import the MONAI Deploy SDK: {check.stderr[-500:]}")
    return python


@pytest.mark.parametrize("method", ["network", "threshold"])
def test_the_sdk_runs_the_app_on_a_dicom_study_with_the_bundle_outputs(tiny_cohort, tmp_path, method):
    """``python deploy/app.py -i STUDY -o OUT [-m MODEL] --nihss 12`` under the SDK (its application, its app
    context, its scheduler) gives the SEG, SR and SC of the bundle's own inference on the same study."""
    python = deploy_python()
    item = json.loads(tiny_cohort.read_text())["test"][0]
    study = tmp_path / "study"
    write_ctp_dicom(tiny_cohort.parent / item["ctp"], study, layout="per-frame", transfer_syntax="jpeg-lossless")
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    torch.manual_seed(0)
    torch.save({"network": create_network("SF", "PMs+N", pretrained=False, encoder_width=WIDTH).state_dict()}, model)
    options = ["-m", str(model)] if method == "network" else ["--threshold"]
    out = tmp_path / "sdk"
    result = subprocess.run(
        [python, str(ROOT / "deploy" / "app.py"), "-i", str(study), "-o", str(out), "--nihss", "12", *options],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Graph execution finished" in result.stdout + result.stderr  # the SDK's Holoscan executor ran it
    expected = tmp_path / "bundle"
    label_studies(study, expected, model if method == "network" else None, method == "threshold", nihss=12)
    label = nib.load(expected / "study" / "label.nii.gz")
    values = np.asarray(label.dataobj)
    assert np.array_equal(np.asarray(nib.load(out / "study" / "label.nii.gz").dataobj), values)
    assert np.array_equal(read_segmentation(out / "study" / "seg.dcm", label.affine, label.shape), values)
    assert sr_volumes(out / "study" / "report_sr.dcm") == sr_volumes(expected / "study" / "report_sr.dcm")
    report = json.loads((out / "study" / "report.json").read_text())
    assert (
        report["nihss"] == 12
        and report["method"] == json.loads((expected / "study" / "report.json").read_text())["method"]
    )
    source = pydicom.dcmread(next(study.rglob("*.dcm")), stop_before_pixels=True)
    for name in ("seg.dcm", "report_sr.dcm", "report_sc.dcm"):
        assert pydicom.dcmread(out / "study" / name).StudyInstanceUID == source.StudyInstanceUID
