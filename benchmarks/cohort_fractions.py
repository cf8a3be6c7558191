"""Class fractions of a cohort: healthy / penumbra / core as % of brain voxels, per group and overall.

Brain voxels are those with a true CBF (grey and white matter); the paper reports 93.1 / 6.2 / 0.7 %
overall and 97.6 / 2.2 / 0.2 % for Non-LVO. Also prints NIHSS and hypoperfused volume (ml) per group.
Run: python benchmarks/cohort_fractions.py [data/synthetic/datalist.json]
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.io import GROUPS, load_datalist  # noqa: E402


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "data/synthetic/datalist.json")
    datalist = load_datalist(path)
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, dtype=np.int64))
    nihss: dict[str, list[int]] = defaultdict(list)
    volumes: dict[str, list[float]] = defaultdict(list)
    for item in (i for split in datalist.values() for i in split):
        if "cbf_true" not in item:
            raise SystemExit(f"{path}: item {item['id']} has no cbf_true; class fractions need a synthetic cohort.")
        label_img = nib.load(item["label"])
        label = np.asarray(label_img.dataobj)
        brain = np.asarray(nib.load(Path(path).parent / item["cbf_true"]).dataobj) > 0
        voxel_ml = float(np.prod(label_img.header.get_zooms()[:3])) / 1000.0
        for group in (item["group"], "all"):
            counts[group] += np.bincount(label[brain].astype(np.int64), minlength=3)[:3]
            nihss[group].append(item["nihss"])
            volumes[group].append(float((label > 0).sum()) * voxel_ml)
    print(f"cohort: {path}")
    print("| group | patients | healthy % | penumbra % | core % | hypoperfused ml (mean) | NIHSS mean (range) |")
    print("|---|---|---|---|---|---|---|")
    for group in (*GROUPS, "all"):
        if group not in counts:
            continue
        frac = 100.0 * counts[group] / counts[group].sum()
        n = len(nihss[group])
        print(
            f"| {group} | {n} | {frac[0]:.1f} | {frac[1]:.1f} | {frac[2]:.2f} | {np.mean(volumes[group]):.1f} | "
            f"{np.mean(nihss[group]):.1f} ({min(nihss[group])}-{max(nihss[group])}) |"
        )
    print("paper (152 patients): all 93.1 / 6.2 / 0.7 %; Non-LVO 97.6 / 2.2 / 0.2 %")


if __name__ == "__main__":
    main()
