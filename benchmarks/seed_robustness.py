"""The default network against the baselines on the test set, every seed, with 95 % confidence intervals.

For every input set (default PMs+N) and seed (default 0, 1, 2): the default training (``train.json`` unchanged but
for ``--seed`` / ``--inputs``) and its evaluation on the test split, each an MLflow run in experiment ``seeds``;
finished runs are reused, interrupted ones resumed. On the same test patients:

* the RAPID-like threshold rule on the estimated maps (``inference_threshold.json``'s rule), with lesion islands
  under the bundle's minimum volume dropped and core islands under its core minimum labelled penumbra, as the
  overlay's output and the network's evaluation do (``scripts.perfusion.lesions``); with the core minimum the rule
  does best with on the development cohort (:data:`RULE_MIN_CORE_ML`); and as the issue defines it, islands kept;
  the latter again written in this file from its definition (own brain mask, no bundle code), so a fault in the
  bundle's rule cannot make the network look better than it is;
* the voxel baseline (gradient boosting on rCBF, rCBV, Tmax, rTTP, NIHSS), fitted on the training split per seed,
  small islands dropped; and again without NIHSS (the four map features: with 30 training patients the score can
  single out a patient, so the baseline with it may be the weaker one);
* the **oracle**: the tissue-fate rule on the *true* relative flow with the patient's latent ischaemia time;
* the **oracle without the onset time**: the same rule on the same true flow (now and during ischaemia), with
  the patient's ischaemia time replaced by the middle of the generator's onset range for the group (4.5 h LVO,
  5.5 h Non-LVO; fixed by the generator, not fitted). The infarction threshold rises with time, and no map
  carries the time: what a perfect reading of the flow alone can give;
* the **computed-map ceiling** the issue asked for: the same rule on the *computed* CBF (relative to each
  voxel's true normal flow, the patient's global CBF bias divided out on healthy brain) with the true latent
  history, voxel by voxel. It shows what the map noise and the deconvolution's local errors do to the rule
  itself; it is not an upper bound for a network, which reads neighbourhoods and several maps at once.

Prints, per method and seed, mean Dice per class and group and LVO core |dV| with 95 % bootstrap intervals over
patients (:func:`scripts.learning.engine.metrics.bootstrap_ci`), then the issue-#26 targets per seed.
``--test_datalist`` scores the test split of another cohort instead (an independent one, larger than the default's):
the networks still train on ``--datalist`` and are evaluated into ``<run>/test_<cohort folder>/`` (not logged to
MLflow, whose run keeps its own test cohort's figures), the voxel baseline is still fitted on ``--datalist``'s
training split.
Run: python benchmarks/seed_robustness.py [--datalist data/synthetic/datalist.json] [--seeds 0 1 2] [--precision fp32]
An independent test cohort: ... --test_datalist data/big11/datalist.json (``generating --seed 11 --n_test 400``)
The rule and the fate-rule bounds alone, no training (e.g. on a development cohort): ... --seeds
The paper's question (issue #26 item 4): ... --variants SF EF EFI --inputs PMs PMs+N
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT / "benchmarks")]

from tissue_fate_calibration import truth  # noqa: E402

from scripts.io import load_datalist, load_map  # noqa: E402
from scripts.learning.engine.metrics import bootstrap_ci, patient_row  # noqa: E402
from scripts.learning.experiments.grids import cell_name  # noqa: E402
from scripts.learning.experiments.voxel_baseline import (  # noqa: E402
    FEATURES,
    IMAGE_FEATURES,
    VoxelOutcomeModel,
    load_patient,
)
from scripts.learning.tracking.runs import run_finished  # noqa: E402
from scripts.perfusion.lesions import drop_small_lesions  # noqa: E402
from scripts.perfusion.thresholds import threshold_labels  # noqa: E402
from scripts.simulation.fate import ONSET_H, oracle_labels  # noqa: E402

CELLS = (("dice", "penumbra", "LVO"), ("dice", "core", "LVO"), ("dice", "penumbra", "Non-LVO"))
CELLS += (("dice", "core", "Non-LVO"), ("adv_ml", "core", "LVO"), ("hd95", "core", "LVO"))
RULE_MIN_CORE_ML = 0.5
"""The core minimum volume the threshold rule does best with on the development cohort (0.5 ml; the networks' is the
bundle's 3 ml, which the ``threshold`` row takes): ``benchmarks/min_lesion_volume.py``, *threshold rule*."""
HEADERS = ("Dice pen LVO", "Dice core LVO", "Dice pen Non-LVO", "Dice core Non-LVO", "|dV| core LVO ml")
HEADERS += ("HD95 core LVO mm",)


def bundle(*args: str) -> None:
    """One bundle workflow; its log goes to stderr, so stdout holds the tables alone."""
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], check=True, cwd=ROOT, stdout=sys.stderr)


def network_rows(
    datalist: str,
    variant: str,
    inputs: str,
    seed: int,
    root: Path,
    uri: str,
    precision: str = "auto",
    test_datalist: str | None = None,
) -> list[dict]:
    """Train (or resume) on ``datalist`` and evaluate one variant, input set and seed in ``precision`` on the test
    split of ``test_datalist`` (default: ``datalist``'s); its per-patient test rows."""
    out = root / f"{cell_name(variant, inputs, 'gradual')}-seed{seed}"
    report_dir = out / ("test" if test_datalist is None else f"test_{Path(test_datalist).parent.name}")
    report = report_dir / "metrics_per_patient.csv"
    if not report.is_file():
        args = ["--output_dir", str(out), "--seed", str(seed), "--inputs", inputs, "--variant", variant]
        args += ["--precision", precision]
        tracking = ["--tracking", "bundle/configs/mlflow.json", "--tracking_uri", uri, "--experiment_name", "seeds"]
        # a finished run keeps its resume point: ask MLflow whether it finished, not the folder
        if not run_finished(uri, "seeds", out.name):
            resume = "true" if (out / "checkpoints").is_dir() else "false"
            train = ["--datalist", datalist, *args, *tracking, "--resume", resume]
            bundle("training", "--config_file", "bundle/configs/train.json", *train)
        configs = "['bundle/configs/train.json','bundle/configs/evaluate.json']"
        evaluate = ["--datalist", test_datalist or datalist, *args]
        # another cohort is not logged: the training's MLflow run keeps its own test cohort's figures
        evaluate += tracking if test_datalist is None else ["--report_dir", str(report_dir)]
        bundle("evaluating", "--config_file", configs, *evaluate, "--split", "test")
    with open(report) as handle:
        return list(csv.DictReader(handle))  # values as written ("nan" where undefined); read with float()


def fate_rule_labels(item: dict, computed: bool, root: Path, onset_known: bool = True) -> np.ndarray:
    """The fate rule with the latent parameters, on the true relative flow (oracle) or on the computed CBF;
    without ``onset_known`` the ischaemia time is the middle of the group's onset range."""
    label, _ = load_map(item["label"])
    if "rcbf_true" not in item:  # WIS: no occlusion, no lesion
        return np.zeros(label.shape, np.uint8)
    spacing = nib.load(item["label"]).header.get_zooms()[:3]
    rcbf, rcbf_ischaemic = truth(root, item, "rcbf_true"), truth(root, item, "rcbf_ischaemic_true")
    if computed:
        cbf_true, cbf = truth(root, item, "cbf_true"), load_map(item["cbf"])[0]
        inside = rcbf > 0
        normal = np.where(inside, cbf_true / np.maximum(rcbf, 1e-6), 0.0)  # each voxel's own normal flow
        healthy = inside & (rcbf >= 0.999)
        bias = float(np.median(cbf[healthy] / np.maximum(cbf_true[healthy], 1e-6))) if healthy.any() else 1.0
        measured = np.where(inside, cbf / max(bias, 1e-6) / np.maximum(normal, 1e-6), 0.0)
        history = np.where(inside, rcbf_ischaemic / np.maximum(rcbf, 1e-6), 1.0)  # reperfusion since ischaemia
        rcbf, rcbf_ischaemic = measured, np.where(inside, measured * history, 0.0)
    hours = item["fate"]["ischaemia_h"] if onset_known else float(np.mean(ONSET_H[item["group"]]))
    return oracle_labels(rcbf, rcbf_ischaemic, hours, float(np.prod(spacing)) / 1000.0)


def rule_written_here(item: dict) -> np.ndarray:
    """The RAPID-like rule again from its definition, sharing no code with the bundle (a check on
    :func:`scripts.perfusion.thresholds.threshold_labels` and on the brain mask): brain = MIP in the soft-tissue
    window 0–80 HU; reference = median CBF of brain with Tmax < 4 s; core = CBF < 30 % of it inside Tmax > 6 s;
    penumbra = Tmax > 6 s minus core."""
    cbf, tmax, mip = (np.asarray(nib.load(item[key]).dataobj, dtype=np.float64) for key in ("cbf", "tmax", "mip"))
    brain = (mip > 0) & (mip < 80)
    reference = np.median(cbf[brain & (tmax < 4) & (cbf > 0)])
    hypoperfused = brain & (tmax > 6)
    label = hypoperfused.astype(np.uint8)
    label[hypoperfused & (cbf < 0.3 * reference)] = 2
    return label


def scored(item: dict, pred: np.ndarray) -> dict:
    """One patient's metrics row: ``pred`` against the item's label."""
    label, _ = load_map(item["label"])
    spacing = nib.load(item["label"]).header.get_zooms()[:3]
    return patient_row(item["id"], item["group"], pred.astype(np.uint8), label.astype(np.uint8), spacing)


def baseline_rows(splits: dict, method: str, root: Path, seed: int = 0) -> list[dict]:
    """Per-patient test rows of ``threshold``, ``threshold, its own core minimum``, ``threshold, islands kept``,
    ``rule written here``, ``voxel`` or ``voxel without NIHSS`` (fitted with ``seed``), ``oracle``, ``oracle without
    onset`` or ``ceiling``. The methods' labels lose their small lesion and core islands as the network's do in
    evaluation; the rule as the issue defines it (islands kept, and its independent copy) and the fate-rule bounds
    keep theirs."""
    features = {"voxel": FEATURES, "voxel without NIHSS": IMAGE_FEATURES}.get(method)
    model = None if features is None else VoxelOutcomeModel(seed=seed, features=features).fit(splits["training"])
    rows = []
    for item in splits["test"]:
        if method in ("oracle", "oracle without onset", "ceiling"):
            pred = fate_rule_labels(item, method == "ceiling", root, onset_known=method != "oracle without onset")
        elif method == "rule written here":
            pred = rule_written_here(item)
        else:
            maps, brain, affine = load_patient(item)
            pred = (
                threshold_labels(maps["cbf"], maps["tmax"], brain)
                if model is None
                else model.predict(maps, brain, item["nihss"])
            )
            if method == "threshold, its own core minimum":
                pred = drop_small_lesions(pred, voxel_sizes(affine), min_core_ml=RULE_MIN_CORE_ML)
            elif method != "threshold, islands kept":
                pred = drop_small_lesions(pred, voxel_sizes(affine))
        rows.append(scored(item, pred))
    return rows


def cell(rows: list[dict], metric: str, cls: str, group: str) -> tuple[float, float, float]:
    """Mean and 95 % bootstrap interval over the group's patients (undefined values left out)."""
    values = np.array([float(r[f"{metric}_{cls}"]) for r in rows if r["group"] == group], dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return (float("nan"),) * 3
    return (float(values.mean()), *bootstrap_ci(values))


def print_table(results: dict[str, list[dict]], counts: str) -> dict[str, dict]:
    digits = {"dice": 2, "adv_ml": 1, "hd95": 1}
    print(f"\ntest patients: {counts}; mean [95 % bootstrap interval over patients]\n")
    print("| method | " + " | ".join(HEADERS) + " |")
    print("|---|" + "---|" * len(HEADERS))
    cells = {}
    for method, rows in results.items():
        cells[method] = {c: cell(rows, *c) for c in CELLS}
        text = [
            f"{m:.{digits[c[0]]}f} [{lo:.{digits[c[0]]}f}, {hi:.{digits[c[0]]}f}]"
            for c, (m, lo, hi) in cells[method].items()
        ]
        print(f"| {method} | " + " | ".join(text) + " |")
    return cells


def paired_difference(rows: list[dict], baseline: list[dict], metric: str, cls: str, group: str) -> tuple[float, ...]:
    """Mean per-patient difference ``rows - baseline`` over the group's patients where both are defined, with its
    95 % bootstrap interval: the paired comparison, which the two methods' own intervals understate."""
    other = {r["id"]: float(r[f"{metric}_{cls}"]) for r in baseline}
    pairs = [(float(r[f"{metric}_{cls}"]), other[r["id"]]) for r in rows if r["group"] == group and r["id"] in other]
    diff = np.array([a - b for a, b in pairs if np.isfinite(a) and np.isfinite(b)])
    return (float(diff.mean()), *bootstrap_ci(diff)) if diff.size else (float("nan"),) * 3


def targets(cells: dict[str, dict], network: str, seed: int, results: dict[str, list[dict]]) -> list[str]:
    """Issue #26's targets for one seed: pass/fail lines (against the rule and both voxel baselines of the same seed),
    then the paired LVO core differences to the rule (with the bundle's core minimum and with its own) and to the
    voxel baselines, and the LVO penumbra differences to the rule and the voxel baselines."""
    voxels = [f"voxel baseline seed {seed}", f"voxel baseline without NIHSS seed {seed}"]
    net, rule = cells[network], cells["threshold"]
    checks = []
    for c in CELLS[:3]:
        best = max(rule[c][0], *(cells[v][c][0] for v in voxels))
        checks.append((f"beats threshold and both voxel baselines on {c[1]} {c[2]}", net[c][0] > best))
    core = ("dice", "core", "LVO")
    checks.append(("LVO core interval above the threshold's", net[core][1] > rule[core][2]))
    checks.append(("LVO core Dice >= 0.50", net[core][0] >= 0.50))
    checks.append(("LVO core |dV| <= 10 ml", net[("adv_ml", "core", "LVO")][0] <= 10.0))
    checks.append(("LVO penumbra Dice >= 0.85", net[("dice", "penumbra", "LVO")][0] >= 0.85))
    checks.append(("Non-LVO penumbra Dice >= 0.65", net[("dice", "penumbra", "Non-LVO")][0] >= 0.65))
    lines = [f"{network}: {'PASS' if ok else 'fail'}  {name}" for name, ok in checks]
    others = ["threshold", "threshold, its own core minimum", *voxels]
    for cls, other in [*(("core", o) for o in others), ("penumbra", "threshold"), *(("penumbra", v) for v in voxels)]:
        mean, low, high = paired_difference(results[network], results[other], "dice", cls, "LVO")
        lines.append(f"{network}: LVO {cls} Dice minus the {other}'s, paired: {mean:+.2f} [{low:+.2f}, {high:+.2f}]")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default="data/synthetic/datalist.json")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="none: the baselines and bounds only")
    parser.add_argument("--variants", nargs="+", default=["SF"], choices=["SF", "EF", "EFI"])
    parser.add_argument("--inputs", nargs="+", default=["PMs+N"])
    parser.add_argument("--test_datalist", help="score this cohort's test split instead of --datalist's")
    parser.add_argument("--output_root", default="runs/seeds")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="train.json's precision")
    parser.add_argument(
        "--tracking_uri", default=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlruns/mlflow.db'}"
    )
    args = parser.parse_args()
    datalist = str(Path(args.datalist).resolve())
    test_datalist = str(Path(args.test_datalist).resolve()) if args.test_datalist else None
    splits = load_datalist(datalist)
    if test_datalist is not None:  # baselines fitted on datalist's training split, all scored on the other test split
        splits = {"training": splits["training"], "test": load_datalist(test_datalist)["test"]}
    root = Path(test_datalist or datalist).parent
    results: dict[str, list[dict]] = {}
    networks = []
    # seed-major, so an interrupted run has one seed of every network first; printed network by network
    trained = {
        (variant, inputs, seed): network_rows(
            datalist,
            variant,
            inputs,
            seed,
            Path(args.output_root).resolve(),
            args.tracking_uri,
            args.precision,
            test_datalist,
        )
        for seed in args.seeds
        for variant in args.variants
        for inputs in args.inputs
    }
    for variant in args.variants:
        for inputs in args.inputs:
            for seed in args.seeds:
                name = f"{variant}_G({inputs.replace('+', ',')}) seed {seed}"
                results[name] = trained[(variant, inputs, seed)]
                networks.append((name, seed))
    results["threshold"] = baseline_rows(splits, "threshold", root)
    results["threshold, its own core minimum"] = baseline_rows(splits, "threshold, its own core minimum", root)
    results["threshold, islands kept"] = baseline_rows(splits, "threshold, islands kept", root)
    results["rule written here"] = baseline_rows(splits, "rule written here", root)
    for seed in args.seeds:
        results[f"voxel baseline seed {seed}"] = baseline_rows(splits, "voxel", root, seed)
    for seed in args.seeds:
        results[f"voxel baseline without NIHSS seed {seed}"] = baseline_rows(splits, "voxel without NIHSS", root, seed)
    if any("rcbf_true" in item for item in splits["test"]):
        results["ceiling (computed CBF + latent)"] = baseline_rows(splits, "ceiling", root)
        results["oracle (true flow + latent)"] = baseline_rows(splits, "oracle", root)
        results["oracle without onset time"] = baseline_rows(splits, "oracle without onset", root)
    groups = [item["group"] for item in splits["test"]]
    counts = ", ".join(f"{g} {groups.count(g)}" for g in ("LVO", "Non-LVO", "WIS"))
    tested = f"; test cohort: {args.test_datalist}" if test_datalist else ""
    print(f"cohort: {args.datalist}{tested}; seeds {args.seeds}")
    cells = print_table(results, counts)
    print()
    for name, seed in networks:
        for line in targets(cells, name, seed, results):
            print(f"- {line}")


if __name__ == "__main__":
    main()
