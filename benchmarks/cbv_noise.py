"""How noisy the computed CBV is per tissue state, and how well it tells core from penumbra, per way of computing it.

On patients re-simulated from a synthetic cohort's ``generator`` entry (``--split``'s LVO patients; the
default cohort's training split by default, so no test patient is looked at), for each variant: the median
over patients of the median |relative error| of CBV against the true CBV, and of the median ratio, in healthy
tissue, penumbra and core (the simulator's states, parenchyma only), and the area under the ROC curve with which a
low CBV tells core from penumbra voxels (1 = perfect; the true CBV's own is printed for reference). Variants: the
default maps, the per-voxel arrival baseline (``baseline="arrival"``), stronger denoising (TIPS 4.5 mm, range 2),
and the baseline made exact (``true_map_network.recompute``: the noise in each voxel's baseline frames re-centred
on its noise-free value, every frame keeping its noise).
Run: python benchmarks/cbv_noise.py [--datalist data/synthetic/datalist.json] [--patients 10] [--split training]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT / "benchmarks")]

from true_map_network import recompute  # noqa: E402

from scripts.io.datalist import read_datalist  # noqa: E402
from scripts.simulation.cohort import cohort_tasks  # noqa: E402
from scripts.simulation.phantom import CORE, HEALTHY, PENUMBRA  # noqa: E402

VARIANTS = {
    "default": ({}, False),
    "arrival baseline": ({"baseline": "arrival"}, False),
    "TIPS 4.5 mm, range 2": ({"smoothing_mm": 4.5, "tips_range": 2.0}, False),
    "exact baseline": ({}, True),
}
STATES = (("healthy", HEALTHY), ("penumbra", PENUMBRA), ("core", CORE))


def core_auc(cbv: np.ndarray, state: np.ndarray, inside: np.ndarray) -> float:
    """Area under the ROC curve of low CBV for core against penumbra voxels (NaN with fewer than 20 of either)."""
    core, penumbra = cbv[inside & (state == CORE)], cbv[inside & (state == PENUMBRA)]
    if min(core.size, penumbra.size) < 20:
        return float("nan")
    u = stats.mannwhitneyu(penumbra, core).statistic  # penumbra above core
    return float(u / (core.size * penumbra.size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datalist", default="data/synthetic/datalist.json", help="a synthetic cohort's datalist")
    parser.add_argument("--split", default="training")
    parser.add_argument("--patients", type=int, default=10, help="LVO patients of the split, in order")
    args = parser.parse_args()
    content = read_datalist(Path(args.datalist))
    ids = {item["id"] for item in content[args.split]}
    tasks = [t for t in cohort_tasks(content["generator"], "") if t["id"] in ids and t["group"] == "LVO"]
    tasks = tasks[: args.patients]
    rows: dict[str, list[list[float]]] = {name: [] for name in [*VARIANTS, "true CBV"]}
    for task in tasks:
        for name, (settings, exact) in VARIANTS.items():
            maps, study = recompute(task, settings, exact)
            true, state = study.truth["cbv"], study.state
            row = []
            for _, code in STATES:
                inside = maps.tissue & (state == code)
                ratio = maps.cbv[inside] / np.maximum(true[inside], 1e-6)
                row += [np.median(np.abs(ratio - 1.0)), np.median(ratio)] if inside.sum() > 20 else [np.nan] * 2
            rows[name].append([*row, core_auc(maps.cbv, state, maps.tissue)])
            if name == "default":  # the truth's own separation, in the default maps' tissue
                rows["true CBV"].append([np.nan] * 6 + [core_auc(true, state, maps.tissue)])
        print(f"{task['id']} done", file=sys.stderr)
    print(f"{len(tasks)} LVO patients of {args.datalist} ({args.split}); median over patients\n")
    print(
        "| CBV | abs. error healthy | penumbra | core | ratio healthy | penumbra | core | AUC core vs penumbra |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for name, values in rows.items():
        m = np.nanmedian(np.array(values, dtype=float), axis=0)
        cells = [f"{v:.0%}" if np.isfinite(v) else "-" for v in m[[0, 2, 4]]]
        cells += [f"{v:.2f}" if np.isfinite(v) else "-" for v in m[[1, 3, 5]]]
        print(f"| {name} | " + " | ".join(cells) + f" | {m[6]:.3f} |")


if __name__ == "__main__":
    main()
