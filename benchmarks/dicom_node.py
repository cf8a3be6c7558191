"""Benchmark: a study received by the DICOM node -> its SEG, SR and SC in the PACS (a real Orthanc), seconds.

For each study size, a simulated LVO study is written as DICOM (JPEG Lossless, one series, as the ``writing``
workflow writes it by default), uploaded to a throwaway Orthanc (``tests/orthanc.py``), and Orthanc is asked to
send it to the node (``python -m monai.bundle run listening --config_file bundle/configs/dicom_node.json``,
started and warm beforehand). Timed from the C-STORE request to Orthanc until the SEG, the SR and the SC are in
the study in Orthanc, split into Orthanc's sending, the node's quiet time (``--quiet_seconds``: how long a study
must be silent before it counts as complete) and labelling plus return. Once with the threshold overlay and once
with SF(PMs+N) at the default width (untrained weights, fp32; speed does not depend on the weights).

Optionally a screenshot of Orthanc's web interface (Orthanc Explorer, headless Chromium) of the first study with
the returned series: ``--screenshot bundle/docs/images/orthanc_study.png``.

Run: python benchmarks/dicom_node.py [--sizes 128 512] [--slices 16] [--quiet 2] [--screenshot PNG]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import orthanc as pacs  # noqa: E402
from inference_speed import make_study, untrained_checkpoint  # noqa: E402
from postgres import free_port  # noqa: E402

from scripts.simulation.dicom_study import write_ctp_dicom  # noqa: E402

NODE_AET = "CTPNODE"


def start_node(work: Path, port: int, orthanc: pacs.Orthanc, threshold: bool, checkpoint: Path, quiet: float):
    command = [
        sys.executable, "-m", "monai.bundle", "run", "listening", "--config_file", "bundle/configs/dicom_node.json",
        "--storage_dir", str(work), "--port", str(port), "--host", "127.0.0.1", "--ae_title", NODE_AET,
        "--quiet_seconds", str(quiet), "--threshold", str(threshold).lower(), "--checkpoint", str(checkpoint),
        "--inference", "{'nihss': 12, 'precision': 'fp32'}",
        "--destinations", json.dumps({"pacs": orthanc.destination}).replace('"', "'"),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=open(work.with_suffix(".log"), "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:  # Orthanc's C-ECHO to the node answers once it listens
        try:
            orthanc.request("POST", "/modalities/ctpnode/echo", {"Timeout": 2}, timeout=10)
            return process
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the node did not start: {work.with_suffix('.log').read_text()[-3000:]}") from None
            time.sleep(0.5)


def results_in(orthanc: pacs.Orthanc, study: str) -> bool:
    modalities = {s["MainDicomTags"]["Modality"] for s in orthanc.request("GET", f"/studies/{study}/series")}
    return {"SEG", "SR", "OT"} <= modalities


def round_trip(orthanc: pacs.Orthanc, study: str) -> tuple[float, float]:
    """Seconds of Orthanc's sending, and from the request until the results are in the study."""
    start = time.perf_counter()
    orthanc.request("POST", "/modalities/ctpnode/store", {"Resources": [study], "Synchronous": True}, timeout=600)
    sent = time.perf_counter() - start
    while not results_in(orthanc, study):
        if time.perf_counter() - start > 1200:
            raise SystemExit("no results within 20 minutes")
        time.sleep(0.1)
    return sent, time.perf_counter() - start


def screenshot(orthanc: pacs.Orthanc, study: str, path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium for the screenshot (Debian package chromium)")
    url = f"{orthanc.url}/app/explorer.html#study?uuid={study}"
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,900", "--virtual-time-budget=8000", f"--screenshot={path.resolve()}", url],
                   check=True, capture_output=True)  # fmt: skip
    print(f"screenshot of {url}: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--quiet", type=float, default=2.0, help="the node's --quiet_seconds")
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("| study | images | method | Orthanc sends s | quiet s | labelling + return s | sent -> results in PACS s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = work / "model.pt"
        untrained_checkpoint(checkpoint)
        port = free_port()
        with pacs.server({"ctpnode": [NODE_AET, "127.0.0.1", port]}) as orthanc:
            for size in args.sizes:
                patient = make_study(work / f"simulated_{size}", size, args.slices)
                for method, threshold in (("threshold", True), ("SF(PMs+N)", False)):
                    folder = work / f"dicom_{size}_{method}"  # a study of its own (new UIDs) per run
                    info = write_ctp_dicom(patient / "ctp.nii.gz", folder, transfer_syntax="jpeg-lossless")
                    study = orthanc.upload(sorted(folder.rglob("*.dcm"))).pop()
                    node = start_node(work / f"node_{size}_{method}", port, orthanc, threshold, checkpoint, args.quiet)
                    try:
                        sent, total = round_trip(orthanc, study)
                    finally:
                        node.terminate()
                        node.wait(timeout=120)
                    shape = f"{size}x{size}x{args.slices}x60"
                    print(f"| {shape} | {info['files']} | {method} | {sent:.1f} | {args.quiet:.0f} | "
                          f"{total - sent - args.quiet:.1f} | {total:.1f} |", flush=True)  # fmt: skip
                    if args.screenshot is not None:
                        screenshot(orthanc, study, args.screenshot)
                        args.screenshot = None


if __name__ == "__main__":
    main()
