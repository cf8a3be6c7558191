"""What map shifts hurt the model: the test patients' maps recomputed another way, Dice per group.

A scanner's software computes its maps its own way. This benchmark re-simulates every test patient of a cohort
from its generator task (the same patient, the same CT series: :func:`scripts.simulation.cohort.simulate_task`)
and recomputes the maps with one thing changed at a time:

* ``as generated``: oSVD, TIPS denoising at 1.5 mm, 1 s frames (must equal the cohort's maps; checked);
* ``bSVD``: block-circulant SVD with one truncation (0.10 of the largest singular value) instead of oSVD;
* ``Gaussian``: the in-plane Gaussian (1.5 mm) instead of the edge-preserving TIPS filter;
* ``no denoising``: the curves deconvolved as acquired;
* ``2 s frames``: every other frame of the same acquisition (a common low-dose protocol);
* ``twice the noise``: the same patient simulated with twice its CT noise.

The trained network (``--checkpoint``, run by the bundle's inference config) and the bundle's threshold rule
label each set; printed per shift and method: mean Dice per class and group and LVO core |dV| with 95 %
bootstrap intervals over patients (:func:`scripts.learning.engine.metrics.bootstrap_ci`). The labels are the cohort's
(a shift changes the maps, never the tissue's fate).
Run: python benchmarks/map_shift.py --checkpoint runs/default/model/best_*.pt [--datalist ...] [--patients N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT / "benchmarks")]

from inference_agreement import run as run_inference  # noqa: E402
from seed_robustness import baseline_rows, print_table, scored  # noqa: E402

from scripts.io import load_datalist, load_map, save_json, save_nifti  # noqa: E402
from scripts.perfusion.deconvolution import compute_perfusion_maps  # noqa: E402
from scripts.simulation.cohort import cohort_tasks, simulate_task  # noqa: E402

SHIFTS = ("as generated", "bSVD", "Gaussian", "no denoising", "2 s frames", "twice the noise")


def shifted_maps(task: dict) -> dict[str, dict[str, np.ndarray]]:
    """The patient's maps under every shift of :data:`SHIFTS`."""
    study, grid, _, _ = simulate_task(task)
    spacing, dt = grid.spacing[:2], study.frame_interval
    maps = {
        "as generated": compute_perfusion_maps(study.ctp, dt, spacing),
        "bSVD": compute_perfusion_maps(study.ctp, dt, spacing, method="bsvd"),
        "Gaussian": compute_perfusion_maps(study.ctp, dt, spacing, denoising="gaussian"),
        "no denoising": compute_perfusion_maps(study.ctp, dt, spacing, smoothing_mm=0.0),
        "2 s frames": compute_perfusion_maps(study.ctp[..., ::2], 2 * dt, spacing),
    }
    noisy, _, _, _ = simulate_task(task, noise_scale=2.0)
    maps["twice the noise"] = compute_perfusion_maps(noisy.ctp, dt, spacing)
    return {shift: m.as_dict() for shift, m in maps.items()}


def write_patient(job: tuple[dict, dict, str]) -> dict[str, dict]:
    """Write one patient's shifted maps under ``folder/<shift>/<id>/``; its datalist item per shift."""
    item, task, folder = job
    affine = nib.load(item["label"]).affine
    reference = load_map(item["cbf"])[0]
    items = {}
    for shift, maps in shifted_maps(task).items():
        if shift == "as generated" and not np.allclose(maps["cbf"], reference, atol=1e-4):
            raise RuntimeError(f"{item['id']}: re-simulated maps differ from the cohort's; is this its datalist?")
        shifted = dict(item)
        for name in ("cbf", "cbv", "ttp", "tmax", "mip"):
            path = Path(folder) / shift.replace(" ", "_") / item["id"] / f"{name}.nii.gz"
            shifted[name] = str(save_nifti(path, maps[name].astype(np.float32), affine))
        items[shift] = shifted
    return items


def network_rows(items: list[dict], folder: Path, checkpoint: str, inputs: str) -> list[dict]:
    datalist = save_json(folder / "datalist.json", {"test": items})
    run_inference(str(datalist), "test", checkpoint, inputs, folder / "out")
    return [scored(item, load_map(folder / "out" / item["id"] / "label.nii.gz")[0]) for item in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--datalist", default="data/synthetic/datalist.json")
    parser.add_argument("--inputs", default="PMs+N")
    parser.add_argument("--patients", type=int, default=0, help="first N test patients only (0: all)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    datalist = Path(args.datalist).resolve()
    generator = __import__("json").loads(datalist.read_text())["generator"]
    items = load_datalist(datalist, splits=("test",))["test"]  # absolute map paths
    items = items[: args.patients] if args.patients else items
    tasks = {task["id"]: task for task in cohort_tasks(generator, "unused")}
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(item, tasks[item["id"]], tmp) for item in items]
        with ProcessPoolExecutor(args.workers) as pool:
            per_patient = list(pool.map(write_patient, jobs))
        for shift in SHIFTS:
            shifted = [patient[shift] for patient in per_patient]
            folder = Path(tmp) / shift.replace(" ", "_")
            results[f"{shift}: network"] = network_rows(shifted, folder, args.checkpoint, args.inputs)
            results[f"{shift}: threshold"] = baseline_rows({"test": shifted}, "threshold", Path(tmp))
    groups = [item["group"] for item in items]
    print(f"checkpoint: {args.checkpoint}; cohort {args.datalist}; rows: maps: method")
    print_table(results, ", ".join(f"{g} {groups.count(g)}" for g in ("LVO", "Non-LVO", "WIS")))


if __name__ == "__main__":
    main()
