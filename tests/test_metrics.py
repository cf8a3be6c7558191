import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from scripts.io import CTPDataError, load_datalist, save_nifti
from scripts.learning.engine.metrics import (
    CLASSES,
    METRICS,
    LesionMetrics,
    bootstrap_ci,
    lesion_metrics,
    metric_names,
    patient_row,
    selection_metric,
    summarise,
)
from scripts.learning.engine.reports import evaluate_predictions

SPACING = (0.5, 1.0, 5.0)  # anisotropic: 2.5 mm^3 voxels


def box(x=(2, 6), y=(2, 6), z=(1, 3), value=1, shape=(10, 10, 6)) -> np.ndarray:
    vol = np.zeros(shape, np.uint8)
    vol[x[0] : x[1], y[0] : y[1], z[0] : z[1]] = value
    return vol


def test_extra_slice_gives_hand_computed_dice_hausdorff_and_volume():
    truth, pred = box(), box(z=(1, 4))
    m = lesion_metrics(pred, truth, SPACING)
    assert m["dice_penumbra"] == pytest.approx(2 * 32 / (32 + 48))
    assert m["hd_penumbra"] == pytest.approx(5.0)  # one slice of 5 mm
    assert m["dv_ml_penumbra"] == pytest.approx(16 * 2.5 / 1000) and m["adv_ml_penumbra"] == pytest.approx(0.04)
    assert m["hd95_penumbra"] <= m["hd_penumbra"]
    assert m["dice_hypoperfused"] == m["dice_penumbra"] and m["dice_core"] == 1.0  # no core in either


def test_in_plane_shift_uses_the_in_plane_spacing():
    m = lesion_metrics(box(x=(4, 8)), box(), SPACING)
    assert m["dice_penumbra"] == pytest.approx(0.5)
    assert m["hd_penumbra"] == pytest.approx(2 * 0.5)  # 2 voxels of 0.5 mm along x
    assert m["dv_ml_penumbra"] == 0.0


def test_core_penumbra_and_hypoperfused_are_scored_separately():
    truth = box(value=1)
    truth[3:5, 3:5, 1:3] = 2
    pred = truth.copy()
    pred[pred == 2] = 1  # core called penumbra
    m = lesion_metrics(pred, truth, SPACING)
    assert m["dice_hypoperfused"] == 1.0 and m["hd_hypoperfused"] == 0.0
    assert m["dice_core"] == 0.0 and math.isnan(m["hd_core"])  # predicted core empty: undefined HD
    assert m["dv_ml_core"] == pytest.approx(-8 * 2.5 / 1000)


def test_empty_mask_conventions_and_group_summary():
    empty = np.zeros((10, 10, 6), np.uint8)
    rows = [
        patient_row("a", "LVO", box(), box(), SPACING),
        patient_row("b", "LVO", box(x=(4, 8)), box(), SPACING),
        patient_row("c", "WIS", empty, empty, SPACING),
        patient_row("d", "Non-LVO", empty, box(), SPACING),
    ]
    assert rows[2]["dice_penumbra"] == 1.0 and math.isnan(rows[2]["hd_penumbra"])
    assert rows[3]["dice_penumbra"] == 0.0 and math.isnan(rows[3]["hd_penumbra"])
    summary = {(s["group"], s["class"], s["metric"]): s for s in summarise(rows)}
    lvo_dice = summary[("LVO", "penumbra", "dice")]
    assert lvo_dice["mean"] == pytest.approx(0.75) and lvo_dice["sd"] == pytest.approx(np.std([1.0, 0.5], ddof=1))
    all_hd = summary[("all", "penumbra", "hd")]
    assert all_hd["n"] == 2 and all_hd["n_undefined"] == 2 and all_hd["mean"] == pytest.approx(0.5)
    assert summary[("WIS", "penumbra", "dice")]["n_both_empty"] == 1
    assert summary[("all", "penumbra", "dice")]["mean"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    names = metric_names(summarise(rows), "val")
    assert names["val_dice_penumbra_LVO"] == pytest.approx(0.75)
    assert "val_hd_penumbra_WIS" not in names  # undefined everywhere: not reported as a number
    assert names["val_adv_ml_penumbra_Non-LVO"] == pytest.approx(0.08)


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_more_patients():
    """The 95 % percentile bootstrap interval of a group mean: around the mean, about 1.96 standard errors wide
    for a large sample, narrower with four times the patients, a point for one patient, NaN for none; the
    summary and the MLflow names carry it."""
    rng = np.random.default_rng(5)
    small, large = rng.uniform(0, 1, 25), rng.uniform(0, 1, 100)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    half_width = 1.96 * small.std(ddof=1) / np.sqrt(small.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    large_low, large_high = bootstrap_ci(large)
    assert (large_high - large_low) < 0.65 * (high - low)
    assert bootstrap_ci(np.array([0.4])) == (0.4, 0.4) and all(math.isnan(v) for v in bootstrap_ci(np.array([])))
    rows = [{"group": "LVO", **{f"{m}_{c}": v for m in METRICS for c in CLASSES}} for v in small]
    summary = {(s["group"], s["class"], s["metric"]): s for s in summarise(rows)}
    assert summary[("LVO", "core", "dice")]["ci_low"] == pytest.approx(low)
    names = metric_names(summarise(rows), "test")
    assert names["test_dice_core_LVO_ci_low"] == pytest.approx(low)
    assert names["test_dice_core_LVO_ci_high"] == pytest.approx(high)


@pytest.fixture()
def predictions(tiny_cohort, tmp_path):
    """Each test patient's label copied as its prediction."""
    folder = tmp_path / "pred"
    for item in load_datalist(tiny_cohort)["test"]:
        folder.mkdir(exist_ok=True)
        shutil.copy(item["label"], folder / f"{item['id']}.nii.gz")
    return folder


def test_folder_evaluation_scores_and_writes_reports(tiny_cohort, predictions, tmp_path):
    rows, summary = evaluate_predictions(tiny_cohort, predictions, "test", tmp_path / "report", title="label")
    assert all(r["dice_hypoperfused"] == 1.0 for r in rows)
    assert all(r["adv_ml_core"] == 0.0 for r in rows)
    for name in ("metrics_per_patient.csv", "metrics_summary.csv", "metrics_summary.md"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    table = (tmp_path / "report" / "metrics_summary.md").read_text()
    assert table.startswith("| model | class | Dice LVO") and "| label | penumbra |" in table


def test_folder_evaluation_bad_input_names_patient_and_file(tiny_cohort, predictions):
    items = load_datalist(tiny_cohort)["test"]
    first = items[0]
    target = predictions / f"{first['id']}.nii.gz"
    img = nib.load(target)
    data = np.asarray(img.dataobj)
    save_nifti(target, data[:-1], img.affine)
    with pytest.raises(CTPDataError, match=f"patient {first['id']}: prediction shape"):
        evaluate_predictions(tiny_cohort, predictions, "test")
    stretched = img.affine.copy()
    stretched[0, 0] *= 2
    save_nifti(target, data, stretched)
    with pytest.raises(CTPDataError, match=f"patient {first['id']}: prediction spacing"):
        evaluate_predictions(tiny_cohort, predictions, "test")
    save_nifti(target, np.full(data.shape, 7, np.uint8), img.affine)
    with pytest.raises(
        CTPDataError, match=f"patient {first['id']}: .*prediction values must be 0, 1, 2; found \\[7\\]"
    ):
        evaluate_predictions(tiny_cohort, predictions, "test")
    target.unlink()
    with pytest.raises(CTPDataError, match=f"patient {first['id']}: prediction file not found: .*{first['id']}.nii.gz"):
        evaluate_predictions(tiny_cohort, predictions, "test")


def test_ignite_metric_reports_design_names():
    affine = np.diag([*SPACING, 1.0])
    outputs = [
        [
            {
                "pred": MetaTensor(torch.from_numpy(box(x=(4, 8)))[None], affine=affine),
                "label": MetaTensor(torch.from_numpy(box())[None], affine=affine),
                "group": "LVO",
                "id": "p1",
            }
        ],
        [
            {
                "pred": torch.zeros(3, 10, 10, 6).index_fill_(0, torch.tensor([0]), 1.0),
                "label": torch.zeros(1, 10, 10, 6),
                "spacing": SPACING,
                "group": "WIS",
                "id": "p2",
            }
        ],
    ]
    engine = Engine(lambda e, batch: batch)
    metric = LesionMetrics(split="val")
    metric.attach(engine, "lesion")
    selection_metric(metric).attach(engine, "val_dice_lesion")
    state = engine.run(outputs, max_epochs=1)
    assert state.metrics["val_dice_penumbra_LVO"] == pytest.approx(0.5)
    # the model-selection score: penumbra 0.5 and core (both empty) 1.0 of the LVO patient; WIS left out
    assert state.metrics["val_dice_lesion"] == pytest.approx(0.75)
    assert state.metrics["val_hd_penumbra_LVO"] == pytest.approx(1.0)
    assert state.metrics["val_dice_penumbra_WIS"] == 1.0
    assert [r["id"] for r in metric.rows] == ["p1", "p2"]
    with pytest.raises(ValueError, match="group"):
        metric.update(
            {"pred": torch.zeros(1, 2, 2, 2), "label": torch.zeros(1, 2, 2, 2), "spacing": SPACING, "group": "?"}
        )


def test_scoring_workflow_writes_the_reports(tiny_cohort, predictions, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "scoring",
            "--config_file",
            "bundle/configs/score.json",
            "--datalist",
            str(tiny_cohort),
            "--predictions",
            str(predictions),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=900,
    )
    assert "| model | penumbra |" in (tmp_path / "out" / "metrics_summary.md").read_text()
