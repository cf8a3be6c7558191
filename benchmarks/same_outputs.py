"""Does a change keep the bundle's outputs? A small cohort, a short training and inference, before and after.

For refactors that must not change a number (issue #29): the same commands run in a checkout of ``--before``
(a git revision, checked out in a temporary worktree) and in this tree, each in its own folder, and their
outputs are compared: every cohort file (NIfTI voxel by voxel, the datalist with its folder names taken out),
the best checkpoint's weights, and the inference's labels and probabilities on the test split.
Prints one line per comparison and exits 1 when anything differs.
A new setting that must reproduce the former outputs when off: ``--training_args`` adds training overrides for
this tree only (e.g. ``--training_args "--map_dropout_prob 0"``).
Run: python benchmarks/same_outputs.py --before c168425 [--keep DIR] [--training_args "..."]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
COHORT = ["--n_patients", "10", "--n_test", "4", "--size", "64", "--slices", "4", "--seed", "3"]
TRAINING = ["--max_epochs", "2", "--min_epochs", "1", "--patience", "5"]


def bundle(tree: Path, out: Path, run_id: str, configs: str, *args: str) -> None:
    """``python -m monai.bundle run <run_id>`` with ``tree``'s configs, in ``out`` (its log in ``out``)."""
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", configs, *args]
    with open(out / f"{run_id}.log", "w") as log:
        subprocess.run(command, cwd=tree, check=True, stdout=log, stderr=subprocess.STDOUT)


def outputs(tree: Path, out: Path, training_args: tuple[str, ...] = ()) -> None:
    """The cohort, the training (``training_args`` added) and the inference of ``tree`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data, run = out / "data", out / "run"
    bundle(tree, out, "generating", "bundle/configs/synthetic.json", "--output_dir", str(data), *COHORT)
    datalist = str(data / "datalist.json")
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    bundle(
        tree, out, "training", "bundle/configs/train.json", "--datalist", datalist, "--output_dir", str(run),
        "--tracking_uri", tracking, *TRAINING, *training_args,
    )  # fmt: skip
    checkpoint = str(next((run / "model").glob("best_*.pt")))
    bundle(
        tree, out, "inference", "bundle/configs/inference.json", "--input", datalist, "--split", "test",
        "--checkpoint", checkpoint, "--output_dir", str(out / "inference"), "--save_probabilities", "true",
    )  # fmt: skip


def same_volumes(a: Path, b: Path, pattern: str) -> tuple[int, list[str]]:
    """How many ``pattern`` NIfTI files under ``a`` and which differ from ``b``'s (or are missing there)."""
    files = sorted(p.relative_to(a) for p in a.rglob(pattern))
    differ = [
        str(f)
        for f in files
        if not (b / f).is_file()
        or not np.array_equal(np.asarray(nib.load(a / f).dataobj), np.asarray(nib.load(b / f).dataobj))
    ]
    return len(files), differ


def compare(before: Path, after: Path) -> bool:
    """Print what differs between the two output folders; whether nothing does."""
    ok = True
    n, differ = same_volumes(before / "data", after / "data", "*.nii.gz")
    cohort = [json.loads((d / "data" / "datalist.json").read_text().replace(str(d), "")) for d in (before, after)]
    print(f"cohort: {n} volumes, {len(differ)} differ; datalist {'equal' if cohort[0] == cohort[1] else 'differs'}")
    ok &= not differ and cohort[0] == cohort[1]
    weights = [torch.load(next((d / "run" / "model").glob("best_*.pt")), weights_only=True) for d in (before, after)]
    weights = [w.get("network", w) for w in weights]
    gap = max(float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0])
    same_keys = weights[0].keys() == weights[1].keys()
    print(f"best checkpoint: {len(weights[0])} tensors, same names {same_keys}, largest difference {gap:g}")
    ok &= same_keys and gap == 0.0
    n, differ = same_volumes(before / "inference", after / "inference", "*.nii.gz")
    print(f"inference: {n} label and probability volumes, {len(differ)} differ")
    return ok and not differ and n > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare this tree with")
    parser.add_argument("--keep", help="keep both output folders here (default: a temporary folder)")
    parser.add_argument("--training_args", default="", help="training overrides for this tree only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        worktree = work / "before-tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True)
        try:
            outputs(worktree, work / "before")
            outputs(ROOT, work / "after", tuple(shlex.split(args.training_args)))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=True)
        print(f"{args.before} against this tree:")
        sys.exit(0 if compare(work / "before", work / "after") else 1)


if __name__ == "__main__":
    main()
