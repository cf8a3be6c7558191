"""The default network trained and scored on the *true* (noise-free) perfusion maps: what map noise costs it.

The synthetic cohort keeps, beside each patient's computed maps, the true maps the CT series were simulated from
(``cbf_true``, ``cbv_true``, ``ttp_true``, ``tmax_true``, ``mtt_true``). This writes copies of ``--datalist``
and of each ``--score`` datalist whose map entries point at the true maps, trains the default configuration on the
first (``train.json`` unchanged but for ``--seed``, ``--datalist`` and ``--output_dir``), scores the best model on
the test split of each (``evaluate.json``: islands under the minimum volume dropped, as for the computed maps) and
prints mean Dice per class and group with its 95 % bootstrap interval. The gap between these figures and the same
network on the computed maps is what the maps lose; the gap between these and the labels is what the maps do not
carry (the onset time) or the network does not learn from 30 training patients. ``--true cbv`` replaces only the
named maps, to see which map's noise costs most.
Run: python benchmarks/true_map_network.py --datalist data/synthetic/datalist.json --score data/dev/datalist.json
     [--seeds 0 1] [--true cbf cbv ttp tmax] [--output_root runs/true_maps]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT / "benchmarks")]

from seed_robustness import bundle  # noqa: E402

from scripts.io import load_datalist  # noqa: E402
from scripts.io.files import save_json  # noqa: E402

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
    parser.add_argument("--output_root", default="runs/true_maps")
    args = parser.parse_args()
    maps = tuple(args.true)
    root = (ROOT / args.output_root).resolve()
    cohorts = {
        Path(d).parent.name: true_map_datalist(d, root / "datalists" / f"{Path(d).parent.name}.json", maps)
        for d in [args.datalist, *args.score]
    }
    train_datalist = next(iter(cohorts.values()))
    print(f"true maps: {', '.join(maps)}; trained on {args.datalist}; test splits scored, islands dropped\n")
    print("| seed | cohort | Dice pen LVO | Dice core LVO | Dice pen Non-LVO | Dice core Non-LVO |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        out = root / f"seed{seed}"
        common = ["--seed", str(seed), "--output_dir", str(out)]
        if not any((out / "model").glob("best_*.pt")):
            bundle("training", "--config_file", "bundle/configs/train.json", "--datalist", str(train_datalist), *common)
        for name, datalist in cohorts.items():
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
