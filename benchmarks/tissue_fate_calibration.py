"""Calibration of the synthetic cohort's ground truth against real-world threshold agreement.

On a generated cohort (its estimated maps, labels and, for the tissue-fate model, latent parameters):

1. every patient: the RAPID-like threshold baseline on the estimated maps (unchanged thresholds, MIP brain
   mask, as ``inference`` with ``inference_threshold.json``) and the oracle (the fate rule on the true relative flow and
   the patient's latent ischaemia time; no model can have these), Dice / |dV| per class and group;
2. the best one-sided threshold of each single true map (pooled over lesion patients) per class;
3. the test split: threshold, the voxel-wise tissue-outcome baseline fitted on the training split
   (:mod:`scripts.learning.experiments.voxel_baseline`), and the oracle;
4. class fractions against the paper's 93.1 / 6.2 / 0.7 %.

Real-world targets (ISLES 2018, CTP against DWI; the issue's calibration band): threshold core Dice
0.25-0.5, hypoperfused / penumbra Dice 0.45-0.75, LVO core |dV| 5-25 ml; oracle >= 0.9.
Run: python benchmarks/tissue_fate_calibration.py [data/synthetic/datalist.json] [--no-voxel]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.io import GROUPS, load_datalist, load_map  # noqa: E402
from scripts.learning.engine.metrics import lesion_metrics  # noqa: E402
from scripts.learning.experiments.voxel_baseline import VoxelOutcomeModel, load_patient  # noqa: E402
from scripts.perfusion.thresholds import threshold_labels  # noqa: E402
from scripts.simulation.fate import best_single_map_dice, oracle_labels  # noqa: E402

CLASSES = ("core", "penumbra", "hypoperfused")
TRUE_MAPS = ("cbf", "cbv", "mtt", "tmax", "ttp")


def truth(root: Path, item: dict, key: str) -> np.ndarray:
    return np.asarray(nib.load(root / item[key]).dataobj, dtype=np.float32)


def table(title: str, rows: dict[str, list[dict]]) -> None:
    """Mean Dice and mean |dV| (ml) per method x group x class."""
    print(f"\n### {title}\n")
    print(
        "| method | group | n | "
        + " | ".join(f"Dice {c}" for c in CLASSES)
        + " | "
        + " | ".join(f"|dV| {c} ml" for c in CLASSES)
        + " |"
    )
    print("|---|---|---|" + "---|" * (2 * len(CLASSES)))
    for method, patient_rows in rows.items():
        for group in (*GROUPS, "all"):
            sel = [r for r in patient_rows if group in (r["group"], "all")]
            if not sel:
                continue
            dice = [np.mean([r[f"dice_{c}"] for r in sel]) for c in CLASSES]
            dv = [np.mean([r[f"adv_ml_{c}"] for r in sel]) for c in CLASSES]
            print(
                f"| {method} | {group} | {len(sel)} | "
                + " | ".join(f"{d:.2f}" for d in dice)
                + " | "
                + " | ".join(f"{v:.1f}" for v in dv)
                + " |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist", nargs="?", default="data/synthetic/datalist.json")
    parser.add_argument("--no-voxel", action="store_true", help="skip fitting the voxel baseline")
    args = parser.parse_args()
    path = Path(args.datalist)
    root = path.parent
    splits = load_datalist(path)
    everyone = [i for split in splits.values() for i in split]
    if not everyone or "cbf_true" not in everyone[0]:
        raise SystemExit(f"{path}: not a synthetic cohort (no true maps).")
    fate_cohort = any("rcbf_true" in item for item in everyone)  # WIS patients have no fate maps
    rows: dict[str, list[dict]] = defaultdict(list)
    by_id: dict[str, dict[str, dict]] = defaultdict(dict)
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, dtype=np.int64))
    samples: dict[str, list[np.ndarray]] = defaultdict(list)
    lesion_labels: list[np.ndarray] = []
    for item in everyone:
        maps, brain, _ = load_patient(item)
        label, _ = load_map(item["label"])
        label = label.astype(np.uint8)
        spacing = nib.load(item["label"]).header.get_zooms()[:3]
        true_brain = truth(root, item, "cbf_true") > 0
        for group in (item["group"], "all"):
            counts[group] += np.bincount(label[true_brain].astype(np.int64), minlength=3)[:3]
        predictions = {"threshold (estimated maps)": threshold_labels(maps["cbf"], maps["tmax"], brain)}
        if "rcbf_true" in item:
            ischaemia = item.get("fate", {}).get("ischaemia_h", 0.0)
            predictions["oracle (true maps + latent)"] = oracle_labels(
                truth(root, item, "rcbf_true"),
                truth(root, item, "rcbf_ischaemic_true"),
                ischaemia,
                float(np.prod(spacing)) / 1000.0,
            )
        elif fate_cohort:  # WIS: no occlusion, no lesion
            predictions["oracle (true maps + latent)"] = np.zeros_like(label)
        for method, pred in predictions.items():
            row = {"id": item["id"], "group": item["group"], **lesion_metrics(pred, label, spacing)}
            rows[method].append(row)
            by_id[method][item["id"]] = row
        if item["group"] != "WIS":
            lesion_labels.append(label[true_brain])
            for name in TRUE_MAPS:
                samples[name].append(truth(root, item, f"{name}_true")[true_brain])
    print(f"cohort: {path} ({len(everyone)} patients; lesion model {'fate' if fate_cohort else 'separable'})")
    table("All patients: the threshold baseline and the oracle", rows)

    best = best_single_map_dice(samples, lesion_labels)
    print("\n### Best one-sided threshold of a single TRUE map (pooled over LVO and Non-LVO voxels), Dice\n")
    print("| class | " + " | ".join(TRUE_MAPS) + " |")
    print("|---|" + "---|" * len(TRUE_MAPS))
    for cls in ("core", "penumbra"):
        print(f"| {cls} | " + " | ".join(f"{best[(m, cls)]:.2f}" for m in TRUE_MAPS) + " |")

    test_ids = [i["id"] for i in splits["test"]]
    test_rows = {method: [by_id[method][pid] for pid in test_ids] for method in rows}
    if not args.no_voxel and splits["training"] and splits["test"]:
        model = VoxelOutcomeModel(seed=0).fit(splits["training"])
        for item in splits["test"]:
            maps, brain, _ = load_patient(item)
            label, _ = load_map(item["label"])
            spacing = nib.load(item["label"]).header.get_zooms()[:3]
            pred = model.predict(maps, brain, item["nihss"])
            test_rows.setdefault("voxel baseline (fitted on training)", []).append(
                {"id": item["id"], "group": item["group"], **lesion_metrics(pred, label.astype(np.uint8), spacing)}
            )
    table("Test split: threshold, voxel baseline, oracle", test_rows)

    print("\n### Class fractions (% of brain voxels)\n")
    print("| group | healthy | penumbra | core |")
    print("|---|---|---|---|")
    for group in (*GROUPS, "all"):
        if counts[group].sum():
            frac = 100.0 * counts[group] / counts[group].sum()
            print(f"| {group} | {frac[0]:.1f} | {frac[1]:.1f} | {frac[2]:.2f} |")
    print("paper (152 patients): all 93.1 / 6.2 / 0.7 %; Non-LVO 97.6 / 2.2 / 0.2 %")


if __name__ == "__main__":
    main()
