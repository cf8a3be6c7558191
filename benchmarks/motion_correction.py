"""Motion correction: map errors against the still study, with and without rigid registration.

Motion is injected by ``scripts.simulation.motion`` (scipy resampling: a slow drift plus 3 abrupt frames, up to
the given shift and angle), corrected by ``scripts.perfusion.motion`` (SimpleITK). For each level, on LVO studies
of the cohort simulator (3D motion; 128² x 16 slices, 40 frames of 1.5 s, 3 HU) and on the independent digital
phantom ringed with a skull (in-plane motion; the phantom's sections differ slice to slice), it prints the median
over tissue of |CBF - still CBF| (relative to the still median CBF) and of |Tmax - still Tmax| (s), the median
error of the registration's per-frame displacement against the injected one, and the seconds per frame. The
corrected series' automatic AIF is read as the maps workflow reads it (over a window, ``RESAMPLED_AIF_WINDOW``) and,
for comparison, voxel by voxel ("AIF per voxel"; the phantom's AIF is given, so only the simulator has it).
Run: python benchmarks/motion_correction.py [--patients 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.perfusion.arterial_input import RESAMPLED_AIF_WINDOW  # noqa: E402
from scripts.perfusion.deconvolution import compute_perfusion_maps  # noqa: E402
from scripts.perfusion.digital_phantom import PhantomDesign, make_phantom  # noqa: E402
from scripts.perfusion.motion import correct_motion  # noqa: E402
from scripts.simulation import phantom as ph  # noqa: E402
from scripts.simulation.motion import inject_motion  # noqa: E402
from scripts.simulation.simulate import simulate_study  # noqa: E402

LEVELS = ((2.0, 2.0), (5.0, 5.0), (10.0, 5.0))
"""(largest shift mm, largest angle degrees) of the injected motion."""


def errors(maps, still, roi) -> tuple[float, float]:
    """Median |CBF error| relative to the still median CBF, and median |Tmax error| (s), over ``roi``."""
    cbf = np.median(np.abs(maps.cbf - still.cbf)[roi]) / np.median(still.cbf[roi])
    return float(cbf), float(np.median(np.abs(maps.tmax - still.tmax)[roi]))


def one_case(ctp, spacing, dt, rng, shift, angle, in_plane, aif=None, roi=None) -> list[float]:
    still = compute_perfusion_maps(ctp, dt, spacing[:2], aif=aif)
    roi = still.tissue if roi is None else roi
    moved, truth = inject_motion(ctp, spacing, rng, max_shift_mm=shift, max_angle_deg=angle, in_plane=in_plane)
    start = time.perf_counter()
    corrected, found = correct_motion(moved, spacing)
    per_frame = (time.perf_counter() - start) / (ctp.shape[-1] - 1)
    before = errors(compute_perfusion_maps(moved, dt, spacing[:2], aif=aif), still, roi)
    windowed = compute_perfusion_maps(corrected, dt, spacing[:2], aif=aif, aif_window=RESAMPLED_AIF_WINDOW)
    after = errors(windowed, still, roi)
    per_voxel = errors(compute_perfusion_maps(corrected, dt, spacing[:2]), still, roi) if aif is None else after
    registration = float(np.median(np.abs(found.displacement_mm - truth.displacement_mm)[1:]))
    return [*before, *after, *per_voxel, registration, float(truth.displacement_mm.max()), per_frame]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        "| data | injected (shift mm / angle deg) | largest displacement mm | CBF error without | with | with, AIF "
        "per voxel | Tmax error s without | with | with, AIF per voxel | displacement error mm | s per frame |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    grid = ph.Grid(size=128, slices=16)
    design = PhantomDesign(shapes=("box", "exponential"), cbv=(2.0, 4.0), skull_px=4)
    for shift, angle in LEVELS:
        rows = []
        for patient in range(args.patients):
            rng = np.random.default_rng([args.seed, patient])
            study = simulate_study("LVO", grid, rng, 3.0, 40, 1.5)
            rows.append(one_case(study.ctp, grid.spacing, 1.5, rng, shift, angle, in_plane=False))
        phantom = make_phantom(design, noise_hu=3.0, frame_interval=1.5, seed=args.seed)
        rng = np.random.default_rng([args.seed, 99])
        digital = one_case(phantom.ctp, phantom.spacing, 1.5, rng, shift, angle, True, aif=phantom.aif, roi=phantom.roi)
        for label, values in ((f"simulator, {args.patients} LVO (mean)", np.mean(rows, axis=0)), ("phantom", digital)):
            cbf0, tmax0, cbf1, tmax1, cbf2, tmax2, reg, largest, per_frame = values
            print(
                f"| {label} | {shift:g} / {angle:g} | {largest:.1f} | {cbf0:.0%} | {cbf1:.0%} | {cbf2:.0%} | "
                f"{tmax0:.2f} | {tmax1:.2f} | {tmax2:.2f} | {reg:.2f} | {per_frame:.2f} |"
            )


if __name__ == "__main__":
    main()
