"""A real MONAI Label 0.8.5 server with this bundle's app (``label/``), in its own environment (``.ci/label``
makes ``.venv-label``; ``CTP_LABEL_VENV`` names another), answering ``POST /infer/ctp_stroke`` on studies its
datastore holds with the bundle's own labels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from conftest import missing_engine, reaping
from postgres import free_port

from scripts.clinical.pipeline import label_studies
from scripts.learning.model.networks import create_network

ROOT = Path(__file__).resolve().parents[1]
WIDTH = json.loads((ROOT / "bundle/configs/inference.json").read_text())["encoder_width"]


def label_venv() -> Path:
    venv = Path(os.environ.get("CTP_LABEL_VENV") or ROOT / ".venv-label")
    if not (venv / "bin" / "monailabel").is_file():
        missing_engine(f"no MONAI Label environment at {venv} (make it with: bash .ci/label)")
    return venv


def infer(url: str, image: str, params: dict, output: str) -> bytes:
    """``POST /infer/ctp_stroke?image=...&output=...`` with ``params`` as the multipart form field MONAI Label reads."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
            f"--{boundary}--\r\n").encode()  # fmt: skip
    request = urllib.request.Request(
        f"{url}/infer/ctp_stroke?image={image}&output={output}", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=600) as response:
        return response.read()


def test_a_monai_label_server_labels_a_datastore_study_as_the_bundle_does(tiny_cohort, tmp_path):
    venv = label_venv()
    item = json.loads(tiny_cohort.read_text())["test"][0]
    datastore = tmp_path / "datastore"
    datastore.mkdir()
    shutil.copyfile(tiny_cohort.parent / item["ctp"], datastore / f"{item['id']}.nii.gz")
    model = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save({"network": create_network("SF", "PMs+N", pretrained=False, encoder_width=WIDTH).state_dict()}, model)
    port = free_port()
    command = [str(venv / "bin" / "monailabel"), "start_server", "--app", str(ROOT / "label"), "--studies",
               str(datastore), "--port", str(port), "--host", "127.0.0.1", "--conf", "bundle_python", sys.executable,
               "--conf", "checkpoint", str(model)]  # fmt: skip
    environment = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}  # its CLI runs `python`
    url = f"http://127.0.0.1:{port}"
    with reaping() as processes:
        log = open(tmp_path / "server.log", "ab")
        processes.append(subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log, stderr=log))
        deadline = time.monotonic() + 180
        while True:
            try:
                info = json.loads(urllib.request.urlopen(f"{url}/info/", timeout=5).read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert processes[0].poll() is None and time.monotonic() < deadline, (
                    tmp_path / "server.log"
                ).read_text()[-3000:]
                time.sleep(1)
        assert info["models"]["ctp_stroke"]["labels"] == {"penumbra": 1, "core": 2}
        assert info["datastore"]["total"] == 1
        for params in ({"nihss": 8}, {"nihss": 8, "threshold": True}):
            method = "threshold" if params.get("threshold") else "network"
            answer = json.loads(infer(url, item["id"], params, "json"))
            label_file = tmp_path / f"{method}.nii.gz"
            label_file.write_bytes(infer(url, item["id"], params, "image"))
            patient = tmp_path / method / "study"
            patient.mkdir(parents=True)
            shutil.copyfile(tiny_cohort.parent / item["ctp"], patient / "ctp.nii.gz")
            checkpoint = None if method == "threshold" else model
            label_studies(patient, tmp_path / method / "out", checkpoint, method == "threshold", nihss=8)
            expected = nib.load(tmp_path / method / "out" / "study" / "label.nii.gz")
            served = nib.load(label_file)
            assert np.array_equal(np.asarray(served.dataobj), np.asarray(expected.dataobj)), method
            assert np.allclose(served.affine, expected.affine)
            report = json.loads((tmp_path / method / "out" / "study" / "report.json").read_text())
            assert answer["volumes_ml"] == report["volumes_ml"] and answer["method"] == report["method"]
        processes[0].terminate()
