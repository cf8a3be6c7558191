"""Benchmark: perfusion-map computation for one paper-sized study (512x512x16 slices x 60 frames).

Prints simulation and map times (median of repeats; also with the Gaussian denoising and with the arterial
baseline, the former default, which computes the maps once), voxels per second, and the motion correction's
time on the same series moved by up to 2 mm / 2 degrees.
Run: python benchmarks/perfusion_speed.py [--size 512 --slices 16 --frames 60 --repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.perfusion.deconvolution import PerfusionMaps, compute_perfusion_maps  # noqa: E402
from scripts.perfusion.motion import correct_motion  # noqa: E402
from scripts.simulation.motion import inject_motion  # noqa: E402
from scripts.simulation.phantom import Grid  # noqa: E402
from scripts.simulation.simulate import simulate_study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--noise", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-motion", action="store_true", help="do not time the motion correction")
    args = parser.parse_args()
    grid = Grid(size=args.size, slices=args.slices)
    start = time.perf_counter()
    study = simulate_study(
        "LVO", grid, np.random.default_rng(0), noise_hu=args.noise, n_frames=args.frames, lesion_model="separable"
    )
    simulate_s = time.perf_counter() - start

    def timed(**settings) -> tuple[list[float], PerfusionMaps]:
        """Seconds of each of ``args.repeats`` map computations with ``settings``, and the last maps."""
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            maps = compute_perfusion_maps(study.ctp, study.frame_interval, grid.spacing[:2], **settings)
            seconds.append(time.perf_counter() - start)
        return seconds, maps

    times, maps = timed()
    voxels = args.size * args.size * args.slices
    median = float(np.median(times))
    print(f"study: {args.size}x{args.size}x{args.slices} slices x {args.frames} frames, noise {args.noise} HU")
    print(f"simulation (4D series): {simulate_s:.2f} s")
    print(
        f"perfusion maps: median {median:.2f} s over {args.repeats} runs (min {min(times):.2f}, max {max(times):.2f})"
    )
    print(
        f"throughput: {voxels / median / 1e6:.2f} M voxels/s, "
        f"{voxels * args.frames / median / 1e6:.1f} M voxel-frames/s"
    )
    print(f"parenchyma voxels deconvolved: {int(maps.tissue.sum())} ({maps.tissue.mean():.0%} of the volume)")
    gaussian = float(np.median(timed(denoising="gaussian")[0]))
    print(f"the same with denoising='gaussian' (an option): median {gaussian:.2f} s")
    arterial = float(np.median(timed(baseline="aif")[0]))
    print(
        f"the same with baseline='aif' (the former default; maps computed once): median {arterial:.2f} s "
        f"(the default takes {median / arterial:.2f}x)"
    )
    if not args.skip_motion:
        # the workflow's motion correction, on the series moved by up to 2 mm / 2 degrees (every frame resampled)
        moved, _ = inject_motion(study.ctp, grid.spacing, np.random.default_rng(1), 2.0, 2.0, still_frames=1)
        start = time.perf_counter()
        _, found = correct_motion(moved, grid.spacing)
        seconds = time.perf_counter() - start
        print(
            f"motion correction (maps workflow, before the maps): {seconds:.2f} s, {seconds / (args.frames - 1):.2f} s "
            f"per frame, {int(found.resampled.sum())} frames resampled"
        )


if __name__ == "__main__":
    main()
