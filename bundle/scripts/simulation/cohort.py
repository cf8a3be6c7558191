"""Synthetic CTP cohort: patients per group, simulated 4D studies, maps computed from them, a datalist.

Output layout::

    <output_dir>/datalist.json
    <output_dir>/<id>/{cbf,cbv,mtt,ttp,tmax,mip,label}.nii.gz       estimated maps and the label
    <output_dir>/<id>/truth/{cbf,cbv,mtt,tmax,ttp,state}.nii.gz      true maps; state 3 = benign oligaemia
    <output_dir>/<id>/truth/{rcbf,rcbf_ischaemic}.nii.gz             tissue-fate model: true relative flow
    <output_dir>/<id>/ctp.nii.gz                                     raw 4D series (int16 HU), if save_ctp

Everything is written into a staging directory renamed into place at the end, so an interrupted run never
leaves a datalist pointing at missing files. Patient ``i`` is simulated from ``seed`` and ``i`` alone, so
a cohort is deterministic whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..io import GROUPS, save_json, save_nifti
from ..perfusion.deconvolution import compute_perfusion_maps
from .phantom import Grid
from .simulate import LESION_MODELS, Study, simulate_study

logger = logging.getLogger(__name__)

PAPER_GROUP_COUNTS = {"LVO": 77, "Non-LVO": 60, "WIS": 15}
GROUP_CODES = {"LVO": "01", "Non-LVO": "02", "WIS": "03"}
SPLIT_FRACTIONS = {"training": 0.58, "validation": 0.20, "test": 0.22}
SPLIT_FRACTIONS_WITHOUT_TEST = {"training": 0.75, "validation": 0.25, "test": 0.0}
"""With a separate test cohort (``n_test``): the paper's training:validation ratio (58:20)."""
NIHSS_RANGES = {"LVO": (10, 20), "Non-LVO": (2, 8), "WIS": (0, 4)}
HYPOPERFUSED_FRACTION_SCALE = {"LVO": 0.25, "Non-LVO": 0.04}


def group_counts(n_patients: int) -> dict[str, int]:
    """Patients per group in the paper's proportions (77/60/15), at least one per group from 3 patients."""
    if n_patients < 3:
        raise ValueError(f"n_patients must be at least 3 (one per group), got {n_patients}.")
    total = sum(PAPER_GROUP_COUNTS.values())
    counts = {g: max(1, int(round(n_patients * c / total))) for g, c in PAPER_GROUP_COUNTS.items()}
    counts["LVO"] += n_patients - sum(counts.values())
    return counts


def split_patients(
    ids_by_group: dict[str, list[str]], seed: int, fractions: dict[str, float] = SPLIT_FRACTIONS
) -> dict[str, list[str]]:
    """Stratified split by group in the given proportions (the paper's 58/20/22 %); validation and test get
    each group (test none when its fraction is 0)."""
    rng = np.random.default_rng([seed, 7])
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_FRACTIONS}
    for group in GROUPS:
        ids = list(ids_by_group.get(group, []))
        rng.shuffle(ids)
        n = len(ids)
        n_test = (int(round(n * fractions["test"])) or (1 if n >= 3 else 0)) if fractions["test"] else 0
        n_val = int(round(n * fractions["validation"])) or (1 if n >= 3 else 0)
        splits["test"] += ids[:n_test]
        splits["validation"] += ids[n_test : n_test + n_val]
        splits["training"] += ids[n_test + n_val :]
    for name in ("validation", "test") if fractions["test"] else ("validation",):  # tiny cohorts: never empty
        if not splits[name] and len(splits["training"]) > 1:
            splits[name].append(splits["training"].pop(0))
    return {name: sorted(ids) for name, ids in splits.items()}


def draw_nihss(
    group: str, hypoperfused_fraction: float, rng: np.random.Generator, collateral: float | None = None
) -> int:
    """NIHSS correlated with the hypoperfused fraction of the brain, within the group's usual range; poor
    collaterals (grade 0, of the tissue-fate model) add up to 2 points, good ones (1) take 2 off."""
    lo, hi = NIHSS_RANGES[group]
    if group == "WIS":
        return int(rng.integers(lo, hi + 1))
    severity = np.clip(hypoperfused_fraction / HYPOPERFUSED_FRACTION_SCALE[group], 0.0, 1.0)
    score = lo + (hi - lo) * severity + rng.normal(0.0, 1.0)
    if collateral is not None:
        score += 4.0 * (0.5 - collateral)
    return int(np.clip(round(score), max(0, lo - 2), min(42, hi + 3)))


def _noise_for(noise_hu: float | list[float], rng: np.random.Generator) -> float:
    if np.ndim(noise_hu) == 0:
        return float(noise_hu)
    lo, hi = (float(v) for v in noise_hu)
    if not 0 <= lo <= hi:
        raise ValueError(f"noise_hu range must satisfy 0 <= low <= high, got {noise_hu}.")
    return float(rng.uniform(lo, hi))


def cohort_tasks(params: dict, root: str | os.PathLike, save_ctp: bool = False) -> list[dict]:
    """One task per patient of the cohort that ``params`` (a datalist's ``generator`` entry) describe, in
    generation order; ``index`` seeds the patient's random stream, ``test`` marks the separate test cohort."""
    counts = group_counts(int(params["n_patients"]))
    n_test = int(params.get("n_test", 0))
    test_counts = group_counts(n_test) if n_test else dict.fromkeys(GROUPS, 0)
    tasks: list[dict] = []
    for is_test, cohort_counts in ((False, counts), (True, test_counts)):
        for group in GROUPS:
            first = counts[group] + 1 if is_test else 1  # test patients are numbered after the others
            for number in range(first, first + cohort_counts[group]):
                pid = f"CTP_{GROUP_CODES[group]}_{number:03d}"
                tasks.append(
                    {
                        **params,
                        "group": group,
                        "id": pid,
                        "index": len(tasks),
                        "root": str(root),
                        "save_ctp": save_ctp,
                        "test": is_test,
                    }
                )
    return tasks


def simulate_task(task: dict, noise_scale: float = 1.0) -> tuple[Study, Grid, float, np.random.Generator]:
    """One patient's study from its task (the same task gives the same patient), its grid, its drawn CT noise
    (HU) and the random stream where the study left it. ``noise_scale`` multiplies the noise and changes nothing
    else of the patient (the map-shift benchmark's "twice the noise")."""
    rng = np.random.default_rng([task["seed"], task["index"]])
    grid = Grid(size=task["size"], slices=task["slices"], slice_thickness=task["slice_thickness"])
    noise = _noise_for(task["noise_hu"], rng)
    study = simulate_study(
        task["group"], grid, rng, noise * noise_scale, task["n_frames"], task["frame_interval"], task["lesion_model"]
    )
    return study, grid, noise, rng


def simulate_patient(task: dict) -> dict:
    """Simulate, map and write one patient into ``task['root']``; return its datalist item (relative paths)."""
    group, pid, root = task["group"], task["id"], Path(task["root"])
    study, grid, noise, rng = simulate_task(task)
    maps = compute_perfusion_maps(study.ctp, study.frame_interval, grid.spacing[:2])
    affine = grid.affine()
    folder = root / pid
    item: dict = {"id": pid, "group": group}
    for name, array in maps.as_dict().items():
        save_nifti(folder / f"{name}.nii.gz", array, affine)
        item[name] = f"{pid}/{name}.nii.gz"
    save_nifti(folder / "label.nii.gz", study.label, affine)
    item["label"] = f"{pid}/label.nii.gz"
    for name, array in {**study.truth, "state": study.state}.items():
        save_nifti(folder / "truth" / f"{name}.nii.gz", array, affine)
        item[f"{name}_true" if name != "state" else "state"] = f"{pid}/truth/{name}.nii.gz"
    if task["save_ctp"]:
        hu = np.clip(np.round(study.ctp), -1024, 3071).astype(np.int16)
        save_nifti(folder / "ctp.nii.gz", hu, affine, frame_interval=study.frame_interval)
        item["ctp"] = f"{pid}/ctp.nii.gz"
    brain = (study.tissue == 3) | (study.tissue == 4)
    hypoperfused = float((study.label > 0).sum() / max(brain.sum(), 1))
    latent = study.meta.get("fate")  # the fate model's hidden parameters (for its oracle; no model may read them)
    item["nihss"] = draw_nihss(group, hypoperfused, rng, None if latent is None else latent["collateral"])
    if latent is not None:
        item["fate"] = {key: round(v, 4) if isinstance(v, float) else v for key, v in latent.items()}
    item["noise_hu"] = round(noise, 3)
    item["aif_voxels"] = maps.info.get("aif_voxels")
    return item


def generate_cohort(
    output_dir: str | os.PathLike = "data/synthetic",
    n_patients: int = 30,
    size: int = 128,
    slices: int = 8,
    slice_thickness: float = 5.0,
    noise_hu: float | list[float] = (4.0, 12.0),
    n_frames: int = 60,
    frame_interval: float = 1.0,
    seed: int = 0,
    save_ctp: bool = False,
    overwrite: bool = False,
    workers: int = 0,
    lesion_model: str = "fate",
    n_test: int = 0,
) -> Path:
    """Generate a synthetic cohort and return the path of its datalist.

    Args:
        output_dir: where the cohort goes; refused if it exists and is not empty, unless ``overwrite``.
        n_patients: patients in all, split LVO / Non-LVO / WIS as 77/60/15.
        size: in-plane matrix (the field of view is fixed: 512 gives the paper's 0.4366 mm pixels).
        slices: number of slices of ``slice_thickness`` mm.
        noise_hu: CT noise sigma (HU) at the paper's 0.4366 x 0.4366 x 5 mm voxel, or a [low, high] range
            drawn per patient; it is scaled to the simulated voxel size.
        n_frames, frame_interval: acquisition: number of frames and seconds between them.
        seed: cohort seed; the same arguments give the same cohort.
        save_ctp: also write each raw 4D series (int16 HU).
        overwrite: replace an existing non-empty ``output_dir``.
        workers: processes to use; 0 means one per CPU core.
        lesion_model: ``fate`` (labels are the tissue's latent fate, :mod:`scripts.simulation.fate`) or ``separable``
            (the former construction, where one map separates each class);
            see :data:`scripts.simulation.simulate.LESION_MODELS`.
        n_test: 0: the test split is 22 % of ``n_patients``. Otherwise a separate test cohort of ``n_test``
            more patients (same proportions of groups, same generator, each patient its own random stream),
            and ``n_patients`` are split 75/25 into training and validation: a test set large enough to tell
            methods apart without shrinking the training set.
    """
    if lesion_model not in LESION_MODELS:
        raise ValueError(f"lesion_model must be one of {tuple(LESION_MODELS)}, got {lesion_model!r}.")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out}: output directory is not empty; pass overwrite=True (--overwrite true) to replace it."
        )
    if size % 32:
        logger.warning("size %d is not divisible by 32; the networks need H, W divisible by 32.", size)
    counts = group_counts(int(n_patients))
    params = {
        "n_patients": int(n_patients),
        "size": int(size),
        "slices": int(slices),
        "slice_thickness": float(slice_thickness),
        "noise_hu": noise_hu if np.ndim(noise_hu) == 0 else [float(v) for v in noise_hu],
        "n_frames": int(n_frames),
        "frame_interval": float(frame_interval),
        "seed": int(seed),
        "lesion_model": lesion_model,
    }
    if int(n_test):
        params["n_test"] = int(n_test)  # absent when 0: earlier cohorts keep their data version
    version = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    test_counts = group_counts(int(n_test)) if int(n_test) else dict.fromkeys(GROUPS, 0)
    tasks = cohort_tasks(params, staging, bool(save_ctp))
    test_ids = {task["id"] for task in tasks if task["test"]}
    try:
        items = simulate_patients(tasks, min(len(tasks), workers or os.cpu_count() or 1))
        save_json(staging / "datalist.json", cohort_datalist(items, test_ids, params, version))
        replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("cohort of %d patients (%s; test cohort %s) written to %s", len(items), counts, test_counts, out)
    return out / "datalist.json"


def simulate_patients(tasks: list[dict], workers: int = 1) -> list[dict]:
    """Every task simulated and written (in ``workers`` processes); their datalist items, in task order.
    One log line per patient: a large cohort is not silent for minutes."""
    items = []
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for item in pool.map(simulate_patient, tasks) if pool else map(simulate_patient, tasks):
            items.append(item)
            logger.info("patient %s (%s) written: %d of %d", item["id"], item["group"], len(items), len(tasks))
    return items


def cohort_datalist(items: list[dict], test_ids: set[str], params: dict, version: str) -> dict:
    """The cohort's datalist: its generator parameters and version, and the patients split by group (the test
    split is the separate test cohort's patients when there is one)."""
    by_id = {item["id"]: item for item in items}
    ids_by_group = {g: [i["id"] for i in items if i["group"] == g and i["id"] not in test_ids] for g in GROUPS}
    if test_ids:
        splits = split_patients(ids_by_group, params["seed"], SPLIT_FRACTIONS_WITHOUT_TEST)
        splits["test"] = sorted(test_ids)
    else:
        splits = split_patients(ids_by_group, params["seed"])
    return {
        "name": "synthetic-ctp",
        "description": "Synthetic CT perfusion cohort: indicator-dilution simulation, "
        f"labels from the {params['lesion_model']} lesion model.",
        "version": version,
        "generator": params,
        **{split: [by_id[i] for i in ids] for split, ids in splits.items()},
    }


def replace_folder(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out``, replacing what was there only once it is complete."""
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
        os.replace(staging, out)
        shutil.rmtree(trash)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
