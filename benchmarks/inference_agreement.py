"""Benchmark: two inference settings of a trained model, their agreement and speed.

Runs ``python -m monai.bundle run inference`` twice on a datalist split, with the ``--reference`` options
(default: whole slices in fp32, the path before brain cropping) and the ``--candidate`` options (default: the
bundle's defaults), then prints: wall time of each run, per-class Dice between the two label sets
(agreement, 1 = identical), the largest per-patient volume difference (ml), and each run's Dice against the
ground truth per group (the same scoring as the evaluation). bf16 against fp32:
``--candidate "--precision bf16 --channels_last true"``.

Run: python benchmarks/inference_agreement.py --checkpoint runs/default/model/best_*.pt \
         [--datalist data/synthetic/datalist.json --split test --inputs PMs+N --reference ... --candidate ...]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))

from scripts.io import load_datalist  # noqa: E402
from scripts.learning.engine.metrics import lesion_metrics  # noqa: E402
from scripts.learning.engine.reports import evaluate_predictions  # noqa: E402

CLASSES = ("penumbra", "core", "hypoperfused")


def run(datalist: str, split: str, checkpoint: str, inputs: str, out: Path, *extra: str) -> float:
    """Seconds of ``python -m monai.bundle run inference`` on ``split`` of ``datalist`` into ``out`` (no montages)."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "inference",
            "--config_file",
            "bundle/configs/inference.json",
            "--input",
            datalist,
            "--split",
            split,
            "--checkpoint",
            checkpoint,
            "--inputs",
            inputs,
            "--output_dir",
            str(out),
            "--montage",
            "false",
            *extra,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def model_arguments(description: str) -> argparse.ArgumentParser:
    """A benchmark's command line: the model (``--checkpoint``, ``--inputs``) and the patients it labels."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--datalist", default="data/synthetic/datalist.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--inputs", default="PMs+N")
    return parser


def main() -> None:
    parser = model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--reference", default="--brain_crop false --precision fp32", help="inference options")
    parser.add_argument("--candidate", default="", help="inference options (default: the bundle's defaults)")
    args = parser.parse_args()
    names = {"reference": args.reference or "defaults", "candidate": args.candidate or "defaults"}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {k: Path(tmp) / k for k in names}
        seconds = {
            k: run(args.datalist, args.split, args.checkpoint, args.inputs, folders[k], *shlex.split(getattr(args, k)))
            for k in names
        }
        items = load_datalist(args.datalist, splits=(args.split,))[args.split]
        agreement = {c: [] for c in CLASSES}
        largest_dv = {c: 0.0 for c in CLASSES}
        for item in items:
            a, b = (nib.load(folders[k] / item["id"] / "label.nii.gz") for k in names)
            scores = lesion_metrics(np.asarray(b.dataobj), np.asarray(a.dataobj), a.header.get_zooms())
            for c in CLASSES:
                if not np.isnan(scores[f"dice_{c}"]):
                    agreement[c].append(scores[f"dice_{c}"])
                largest_dv[c] = max(largest_dv[c], abs(scores[f"dv_ml_{c}"]))
        print(
            f"{len(items)} patients ({args.split}); wall time of the whole command: "
            + ", ".join(f"{names[k]}: {v:.1f} s" for k, v in seconds.items())
            + f" (ratio {seconds['reference'] / seconds['candidate']:.2f})"
        )
        print("| class | Dice(candidate, reference) mean | min | largest |ΔV| (ml) |")
        print("|---|---|---|---|")
        for c in CLASSES:
            values = agreement[c] or [float("nan")]
            print(f"| {c} | {np.mean(values):.4f} | {np.min(values):.4f} | {largest_dv[c]:.2f} |")
        for k, folder in folders.items():
            _, summary = evaluate_predictions(args.datalist, folder, split=args.split, pattern="{id}/label.nii.gz")
            dice = {(s["class"], s["group"]): s["mean"] for s in summary if s["metric"] == "dice"}
            print(
                f"{names[k]}: Dice vs truth penumbra/core LVO {dice[('penumbra', 'LVO')]:.3f}/"
                f"{dice[('core', 'LVO')]:.3f}, Non-LVO {dice[('penumbra', 'Non-LVO')]:.3f}/"
                f"{dice[('core', 'Non-LVO')]:.3f}"
            )


if __name__ == "__main__":
    main()
