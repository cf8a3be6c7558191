"""Benchmark: reading a DICOM CTP study and DICOM study -> DICOM SEG end to end.

A simulated 512x512x16-slice, 60-frame LVO study (960 CT images) is written as DICOM in each transfer syntax
asked for (``bundle/scripts/simulation/dicom_study.py``), then timed:

- **read**: ``read_ctp_dicom`` (all headers, grouping and checks, pixel decoding, the 4D array in HU);
- **end to end**: the documented command ``python -m monai.bundle run inference --input <study>`` (process
  start, reading, perfusion maps, network or thresholds, label, report, ``seg.dcm``, ``report_sr.dcm``,
  ``report_sc.dcm``), once with the threshold baseline and once with SF(PMs+N) (untrained weights, fp32;
  speed does not depend on the weights).

Run: python benchmarks/dicom_speed.py [--syntaxes explicit jpeg-lossless] [--size 512] [--slices 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from inference_speed import make_study, untrained_checkpoint  # noqa: E402

from scripts.io.dicom import read_ctp_dicom  # noqa: E402
from scripts.simulation.dicom_study import write_ctp_dicom  # noqa: E402


def end_to_end(study: Path, out: Path, threshold: bool, checkpoint: Path) -> float:
    configs = (
        "['bundle/configs/inference.json','bundle/configs/inference_threshold.json']"
        if threshold
        else ("bundle/configs/inference.json")
    )
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", configs, "--input",
               str(study), "--output_dir", str(out), "--nihss", "12", "--checkpoint", str(checkpoint)]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    if not next(out.glob("*/seg.dcm"), None):
        raise SystemExit(f"no seg.dcm under {out}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syntaxes", nargs="+", default=["explicit", "jpeg-lossless"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=16)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        patient = make_study(work / "simulated", args.size, args.slices)
        checkpoint = work / "model.pt"
        untrained_checkpoint(checkpoint)
        print("| transfer syntax | files | study MB | write s | read s | DICOM->SEG threshold s | DICOM->SEG SF s |")
        print("|---|---|---|---|---|---|---|")
        for syntax in args.syntaxes:
            study = work / f"dicom_{syntax}" / patient.name
            start = time.perf_counter()
            info = write_ctp_dicom(patient / "ctp.nii.gz", study, transfer_syntax=syntax)
            write = time.perf_counter() - start
            megabytes = sum(p.stat().st_size for p in study.rglob("*.dcm")) / 1e6
            start = time.perf_counter()
            series = read_ctp_dicom(study)
            read = time.perf_counter() - start
            assert series.array.shape == (args.size, args.size, args.slices, 60)
            threshold = end_to_end(study, work / f"out_threshold_{syntax}", True, checkpoint)
            network = end_to_end(study, work / f"out_sf_{syntax}", False, checkpoint)
            print(
                f"| {syntax} | {info['files']} | {megabytes:.0f} | {write:.1f} | {read:.1f} | {threshold:.1f} "
                f"| {network:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
