"""Dice per group against the smallest lesion island kept: how ``min_lesion_ml`` was chosen, on a development cohort.

Each ``--checkpoints`` model labels ``--split`` of ``--datalist`` with the bundle's inference, islands kept
(``--min_lesion_ml 0``); the RAPID-like threshold rule (``scripts.perfusion.thresholds``) labels the same patients.
Then, for each volume of ``--sizes``, the lesion islands (penumbra and core together, face-connected in 3D) under it
are dropped (``scripts.perfusion.lesions.drop_small_lesions``, the transform inference and evaluation run) and mean
per-patient Dice is printed per class and group (LesionMetrics' convention: a patient with no lesion of a class
scores 1 when none is predicted, 0 otherwise). Last, per volume, the mean over the checkpoints of the four Dice
figures' mean. Run it on a cohort other than the test cohort the model card reports (the bundle's 2 ml was chosen
on a development cohort: ``generating --seed 5 --n_patients 12 --n_test 60``, the default models of seeds 0-2).
Run: python benchmarks/min_lesion_volume.py --checkpoints A.pt B.pt --datalist data/dev/datalist.json [--split test]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice
from nibabel.affines import voxel_sizes

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT / "benchmarks")]

from inference_agreement import run as run_inference  # noqa: E402

from scripts.io import load_datalist, load_map  # noqa: E402
from scripts.learning.engine.metrics import CLASSES  # noqa: E402
from scripts.learning.experiments.voxel_baseline import load_patient  # noqa: E402
from scripts.perfusion.lesions import drop_small_lesions  # noqa: E402
from scripts.perfusion.thresholds import threshold_labels  # noqa: E402

CELLS = (("penumbra", "LVO"), ("core", "LVO"), ("penumbra", "Non-LVO"), ("core", "Non-LVO"))


def dice(pred: np.ndarray, label: np.ndarray, cls: str) -> float:
    """Dice of class ``cls`` as LesionMetrics computes it (MONAI's, 1 when both are empty)."""
    p, t = (torch.from_numpy(np.isin(x, CLASSES[cls]))[None, None] for x in (pred, label))
    return float(compute_dice(p, t, ignore_empty=False))


def scores(items: list[dict], labels: dict[str, np.ndarray], sizes: list[float]) -> dict[float, list[float]]:
    """Per volume of ``sizes``: mean Dice of each of :data:`CELLS` over ``items`` after dropping smaller islands."""
    truths = {item["id"]: load_map(item["label"]) for item in items}
    table = {}
    for size in sizes:
        values: dict[tuple[str, str], list[float]] = {cell: [] for cell in CELLS}
        for item in items:
            truth, affine = truths[item["id"]]
            pred = drop_small_lesions(labels[item["id"]].astype(np.uint8), voxel_sizes(affine), size)
            for cls in ("penumbra", "core"):
                values[(cls, item["group"])].append(dice(pred, truth, cls))
        table[size] = [float(np.mean(values[cell])) for cell in CELLS]
    return table


def print_table(name: str, table: dict[float, list[float]]) -> None:
    print(f"\n{name}\n\n| islands dropped under ml | " + " | ".join(f"Dice {c} {g}" for c, g in CELLS) + " |")
    print("|---|---|---|---|---|")
    for size, values in table.items():
        print(f"| {size:g} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--inputs", default="PMs+N")
    parser.add_argument("--sizes", type=float, nargs="+", default=[0, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10])
    args = parser.parse_args()
    items = [i for i in load_datalist(args.datalist, splits=(args.split,))[args.split] if i["group"] != "WIS"]
    print(f"cohort {args.datalist}, split {args.split}: {len(items)} LVO and Non-LVO patients")
    networks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, checkpoint in enumerate(args.checkpoints):
            out = Path(tmp) / str(k)
            run_inference(args.datalist, args.split, checkpoint, args.inputs, out, "--min_lesion_ml", "0")
            labels = {i["id"]: load_map(out / i["id"] / "label.nii.gz")[0] for i in items}
            networks[checkpoint] = scores(items, labels, args.sizes)
            print_table(f"network {checkpoint}", networks[checkpoint])
    rule = {}
    for item in items:
        maps, brain, _ = load_patient(item)
        rule[item["id"]] = threshold_labels(maps["cbf"], maps["tmax"], brain)
    print_table("threshold rule", scores(items, rule, args.sizes))
    print_table(
        "networks, mean over the checkpoints",
        {s: list(np.mean([t[s] for t in networks.values()], 0)) for s in args.sizes},
    )
    means = {s: float(np.mean([np.mean(t[s]) for t in networks.values()])) for s in args.sizes}
    print("\nMean over the checkpoints of the four Dice figures' mean, per volume:")
    print(", ".join(f"{s:g} ml {m:.4f}" for s, m in means.items()))
    best = max(means, key=means.get)
    print(f"highest: {best:g} ml ({means[best]:.4f})")


if __name__ == "__main__":
    main()
