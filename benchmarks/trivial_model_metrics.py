"""Per-group metrics table for a trivial model: every patient's label shifted by a few voxels.

Writes the shifted labels as predictions, scores them with the bundle's evaluation (the same code as
``python -m monai.bundle run scoring --config_file bundle/configs/score.json``) over all splits of the
cohort, and prints the paper-style Markdown table plus the empty-mask counts.
Run: python benchmarks/trivial_model_metrics.py [data/synthetic/datalist.json --shift 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.io import SPLITS, load_datalist, save_nifti  # noqa: E402
from scripts.learning.engine.metrics import summarise  # noqa: E402
from scripts.learning.engine.reports import evaluate_predictions, markdown_table  # noqa: E402


def shifted(label: np.ndarray, shift: int) -> np.ndarray:
    """The label moved ``shift`` voxels along x and y, zero-filled at the edge."""
    out = np.zeros_like(label)
    out[shift:, shift:] = label[: label.shape[0] - shift, : label.shape[1] - shift]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist", nargs="?", default="data/synthetic/datalist.json")
    parser.add_argument("--shift", type=int, default=2)
    args = parser.parse_args()
    datalist = load_datalist(args.datalist)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for split in SPLITS:
            for item in datalist[split]:
                img = nib.load(item["label"])
                save_nifti(Path(tmp) / f"{item['id']}.nii.gz", shifted(np.asarray(img.dataobj), args.shift), img.affine)
            if datalist[split]:
                rows += evaluate_predictions(args.datalist, tmp, split)[0]
    summary = summarise(rows)
    print(f"cohort {args.datalist}: {len(rows)} patients; prediction = label shifted by {args.shift} voxels in x and y")
    print(markdown_table(summary, title=f"label shifted {args.shift} px"))
    for s in summary:
        if s["metric"] in ("dice", "hd95") and s["group"] != "all" and (s["n_undefined"] or s.get("n_both_empty")):
            print(
                f"- {s['group']} {s['class']} {s['metric']}: {s['n']} defined, {s['n_undefined']} undefined"
                + (f", {s['n_both_empty']} both empty (Dice 1)" if "n_both_empty" in s else "")
            )


if __name__ == "__main__":
    main()
