"""MONAI Label app: this bundle's inference as a MONAI Label infer task on the studies a datastore holds.

The datastore holds one raw 4D CT perfusion series per study (``<id>.nii.gz``, the frame interval in
``pixdim[4]``) or a DICOM study folder; ``POST /infer/ctp_stroke?image=<id>`` returns the core/penumbra label
(0 healthy, 1 penumbra, 2 core) on the study's grid and the clinical report's figures as its params.

MONAI Label 0.8.5 needs pydicom < 3 (its ``pydicom-seg``), the bundle pydicom >= 3 (highdicom 0.28), so the app
lives in an environment of its own (``.ci/label``: monailabel 0.8.5 with pydicom 2.4.4, pydicom-seg 0.4.1,
pynetdicom 2.0.2, dicomweb-client 0.59.1) and runs the bundle's documented inference command with the bundle's
interpreter (``--conf bundle_python PATH``, default ``CTP_BUNDLE_PYTHON`` or ``python``): one pipeline, the
command line's.

    monailabel start_server --app label --studies DATASTORE --conf bundle_python .venv/bin/python \\
        [--conf threshold true] [--conf checkpoint MODEL.pt]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[1]
LABELS = {"penumbra": 1, "core": 2}


class CTPStrokeInfer(InferTask):
    """Core and penumbra from one study by the bundle's ``inference`` workflow, run with the bundle's interpreter.

    Request params: ``nihss`` (0-42; the network takes it), ``threshold`` (the RAPID-like overlay instead).
    """

    def __init__(self, python: str, threshold: bool = False, checkpoint: str | None = None) -> None:
        super().__init__(InferType.SEGMENTATION, LABELS, 3, "CTP stroke core and penumbra (research use only)",
                         config={"nihss": 12, "threshold": threshold})  # fmt: skip
        self.python, self.threshold, self.checkpoint = python, threshold, checkpoint

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict]:
        image = Path(request["image"])
        threshold = str(request.get("threshold", self.threshold)).lower() == "true"
        work = Path(tempfile.mkdtemp(prefix="ctp-stroke-"))
        try:
            study = work / "input" / "study"  # the folder name is the patient id
            if image.is_dir():
                shutil.copytree(image, study)
            else:
                study.mkdir(parents=True)
                os.symlink(image.resolve(), study / "ctp.nii.gz")
            configs = ["bundle/configs/inference.json"] + (
                ["bundle/configs/inference_threshold.json"] if threshold else []
            )
            command = [
                self.python, "-m", "monai.bundle", "run", "inference", "--config_file", repr(configs),
                "--input", str(study), "--output_dir", str(work / "out"), "--nihss", str(int(request.get("nihss", 12))),
                *(["--checkpoint", self.checkpoint] if self.checkpoint and not threshold else []),
            ]  # fmt: skip
            done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"the bundle's inference failed on {image}: {reason}")
            label = Path(tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name)
            shutil.copyfile(work / "out" / "study" / "label.nii.gz", label)
            report = json.loads((work / "out" / "study" / "report.json").read_text())
            return str(label), {"volumes_ml": report["volumes_ml"], "method": report["method"], "label_names": LABELS}
        finally:
            shutil.rmtree(work, ignore_errors=True)


class CTPStrokeApp(MONAILabelApp):
    """One infer task, ``ctp_stroke``; no training from MONAI Label (the bundle trains itself)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.python = conf.get("bundle_python") or os.environ.get("CTP_BUNDLE_PYTHON") or "python"
        self.threshold = str(conf.get("threshold", "false")).lower() == "true"
        self.checkpoint = conf.get("checkpoint")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="ctp-stroke",
                         description="Core and penumbra from CT perfusion (research use only)",
                         version=json.loads((REPOSITORY / "bundle/configs/metadata.json").read_text())["version"],
                         labels=LABELS)  # fmt: skip

    def init_infers(self) -> dict[str, InferTask]:
        return {"ctp_stroke": CTPStrokeInfer(self.python, self.threshold, self.checkpoint)}
