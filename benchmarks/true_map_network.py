"""The default network trained and scored on other maps than its own: the *true* (noise-free) perfusion maps, or
maps recomputed from each patient's re-simulated series with its baseline exact or with other map settings: what
each part of the map noise costs it.

The synthetic cohort keeps, beside each patient's computed maps, the true maps the CT series were simulated from
(``cbf_true``, ``cbv_true``, ``ttp_true``, ``tmax_true``, ``mtt_true``). This writes copies of ``--datalist``
and of each ``--score`` datalist whose map entries point at the true maps, trains the default configuration on the
first (``train.json`` unchanged but for ``--seed``, ``--datalist`` and ``--output_dir``), scores the best model on
the test split of each (``evaluate.json``: islands under the minimum volume dropped, as for the computed maps) and
prints mean Dice per class and group with its 95 % bootstrap interval. The gap between these figures and the same
network on the computed maps is what the maps lose; the gap between these and the labels is what the maps do not
carry (the onset time) or the network does not learn from 30 training patients. ``--true cbv`` replaces only the
named maps, to see which map's noise costs most.

``--recompute cbv`` instead replaces the named maps by maps recomputed (``compute_perfusion_maps``, the
generator's own call) from each patient's series, re-simulated from the datalist's ``generator`` entry (the
same task gives the same patient): with ``--exact-baseline``, the noise in each voxel's baseline frames (those
before the arterial input rises) is re-centred on its noise-free value, so the voxel's baseline is exact while
every frame keeps its noise (a CBV area sums ``T`` frames minus ``T`` times the baseline, so the baseline's
error counts ``T`` times: Li et al., Med Phys 2019;46:4869, found it dominates CBV noise); with
``--map-settings '{"smoothing_mm": 4.5}'``, other denoising. ``--no-own-test`` scores only the ``--score`` cohorts.
Run: python benchmarks/true_map_network.py --datalist data/synthetic/datalist.json --score data/dev/datalist.json
     [--seeds 0 1] [--true cbf cbv ttp tmax | --recompute cbv [--exact-baseline] [--map-settings JSON]]
     [--no-own-test] [--output_root runs/true_maps]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT / "benchmarks")]

from seed_robustness import bundle  # noqa: E402

from scripts.io import load_datalist  # noqa: E402
from scripts.io.datalist import read_datalist  # noqa: E402
from scripts.io.files import save_json, save_nifti  # noqa: E402
from scripts.perfusion.deconvolution import PerfusionMaps, compute_perfusion_maps  # noqa: E402
from scripts.simulation.cohort import cohort_tasks, simulate_task  # noqa: E402
from scripts.simulation.simulate import Study  # noqa: E402

MAPS = ("cbf", "cbv", "ttp", "tmax", "mtt")
CELLS = (("penumbra", "LVO"), ("core", "LVO"), ("penumbra", "Non-LVO"), ("core", "Non-LVO"))


def true_map_datalist(datalist: str, destination: Path, maps: tuple[str, ...] = MAPS) -> Path:
    """A copy of ``datalist`` (paths made absolute) whose entries for ``maps`` name the true maps."""
    base = Path(datalist).resolve().parent  # the true maps' paths are relative to it
    splits = load_datalist(Path(datalist).resolve())
    for items in splits.values():
        for item in items:
            missing = [f"{m}_true" for m in maps if f"{m}_true" not in item]
            if missing:
                raise SystemExit(
                    f"{datalist}: patient {item['id']} has no {', '.join(missing)} (not a synthetic cohort)."
                )
            item.update({m: str(base / item[f"{m}_true"]) for m in maps})  # absolute paths stay as they are
    destination.parent.mkdir(parents=True, exist_ok=True)
    save_json(destination, splits)
    return destination


def recompute(task: dict, settings: dict, exact_baseline: bool = False) -> tuple[PerfusionMaps, Study]:
    """One patient's maps recomputed from its re-simulated series (``exact_baseline``: the noise in each voxel's
    baseline frames re-centred on its noise-free value), and the study (its truth and states)."""
    study, grid, _, _ = simulate_task(task)
    ctp = study.ctp
    if exact_baseline:
        clean = simulate_task(task, noise_scale=0.0)[0].ctp  # the same patient, every frame noise-free
        n = int(compute_perfusion_maps(ctp, study.frame_interval, grid.spacing[:2], **settings).info["baseline_frames"])
        ctp = ctp.copy()
        ctp[..., :n] -= (ctp[..., :n] - clean[..., :n]).mean(axis=-1, keepdims=True)
    return compute_perfusion_maps(ctp, study.frame_interval, grid.spacing[:2], **settings), study


def recomputed_maps(task: dict, folder: Path, maps: tuple[str, ...], settings: dict, exact_baseline: bool) -> dict:
    """:func:`recompute` one patient's ``maps`` into ``folder``; return their paths by name."""
    result, study = recompute(task, settings, exact_baseline)
    affine = study.grid.affine()
    return {m: str(save_nifti(folder / task["id"] / f"{m}.nii.gz", getattr(result, m), affine)) for m in maps}


def recomputed_datalist(
    datalist: str,
    destination: Path,
    maps: tuple[str, ...],
    settings: dict,
    exact_baseline: bool,
    splits: tuple[str, ...],
) -> Path:
    """A copy of ``datalist`` (paths absolute, only ``splits``) whose entries for ``maps`` name maps recomputed
    from each patient's re-simulated series (:func:`recomputed_maps`, in ``destination``'s folder); maps already
    written there are not recomputed (a rerun resumes)."""
    generator = read_datalist(Path(datalist)).get("generator")
    if not generator:
        raise SystemExit(f"{datalist}: no 'generator' entry (not a synthetic cohort): cannot re-simulate it.")
    tasks = {t["id"]: t for t in cohort_tasks(generator, "")}
    chosen = {s: items for s, items in load_datalist(Path(datalist).resolve()).items() if s in splits}
    folder = destination.parent / destination.stem
    todo = [item["id"] for items in chosen.values() for item in items]
    done = [pid for pid in todo if all((folder / pid / f"{m}.nii.gz").is_file() for m in maps)]
    with ProcessPoolExecutor(2) as pool:  # each map computation threads over slices too
        jobs = {
            pid: pool.submit(recomputed_maps, tasks[pid], folder, maps, settings, exact_baseline)
            for pid in todo
            if pid not in done
        }
        paths = {pid: job.result() for pid, job in jobs.items()}
    paths.update({pid: {m: str(folder / pid / f"{m}.nii.gz") for m in maps} for pid in done})
    for items in chosen.values():
        for item in items:
            item.update(paths[item["id"]])
    save_json(destination, chosen)
    return destination


def dice_cells(summary: Path) -> list[str]:
    with open(summary) as handle:
        rows = {(r["class"], r["group"]): r for r in csv.DictReader(handle) if r["metric"] == "dice"}
    return [
        f"{float(rows[c]['mean']):.2f} [{float(rows[c]['ci_low']):.2f}, {float(rows[c]['ci_high']):.2f}]" for c in CELLS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--datalist", default="data/synthetic/datalist.json", help="training cohort (and its test split)"
    )
    parser.add_argument("--score", nargs="*", default=[], help="further cohorts whose test split is scored")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--true", nargs="+", default=list(MAPS), choices=MAPS, help="maps replaced by the truth")
    parser.add_argument("--recompute", nargs="+", choices=MAPS, help="maps recomputed from the re-simulated series")
    parser.add_argument("--exact-baseline", action="store_true", help="recompute with each voxel's baseline exact")
    parser.add_argument("--map-settings", default="{}", help="JSON keyword arguments of compute_perfusion_maps")
    parser.add_argument("--no-own-test", action="store_true", help="score only the --score cohorts' test splits")
    parser.add_argument("--output_root", default="runs/true_maps")
    args = parser.parse_args()
    root = (ROOT / args.output_root).resolve()
    named = [args.datalist, *args.score]
    if args.recompute:
        maps, settings = tuple(args.recompute), json.loads(args.map_settings)
        own = ("training", "validation") if args.no_own_test else ("training", "validation", "test")
        cohorts = {
            Path(d).parent.name: recomputed_datalist(
                d,
                root / "datalists" / f"{Path(d).parent.name}.json",
                maps,
                settings,
                args.exact_baseline,
                own if i == 0 else ("test",),
            )
            for i, d in enumerate(named)
        }
        what = f"recomputed maps: {', '.join(maps)}, exact baseline {args.exact_baseline}, settings {settings}"
    else:
        maps = tuple(args.true)
        cohorts = {
            Path(d).parent.name: true_map_datalist(d, root / "datalists" / f"{Path(d).parent.name}.json", maps)
            for d in named
        }
        what = f"true maps: {', '.join(maps)}"
    train_datalist = next(iter(cohorts.values()))
    scored = dict(list(cohorts.items())[1:]) if args.no_own_test else cohorts
    print(f"{what}; trained on {args.datalist}; test splits scored, islands dropped\n")
    print("| seed | cohort | Dice pen LVO | Dice core LVO | Dice pen Non-LVO | Dice core Non-LVO |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        out = root / f"seed{seed}"
        common = ["--seed", str(seed), "--output_dir", str(out)]
        if not any((out / "model").glob("best_*.pt")):
            bundle("training", "--config_file", "bundle/configs/train.json", "--datalist", str(train_datalist), *common)
        for name, datalist in scored.items():
            report = out / f"test_{name}"
            if not (report / "metrics_summary.csv").is_file():
                configs = "['bundle/configs/train.json','bundle/configs/evaluate.json']"
                bundle(
                    "evaluating",
                    "--config_file",
                    configs,
                    "--datalist",
                    str(datalist),
                    *common,
                    "--report_dir",
                    str(report),
                )
            print(f"| {seed} | {name} | " + " | ".join(dice_cells(report / "metrics_summary.csv")) + " |")


if __name__ == "__main__":
    main()
