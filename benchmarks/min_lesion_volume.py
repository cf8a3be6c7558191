"""Dice per group against the smallest lesion and core islands kept: how ``min_lesion_ml`` and ``min_core_ml`` were
chosen, on a development cohort.

Each ``--checkpoints`` model labels ``--split`` of ``--datalist`` with the bundle's inference, islands kept
(``--min_lesion_ml 0``); the RAPID-like threshold rule (``scripts.perfusion.thresholds``) labels the same patients.
Then, for each volume of ``--sizes``, the lesion islands (penumbra and core together, face-connected in 3D) under it
are dropped (``scripts.perfusion.lesions.drop_small_lesions``, the transform inference and evaluation run) and mean
per-patient Dice is printed per class and group (LesionMetrics' convention: a patient with no lesion of a class
scores 1 when none is predicted, 0 otherwise). Last, per volume, the mean over the checkpoints of the four Dice
figures' mean. Then the same with lesion islands under ``min_lesion_ml`` dropped and, for each volume of
``--core_sizes``, core islands (core voxels, face-connected in 3D) under it labelled penumbra
(``scripts.perfusion.lesions.small_cores_to_penumbra``), with mean LVO core |dV| beside the Dice figures.
Run it on a cohort other than the test cohort the model card reports (the bundle's 2 ml and 3 ml were chosen
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
from scripts.perfusion.lesions import MIN_LESION_ML, drop_small_lesions  # noqa: E402
from scripts.perfusion.thresholds import threshold_labels  # noqa: E402

CELLS = (("penumbra", "LVO"), ("core", "LVO"), ("penumbra", "Non-LVO"), ("core", "Non-LVO"))


def dice(pred: np.ndarray, label: np.ndarray, cls: str) -> float:
    """Dice of class ``cls`` as LesionMetrics computes it (MONAI's, 1 when both are empty)."""
    p, t = (torch.from_numpy(np.isin(x, CLASSES[cls]))[None, None] for x in (pred, label))
    return float(compute_dice(p, t, ignore_empty=False))


def scores(
    items: list[dict], labels: dict[str, np.ndarray], sizes: list[float], core: bool = False
) -> dict[float, list[float]]:
    """Per volume of ``sizes``: mean Dice of each of :data:`CELLS` over ``items`` after dropping smaller lesion islands
    (no core island changed); with ``core``, after dropping those under ``MIN_LESION_ML`` and labelling core islands
    under the volume penumbra, then also mean LVO core |dV| (ml)."""
    truths = {item["id"]: load_map(item["label"]) for item in items}
    table = {}
    for size in sizes:
        values: dict[tuple[str, str], list[float]] = {cell: [] for cell in CELLS}
        volume_errors = []
        for item in items:
            truth, affine = truths[item["id"]]
            spacing = voxel_sizes(affine)
            minima = (MIN_LESION_ML, size) if core else (size, 0.0)
            pred = drop_small_lesions(labels[item["id"]].astype(np.uint8), spacing, *minima)
            for cls in ("penumbra", "core"):
                values[(cls, item["group"])].append(dice(pred, truth, cls))
            if core and item["group"] == "LVO":
                volume_errors.append(abs(float((pred == 2).sum()) - float((truth == 2).sum())) * np.prod(spacing) / 1e3)
        table[size] = [float(np.mean(values[cell])) for cell in CELLS] + (
            [float(np.mean(volume_errors))] if core else []
        )
    return table


def print_table(name: str, table: dict[float, list[float]], core: bool = False) -> None:
    first = "core islands labelled penumbra under ml" if core else "islands dropped under ml"
    extra = " \\|dV\\| core LVO ml |" if core else ""
    print(f"\n{name}\n\n| {first} | " + " | ".join(f"Dice {c} {g}" for c, g in CELLS) + f" |{extra}")
    print("|---|---|---|---|---|" + ("---|" if core else ""))
    for size, values in table.items():
        print(f"| {size:g} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


def summary(tables: dict[str, dict[float, list[float]]], sizes: list[float], what: str) -> None:
    """Per volume, the mean over the checkpoints of the four Dice figures' mean, and the highest."""
    means = {s: float(np.mean([np.mean(t[s][: len(CELLS)]) for t in tables.values()])) for s in sizes}
    print(f"\nMean over the checkpoints of the four Dice figures' mean, per {what} volume:")
    print(", ".join(f"{s:g} ml {m:.4f}" for s, m in means.items()))
    best = max(means, key=means.get)
    print(f"highest: {best:g} ml ({means[best]:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--inputs", default="PMs+N")
    parser.add_argument("--sizes", type=float, nargs="+", default=[0, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10])
    parser.add_argument("--core_sizes", type=float, nargs="+", default=[0, 0.5, 1, 2, 3, 5, 7.5, 10])
    args = parser.parse_args()
    items = [i for i in load_datalist(args.datalist, splits=(args.split,))[args.split] if i["group"] != "WIS"]
    print(f"cohort {args.datalist}, split {args.split}: {len(items)} LVO and Non-LVO patients")
    labels = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, checkpoint in enumerate(args.checkpoints):
            out = Path(tmp) / str(k)
            run_inference(
                args.datalist, args.split, checkpoint, args.inputs, out, "--min_lesion_ml", "0", "--min_core_ml", "0"
            )
            labels[checkpoint] = {i["id"]: load_map(out / i["id"] / "label.nii.gz")[0] for i in items}
    rule = {}
    for item in items:
        maps, brain, _ = load_patient(item)
        rule[item["id"]] = threshold_labels(maps["cbf"], maps["tmax"], brain)
    for core, sizes, what in ((False, args.sizes, "lesion"), (True, args.core_sizes, "core")):
        networks = {c: scores(items, labels[c], sizes, core) for c in args.checkpoints}
        for checkpoint, table in networks.items():
            print_table(f"network {checkpoint}", table, core)
        print_table("threshold rule", scores(items, rule, sizes, core), core)
        print_table(
            "networks, mean over the checkpoints",
            {s: list(np.mean([t[s] for t in networks.values()], 0)) for s in sizes},
            core,
        )
        summary(networks, sizes, what)


if __name__ == "__main__":
    main()
