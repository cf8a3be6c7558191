"""The paper's question on the cohort, over several seeds: SF_G against the threshold and voxel baselines.

For every input set (default PMs+N and PMs) and seed (default 0, 1, 2): the CPU default training
(``train.json`` unchanged but for ``--seed`` / ``--inputs``) and its evaluation on the test split, each an
MLflow run in experiment ``seeds``; finished runs are reused, interrupted ones resumed. The threshold
baseline (RAPID-like, on the estimated maps) and the voxel baseline (fitted on the training split with the
same seeds) are scored on the same test patients. Prints, per method, class and group, mean ± SD over
seeds of the per-seed mean Dice, HD95 (mm) and |dV| (ml), and every seed's own figures, plus a check that
no run collapsed (whole-brain penumbra or an empty prediction on LVO test patients).
Run: python benchmarks/seed_robustness.py [--datalist data/synthetic/datalist.json] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))

from scripts.io import GROUPS, load_datalist, load_map  # noqa: E402
from scripts.learning.metrics import patient_row  # noqa: E402
from scripts.learning.tracking import run_finished  # noqa: E402
from scripts.learning.voxel_baseline import VoxelOutcomeModel, load_patient  # noqa: E402
from scripts.perfusion.thresholds import threshold_labels  # noqa: E402

CLASSES = ("penumbra", "core")
METRICS = (("dice", "Dice"), ("hd95", "HD95 mm"), ("adv_ml", "|dV| ml"))


def bundle(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], check=True, cwd=ROOT)


def network_rows(datalist: str, inputs: str, seed: int, root: Path, uri: str) -> list[dict]:
    """Train (or resume) and evaluate one seed; its per-patient test rows."""
    out = root / f"SF_G-{inputs.replace('+', '-')}-seed{seed}"
    report = out / "test" / "metrics_per_patient.csv"
    if not report.is_file():
        args = [
            "--datalist",
            datalist,
            "--output_dir",
            str(out),
            "--seed",
            str(seed),
            "--inputs",
            inputs,
            "--tracking_uri",
            uri,
            "--experiment_name",
            "seeds",
        ]
        # a finished run keeps its resume point: ask MLflow whether it finished, not the folder
        if not run_finished(uri, "seeds", out.name):
            bundle(
                "training",
                "--config_file",
                "bundle/configs/train.json",
                *args,
                "--resume",
                "true" if (out / "checkpoints").is_dir() else "false",
            )
        bundle(
            "evaluating",
            "--config_file",
            "['bundle/configs/train.json','bundle/configs/evaluate.json']",
            *args,
            "--split",
            "test",
        )
    with open(report) as handle:
        return list(csv.DictReader(handle))  # values as written ("nan" where undefined); read with float()


def baseline_rows(splits: dict, seed: int | None) -> list[dict]:
    """Threshold (``seed`` None) or voxel-baseline per-patient test rows."""
    model = None if seed is None else VoxelOutcomeModel(seed=seed).fit(splits["training"])
    rows = []
    for item in splits["test"]:
        maps, brain, _ = load_patient(item)
        label, _ = load_map(item["label"])
        spacing = nib.load(item["label"]).header.get_zooms()[:3]
        pred = (
            threshold_labels(maps["cbf"], maps["tmax"], brain)
            if model is None
            else model.predict(maps, brain, item["nihss"])
        )
        rows.append(patient_row(item["id"], item["group"], pred, label.astype(np.uint8), spacing))
    return rows


def group_means(rows: list[dict]) -> dict[tuple[str, str, str], float]:
    """Mean over patients per (metric, class, group), NaN (undefined Hausdorff) left out."""
    out = {}
    for group in (*GROUPS, "all"):
        sel = [r for r in rows if group in (r["group"], "all")]
        for metric, _ in METRICS:
            for cls in CLASSES:
                values = np.array([float(r[f"{metric}_{cls}"]) for r in sel], dtype=float)
                out[(metric, cls, group)] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out


def collapsed(rows: list[dict], over_ml: float = 200.0) -> list[str]:
    """LVO test patients with no predicted lesion, or whose hypoperfused volume is over-called by more than
    ``over_ml`` (a quarter of the 40 mm slab's brain: what labelling the whole brain penumbra does)."""
    bad = []
    for r in rows:
        if r["group"] != "LVO":
            continue
        if str(r.get("has_pred_hypoperfused")) == "False":
            bad.append(f"{r['id']}: empty")
        elif float(r["dv_ml_hypoperfused"]) > over_ml:
            bad.append(f"{r['id']}: over-called by {float(r['dv_ml_hypoperfused']):.0f} ml")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default="data/synthetic/datalist.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--inputs", nargs="+", default=["PMs+N", "PMs"])
    parser.add_argument("--output_root", default="runs/seeds")
    parser.add_argument(
        "--tracking_uri", default=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlruns/mlflow.db'}"
    )
    args = parser.parse_args()
    datalist = str(Path(args.datalist).resolve())
    splits = load_datalist(datalist)
    per_seed: dict[str, list[dict]] = defaultdict(list)
    notes = []
    for inputs in args.inputs:
        for seed in args.seeds:
            rows = network_rows(datalist, inputs, seed, Path(args.output_root).resolve(), args.tracking_uri)
            per_seed[f"SF_G({inputs.replace('PMs+N', 'PMs,N')})"].append(group_means(rows))
            notes.append(f"SF_G({inputs}) seed {seed}: " + (", ".join(collapsed(rows)) or "no collapse on LVO"))
    threshold = group_means(baseline_rows(splits, None))
    per_seed["threshold"] = [threshold] * len(args.seeds)  # deterministic: SD 0
    for seed in args.seeds:
        per_seed["voxel baseline"].append(group_means(baseline_rows(splits, seed)))
    print(f"cohort: {args.datalist}; test split: {len(splits['test'])} patients; seeds {args.seeds}")
    print("\n| method | class | group | " + " | ".join(name for _, name in METRICS) + " | per seed Dice |")
    print("|---|---|---|" + "---|" * (len(METRICS) + 1))
    for method, seeds in per_seed.items():
        for cls in CLASSES:
            for group in (*GROUPS, "all"):
                cells = []
                for metric, _ in METRICS:
                    values = np.array([s[(metric, cls, group)] for s in seeds])
                    cells.append(
                        f"{np.nanmean(values):.2f} ± {np.nanstd(values, ddof=1) if len(values) > 1 else 0:.2f}"
                    )
                dice = " / ".join(f"{s[('dice', cls, group)]:.2f}" for s in seeds)
                print(f"| {method} | {cls} | {group} | " + " | ".join(cells) + f" | {dice} |")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
