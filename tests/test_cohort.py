import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY

from scripts.io import check_patient, load_datalist
from scripts.simulation import cohort

ROOT = Path(__file__).resolve().parents[1]


def test_cohort_datalist_points_at_valid_patients(tiny_cohort):
    datalist = load_datalist(tiny_cohort)
    items = [i for split in datalist.values() for i in split]
    assert len(items) == TINY["n_patients"]
    assert {i["group"] for i in items} == {"LVO", "Non-LVO", "WIS"}
    assert all(datalist[s] for s in ("training", "validation", "test"))
    for item in items:
        check_patient(item)
        for key in ("ctp", "cbf_true", "cbv_true", "mtt_true", "tmax_true", "ttp_true", "state"):
            assert key in item
        assert 0 <= item["nihss"] <= 42
        img = nib.load(item["cbf"])
        assert img.shape == (64, 64, 2)
        assert np.allclose(img.header.get_zooms(), (512 * 0.43664551 / 64,) * 2 + (5.0,))
        ctp = nib.load(item["ctp"])
        assert ctp.shape == (64, 64, 2, 40) and ctp.header.get_zooms()[3] == pytest.approx(1.0)
        assert nib.load(item["label"]).get_data_dtype() == np.uint8
    raw = json.loads(tiny_cohort.read_text())
    assert raw["generator"]["seed"] == TINY["seed"] and len(raw["version"]) == 12
    assert not Path(raw["training"][0]["cbf"]).is_absolute()


def test_cohort_is_deterministic_for_a_seed_whatever_the_workers(tmp_path, tiny_cohort):
    again = cohort.generate_cohort(tmp_path / "again", save_ctp=True, **{**TINY, "workers": 2})
    first, second = json.loads(tiny_cohort.read_text()), json.loads(again.read_text())
    assert first == second
    item = first["test"][0]
    for key in ("cbf", "label", "ctp"):
        a = nib.load(tiny_cohort.parent / item[key]).get_fdata()
        b = nib.load(again.parent / item[key]).get_fdata()
        np.testing.assert_array_equal(a, b)


def test_refuses_non_empty_output_unless_overwrite(tmp_path):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    small = {**TINY, "n_patients": 3, "size": 32, "slices": 1, "n_frames": 20}
    with pytest.raises(FileExistsError, match="not empty"):
        cohort.generate_cohort(out, **small)
    assert (out / "mine.txt").exists()
    datalist = cohort.generate_cohort(out, overwrite=True, **small)
    assert datalist.is_file() and not (out / "mine.txt").exists()
    assert not list(tmp_path.glob(".cohort.*"))


def test_interrupted_generation_leaves_no_datalist(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = cohort.simulate_patient

    def failing(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(cohort, "simulate_patient", failing)
    small = {**TINY, "n_patients": 3, "size": 32, "slices": 1, "n_frames": 20}
    with pytest.raises(KeyboardInterrupt):
        cohort.generate_cohort(tmp_path / "cohort", **small)
    assert not (tmp_path / "cohort").exists()
    assert not list(tmp_path.iterdir())


def test_bundle_workflows_generate_then_compute_maps(tmp_path):
    out = tmp_path / "syn"
    run = [sys.executable, "-m", "monai.bundle", "run"]
    generated = subprocess.run(
        [
            *run,
            "generating",
            "--config_file",
            "bundle/configs/synthetic.json",
            "--output_dir",
            str(out),
            "--n_patients",
            "3",
            "--n_test",
            "0",
            "--size",
            "32",
            "--slices",
            "1",
            "--n_frames",
            "20",
            "--save_ctp",
            "true",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    assert generated.stdout.decode().count(" written: ") == 3  # one line per patient
    item = json.loads((out / "datalist.json").read_text())["training"][0]
    maps_dir = tmp_path / "maps"
    computed = subprocess.run(
        [
            *run,
            "computing",
            "--config_file",
            "bundle/configs/perfusion.json",
            "--ctp",
            str(out / item["ctp"]),
            "--output_dir",
            str(maps_dir),
            "--logging_file",
            "bundle/configs/logging_quiet.conf",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    assert computed.stdout.decode().strip() == ""  # the quiet logging: nothing but warnings and errors
    for name in ("cbf", "cbv", "mtt", "ttp", "tmax", "mip"):
        img = nib.load(maps_dir / f"{name}.nii.gz")
        np.testing.assert_allclose(img.affine, nib.load(out / item["cbf"]).affine)
    report = json.loads((maps_dir / "perfusion.json").read_text())
    assert len(report["aif_hu"]) == 20 and report["baseline_frames"] >= 2


def test_workflow_user_errors_print_one_line_not_a_traceback(tmp_path):
    run = [sys.executable, "-m", "monai.bundle", "run"]
    (tmp_path / "keep.txt").write_text("mine")
    refused = subprocess.run(
        [*run, "generating", "--config_file", "bundle/configs/synthetic.json", "--output_dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "output directory is not empty; pass overwrite=True (--overwrite true) to replace it."
    )
    assert "Traceback" not in refused.stderr
    missing = subprocess.run(
        [*run, "computing", "--config_file", "bundle/configs/perfusion.json", "--output_dir", str(tmp_path / "m")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == "error: ctp: no 4D series given; pass --ctp path/to/ctp.nii.gz."


def test_default_cohort_size_groups_and_split_are_what_the_docs_say():
    """The model card's and the README's cohort sizes, from the generator's own defaults (no simulation needed):
    40 patients split into training and validation, and a separate test cohort of 100 patients."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "synthetic.json"))
    n, n_test, seed = parser["n_patients"], parser["n_test"], parser["seed"]
    counts, test = cohort.group_counts(n), cohort.group_counts(n_test)
    ids = {g: [f"{g}{i}" for i in range(c)] for g, c in counts.items()}
    sizes = {k: len(v) for k, v in cohort.split_patients(ids, seed, cohort.SPLIT_FRACTIONS_WITHOUT_TEST).items()}
    card = (ROOT / "bundle" / "docs" / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    text = (
        f"{n} patients ({counts['LVO']} LVO, {counts['Non-LVO']} Non-LVO, {counts['WIS']} WIS) split "
        f"{sizes['training']} / {sizes['validation']} into training and validation, and a separate test cohort "
        f"of {n_test} patients ({test['LVO']} LVO, {test['Non-LVO']} Non-LVO, {test['WIS']} WIS)"
    )
    assert text in " ".join(card.split()) and text in " ".join(readme.split())
    assert (sizes["training"], sizes["validation"], sizes["test"], n_test) == (30, 10, 0, 100)


def test_a_separate_test_cohort_leaves_the_training_patients_unchanged(tmp_path, tiny_cohort):
    """``n_test``: that many more patients (every group) form the test split; the first ``n_patients`` are the
    same patients as without it (each patient is its own random stream), split into training and validation."""
    with_test = cohort.generate_cohort(tmp_path / "with_test", **{**TINY, "n_test": 4})
    splits, before = load_datalist(with_test), json.loads(tiny_cohort.read_text())
    test_ids = [i["id"] for i in splits["test"]]
    assert len(test_ids) == 4 and {i["group"] for i in splits["test"]} == {"LVO", "Non-LVO", "WIS"}
    old_ids = {i["id"] for s in ("training", "validation", "test") for i in before[s]}
    assert not set(test_ids) & old_ids
    assert {i["id"] for s in ("training", "validation") for i in splits[s]} == old_ids
    assert splits["training"] and splits["validation"]
    same = before["training"][0]
    again = next(i for s in ("training", "validation") for i in splits[s] if i["id"] == same["id"])
    a = nib.load(tiny_cohort.parent / same["cbf"]).get_fdata()
    np.testing.assert_array_equal(a, nib.load(again["cbf"]).get_fdata())
    assert json.loads(with_test.read_text())["generator"]["n_test"] == 4
