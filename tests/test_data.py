import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.io import CTPDataError, check_patient, load_ctp, load_datalist, save_nifti
from scripts.perfusion.maps import compute_maps


@pytest.fixture()
def cohort_copy(tiny_cohort, tmp_path) -> Path:
    """A writable copy of the tiny cohort (tests break it)."""
    dst = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, dst)
    return dst / "datalist.json"


def edit_first_item(datalist: Path, **changes) -> dict:
    content = json.loads(datalist.read_text())
    content["training"][0].update(changes)
    for key, value in changes.items():
        if value is None:
            del content["training"][0][key]
    datalist.write_text(json.dumps(content))
    return content["training"][0]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tmax": None}, "missing key\\(s\\) tmax"),
        ({"nihss": 43}, "nihss must be an integer 0-42"),
        ({"nihss": 7.5}, "nihss must be an integer 0-42"),
        ({"group": "ICH"}, "group must be one of"),
        ({"cbv": "nowhere/cbv.nii.gz"}, "cbv file not found: .*nowhere/cbv.nii.gz"),
    ],
)
def test_bad_datalist_items_name_the_field(cohort_copy, changes, message):
    edit_first_item(cohort_copy, **changes)
    with pytest.raises(CTPDataError, match=message) as err:
        load_datalist(cohort_copy)
    assert "datalist.json training[0]" in str(err.value)


def test_duplicate_patient_and_bad_json(cohort_copy):
    content = json.loads(cohort_copy.read_text())
    content["test"].append(content["training"][0])
    cohort_copy.write_text(json.dumps(content))
    with pytest.raises(CTPDataError, match="appears in both training and test"):
        load_datalist(cohort_copy)
    cohort_copy.write_text("{not json")
    with pytest.raises(CTPDataError, match="not valid JSON"):
        load_datalist(cohort_copy)
    with pytest.raises(CTPDataError, match="datalist not found"):
        load_datalist(cohort_copy.parent / "missing.json")


def test_patient_maps_must_share_shape_affine_and_be_finite(cohort_copy):
    item = load_datalist(cohort_copy)["training"][0]
    cbf = nib.load(item["cbf"])
    data, affine = cbf.get_fdata(), cbf.affine
    save_nifti(item["ttp"], data[:, :-1], affine)
    with pytest.raises(CTPDataError, match=f"patient {item['id']}: .*ttp.nii.gz has shape"):
        check_patient(item)
    shifted = affine.copy()
    shifted[0, 3] += 5
    save_nifti(item["ttp"], data, shifted)
    with pytest.raises(CTPDataError, match="ttp.nii.gz has a different affine"):
        check_patient(item)
    save_nifti(item["ttp"], data, affine)
    broken = data.copy()
    broken[3, 3, 0] = np.inf
    save_nifti(item["tmax"], broken, affine)
    with pytest.raises(CTPDataError, match="tmax.nii.gz: contains 1 NaN or infinite"):
        check_patient(item)
    save_nifti(item["tmax"], data, affine)
    save_nifti(item["label"], np.full(data.shape, 3, np.uint8), affine)
    with pytest.raises(CTPDataError, match="label values must be 0, 1, 2; found \\[3\\]"):
        check_patient(item)


def test_raw_series_checks_name_the_file(tmp_path):
    affine = np.eye(4)
    short = save_nifti(tmp_path / "short.nii.gz", np.zeros((4, 4, 1, 5), np.int16), affine, frame_interval=1.0)
    with pytest.raises(CTPDataError, match="short.nii.gz: 5 frames is too few"):
        load_ctp(short)
    untimed = tmp_path / "untimed.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 1, 20), np.int16), affine), untimed)
    img = nib.load(untimed)
    img.header.set_zooms((1, 1, 1, 0))
    nib.save(img, untimed)
    with pytest.raises(CTPDataError, match="untimed.nii.gz: no frame interval"):
        load_ctp(untimed)
    flat = save_nifti(tmp_path / "flat.nii.gz", np.zeros((4, 4, 20), np.int16), affine)
    with pytest.raises(CTPDataError, match="flat.nii.gz: a CTP series must be 4D"):
        load_ctp(flat)
    nan = save_nifti(tmp_path / "nan.nii.gz", np.full((4, 4, 1, 20), np.nan, np.float32), affine, frame_interval=1.0)
    with pytest.raises(CTPDataError, match="nan.nii.gz: contains NaN"):
        load_ctp(nan)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a nifti")
    with pytest.raises(CTPDataError, match="garbage.nii.gz: not a readable NIfTI"):
        load_ctp(garbage)


def test_compute_maps_keeps_existing_maps_unless_overwrite(tiny_cohort, tmp_path):
    item = load_datalist(tiny_cohort)["training"][0]
    written = compute_maps(item["ctp"], tmp_path / "maps")
    assert set(written) == {"cbf", "cbv", "mtt", "ttp", "tmax", "mip"}
    with pytest.raises(FileExistsError, match="maps already exist"):
        compute_maps(item["ctp"], tmp_path / "maps")
    compute_maps(item["ctp"], tmp_path / "maps", overwrite=True)
