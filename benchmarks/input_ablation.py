"""Input ablation at test time: does the trained network read each map?

For every test patient, each input map in turn (cbf, cbv, ttp, tmax) is replaced inside the brain by its
normal-tissue value (its median where Tmax < 4 s), the rest left as they are, and the bundle's inference
runs on the ablated studies. Printed per ablation: mean predicted core and penumbra volume (ml), mean Dice
against the labels, and mean Dice against the unablated prediction (1.0 = the map is ignored). A model that
reads CBF loses its core when CBF is flattened; one that ignores it does not (issue #26 asks that flattening CBF
at least halves the mean predicted LVO core volume: the ``LVO core ml`` column).
Run: python benchmarks/input_ablation.py --checkpoint runs/default/model/best_*.pt [--datalist ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from inference_agreement import model_arguments  # noqa: E402
from inference_agreement import run as run_inference  # noqa: E402

from scripts.io import load_datalist, load_map, save_json, save_nifti  # noqa: E402
from scripts.learning.engine.metrics import lesion_metrics  # noqa: E402
from scripts.learning.experiments.voxel_baseline import load_patient  # noqa: E402

ABLATIONS = ("none", "cbf", "cbv", "ttp", "tmax")


def ablated_datalist(items: list[dict], name: str, folder: Path) -> Path:
    """A datalist of ``items`` whose ``name`` map is its normal-tissue median inside the brain."""
    out = []
    for item in items:
        item = dict(item)
        if name != "none":
            maps, brain, affine = load_patient(item)
            normal = brain & (maps["tmax"] < 4.0)
            flat = np.where(brain, np.median(maps[name][normal if normal.any() else brain]), maps[name])
            item[name] = str(save_nifti(folder / item["id"] / f"{name}.nii.gz", flat.astype(np.float32), affine))
        out.append(item)
    return save_json(folder / "datalist.json", {"test": out})


def main() -> None:
    parser = model_arguments(__doc__.splitlines()[0])
    args = parser.parse_args()
    items = load_datalist(Path(args.datalist).resolve(), splits=(args.split,))[args.split]  # absolute map paths
    labels = {i["id"]: load_map(i["label"])[0].astype(np.uint8) for i in items}
    spacing = tuple(float(z) for z in __import__("nibabel").load(items[0]["label"]).header.get_zooms()[:3])
    predictions: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ABLATIONS:
            folder = Path(tmp) / name
            datalist = ablated_datalist(items, name, folder)
            run_inference(str(datalist), "test", args.checkpoint, args.inputs, folder / "out")
            predictions[name] = {
                i["id"]: load_map(folder / "out" / i["id"] / "label.nii.gz")[0].astype(np.uint8) for i in items
            }
    voxel_ml = float(np.prod(spacing)) / 1000.0
    print(
        f"checkpoint: {args.checkpoint}; {len(items)} {args.split} patients; map replaced by its normal-tissue median"
    )
    print(
        "\n| ablated map | core ml | LVO core ml | penumbra ml | Dice core vs label | Dice penumbra vs label | "
        "Dice core vs unablated | Dice penumbra vs unablated |"
    )
    print("|---|---|---|---|---|---|---|---|")
    lvo = {i["id"] for i in items if i["group"] == "LVO"}
    for name in ABLATIONS:
        rows, same = [], []
        for pid, pred in predictions[name].items():
            rows.append(lesion_metrics(pred, labels[pid], spacing))
            same.append(lesion_metrics(pred, predictions["none"][pid], spacing))
        core = np.mean([(p == 2).sum() * voxel_ml for p in predictions[name].values()])
        pen = np.mean([(p == 1).sum() * voxel_ml for p in predictions[name].values()])
        lvo_core = np.mean([(p == 2).sum() * voxel_ml for pid, p in predictions[name].items() if pid in lvo])
        print(
            f"| {name} | {core:.1f} | {lvo_core:.1f} | {pen:.1f} | {np.mean([r['dice_core'] for r in rows]):.2f} | "
            f"{np.mean([r['dice_penumbra'] for r in rows]):.2f} | {np.mean([s['dice_core'] for s in same]):.2f} | "
            f"{np.mean([s['dice_penumbra'] for s in same]):.2f} |"
        )
    print(
        json.dumps(
            {
                "note": "labels' mean volumes (ml)",
                "core": float(np.mean([(v == 2).sum() * voxel_ml for v in labels.values()])),
                "penumbra": float(np.mean([(v == 1).sum() * voxel_ml for v in labels.values()])),
            }
        )
    )


if __name__ == "__main__":
    main()
