"""Perfusion maps at the cohort's 128² and at a scanner's 256² and 512²: does anything depend on the pixel count?

One simulated LVO study per matrix size (the same patient and field of view, 16 slices of 5 mm, 60 frames of 1 s,
8 HU noise per voxel; ``inference_speed.make_study``), its maps computed by the bundle's defaults as the cohort
generator computes them, compared with the maps it was simulated from inside the brain (the true CBF's non-zero
voxels where the computed maps have tissue). Printed per size: the pixel, Tmax's median absolute error and the
share of the brain read above 30 s (an AIF taken from a vein reads well-perfused tissue there), and the median
relative error of CBF and CBV (signed: bias), in the brain and in the ischaemic region (label > 0).
Run: python benchmarks/resolution_maps.py [--sizes 128 256 512] [--slices 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from inference_speed import make_study  # noqa: E402


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def row(patient: Path) -> str:
    truth = {m: load(patient / "truth" / f"{m}.nii.gz") for m in ("cbf", "cbv", "tmax")}
    maps = {m: load(patient / f"{m}.nii.gz") for m in ("cbf", "cbv", "tmax")}
    label = load(patient / "label.nii.gz")
    brain = (truth["cbf"] > 0) & (maps["cbf"] != 0)
    pixel = float(nib.load(str(patient / "cbf.nii.gz")).header.get_zooms()[0])
    cells = [f"{pixel:.2f}", f"{np.median(np.abs(maps['tmax'] - truth['tmax'])[brain]):.2f}"]
    cells.append(f"{100 * np.mean(maps['tmax'][brain] > 30):.1f} %")
    for region in (brain, brain & (label > 0)):
        for m in ("cbf", "cbv"):
            defined = region & (truth[m] > 0)
            cells.append(f"{100 * np.median((maps[m] - truth[m])[defined] / truth[m][defined]):+.0f} %")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--slices", type=int, default=16)
    args = parser.parse_args()
    print("| matrix | pixel mm | Tmax median abs error s | Tmax > 30 s | CBF bias brain | CBV bias brain "
          "| CBF bias lesion | CBV bias lesion |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            patient = make_study(Path(tmp) / str(size), size, args.slices)
            print(f"| {size}² | {row(patient)} |", flush=True)


if __name__ == "__main__":
    main()
