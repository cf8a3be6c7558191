"""Inference workflow, threshold baseline, clinical report, TorchScript export and the MONAI Label contract."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from workflows import refusal

from scripts.clinical.inference import load_model
from scripts.clinical.report import clinical_report, imaging_criteria
from scripts.clinical.studies import prepare_studies
from scripts.io import CTPDataError, save_nifti
from scripts.learning.engine.metrics import lesion_metrics
from scripts.learning.model.networks import create_network
from scripts.perfusion.brain_mask import brain_mask_from_mip
from scripts.perfusion.lesions import MIN_CORE_ML, MIN_LESION_ML, drop_small_lesions
from scripts.perfusion.thresholds import ThresholdSegmentation, threshold_labels
from scripts.simulation.cohort import generate_cohort

ROOT = Path(__file__).resolve().parents[1]
INFERENCE = "bundle/configs/inference.json"
WIDTH = json.loads((ROOT / INFERENCE).read_text())["encoder_width"]
"""The encoder width inference builds its network with: checkpoints made here must have it."""


def bundle(run_id: str, *args: str, config: str = "bundle/configs/inference.json", check: bool = True):
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        *(["run", run_id] if run_id != "ckpt_export" else [run_id]),
        "--config_file",
        config,
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": "bundle"}  # ckpt_export, unlike run, does not put the bundle on the path
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained SF(PMs+N) checkpoint at the inference config's width, in the training format
    ({'network': state_dict})."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    network = create_network("SF", "PMs+N", pretrained=False, encoder_width=WIDTH)
    torch.save({"network": network.state_dict()}, path)
    return path


def test_network_inference_writes_aligned_label_report_and_png(tiny_cohort, checkpoint, tmp_path):
    out = tmp_path / "inference"
    bundle(
        "inference",
        "--input",
        str(tiny_cohort),
        "--split",
        "test",
        "--checkpoint",
        str(checkpoint),
        "--output_dir",
        str(out),
        "--save_probabilities",
        "true",
    )
    items = json.loads(tiny_cohort.read_text())["test"]
    assert sorted(p.name for p in out.iterdir()) == sorted(i["id"] for i in items)  # no .partial left
    for item in items:
        folder = out / item["id"]
        label, cbf = nib.load(folder / "label.nii.gz"), nib.load(tiny_cohort.parent / item["cbf"])
        assert label.shape == cbf.shape and np.array_equal(label.affine, cbf.affine)
        assert label.get_data_dtype() == np.uint8 and label.header.get_zooms() == cbf.header.get_zooms()
        values = np.asarray(label.dataobj)
        assert set(np.unique(values)) <= {0, 1, 2}
        probabilities = nib.load(folder / "probabilities.nii.gz").get_fdata()
        assert probabilities.shape == (*cbf.shape, 3) and np.allclose(probabilities.sum(-1), 1, atol=1e-4)
        report = json.loads((folder / "report.json").read_text())
        voxel = float(np.prod(cbf.header.get_zooms())) / 1000
        assert report["volumes_ml"]["core"] == pytest.approx((values == 2).sum() * voxel, abs=0.01)
        assert report["volumes_ml"]["penumbra"] == pytest.approx((values == 1).sum() * voxel, abs=0.01)
        assert report["nihss"] == item["nihss"] and set(report["imaging_criteria_met"]) == {"DEFUSE-3", "EXTEND-IA"}
        assert report["quality"] is None and "curves" not in report  # maps given: their curves are not ours to judge
        assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = refusal("inference", INFERENCE, input=str(tiny_cohort), checkpoint=str(checkpoint), output_dir=str(out))
    assert again.startswith("error: ") and "outputs already exist" in again  # nothing overwritten silently


def test_threshold_labels_follow_the_documented_rules():
    cbf = np.full((4, 4, 1), 50.0, np.float32)
    tmax = np.full((4, 4, 1), 1.0, np.float32)
    tmax[0, :2] = 8.0  # hypoperfused
    cbf[0, 0] = 10.0  # 20 % of the normal median: core
    cbf[3, 3] = 5.0  # low flow without delay (CSF-like): not core
    brain = np.ones((4, 4, 1), bool)
    brain[3, 0] = False
    tmax[3, 0] = 9.0  # outside the brain: ignored
    label = threshold_labels(cbf, tmax, brain)
    assert label[0, 0, 0] == 2 and label[0, 1, 0] == 1 and label[3, 3, 0] == 0 and label[3, 0, 0] == 0
    assert (label > 0).sum() == 2
    scores = ThresholdSegmentation()(
        torch.as_tensor(np.stack([cbf, cbf, cbf, tmax]))[None], brain=torch.as_tensor(brain)[None, None]
    )
    assert torch.equal(scores.argmax(1)[0], torch.as_tensor(label, dtype=torch.long))
    with pytest.raises(ValueError, match="core_rcbf"):
        ThresholdSegmentation(core_rcbf=30)


def test_threshold_baseline_recovers_a_known_lesion_from_raw_ctp(tmp_path):
    """A clean synthetic LVO study given as a raw 4D series only: maps are computed, thresholds find the lesion
    (the ``separable`` lesion model, whose classes the thresholds separate by construction)."""
    datalist = generate_cohort(
        tmp_path / "clean",
        n_patients=3,
        size=96,
        slices=2,
        n_frames=50,
        noise_hu=1.0,
        seed=5,
        save_ctp=True,
        workers=1,
        lesion_model="separable",
    )
    content = json.loads(datalist.read_text())
    item = next(i for split in ("training", "validation", "test") for i in content[split] if i["group"] == "LVO")
    patient = tmp_path / "raw" / item["id"]
    patient.mkdir(parents=True)
    shutil.copy(datalist.parent / item["ctp"], patient / "ctp.nii.gz")
    out = tmp_path / "out"
    bundle(
        "inference",
        "--input",
        str(patient),
        "--output_dir",
        str(out),
        "--nihss",
        "12",
        "--min_core_ml",
        "0",  # this two-section study's whole core is 1.7 ml: kept core, so that the rule's core is what is tested
        config="['bundle/configs/inference.json','bundle/configs/inference_threshold.json']",
    )
    folder = out / item["id"]
    assert {p.name for p in (folder / "maps").iterdir()} >= {"cbf.nii.gz", "tmax.nii.gz", "mip.nii.gz"}
    pred = np.asarray(nib.load(folder / "label.nii.gz").dataobj)
    truth = nib.load(datalist.parent / item["label"])
    scores = lesion_metrics(pred, np.asarray(truth.dataobj), truth.header.get_zooms())
    assert scores["dice_hypoperfused"] > 0.7 and scores["dice_core"] > 0.4, scores
    report = json.loads((folder / "report.json").read_text())
    assert report["nihss"] == 12 and report["method"].startswith("threshold")
    assert report["quality"] == []  # maps computed here from a full acquisition: assessed, nothing flagged
    curves = report["curves"]  # and the curves they were computed with, for the reader (the montage plots them)
    assert curves["interval_s"] == 1.0 and len(curves["aif_hu"]) == len(curves["vof_hu"]) == 50
    assert max(curves["aif_hu"]) > 100 and np.argmax(curves["vof_hu"]) > np.argmax(curves["aif_hu"])


def test_lesion_islands_below_the_minimum_volume_are_dropped_alike_in_inference_and_evaluation():
    """The label post-processing of ``inference.json`` and of ``evaluate.json`` (over ``train.json``): a lesion
    island (penumbra and core together, face-connected in 3D) under ``min_lesion_ml`` is removed, a larger one
    keeps its voxels; then a core island under ``min_core_ml`` becomes penumbra and a larger one stays core. Both
    workflows take the same volumes and steps, as does the array function the voxel baseline and the benchmarks
    use."""

    def islands(configs: list[str], path: str):
        parser = ConfigParser()
        parser.read_config([str(ROOT / c) for c in configs])
        transforms = parser.get_parsed_content(path, instantiate=True).transforms
        steps = [t for t in transforms if type(t).__name__ in ("RemoveSmallObjectsd", "SmallCoresToPenumbrad")]
        assert [type(t).__name__ for t in steps] == ["RemoveSmallObjectsd", "SmallCoresToPenumbrad"]
        return steps, (parser.get_parsed_content("min_lesion_ml"), parser.get_parsed_content("min_core_ml"))

    inference, inference_ml = islands([INFERENCE], "postprocessing")
    evaluation, evaluation_ml = islands(
        ["bundle/configs/train.json", "bundle/configs/evaluate.json"], "validate#postprocessing"
    )
    assert inference_ml == evaluation_ml == (MIN_LESION_ML, MIN_CORE_ML) and MIN_CORE_ML > MIN_LESION_ML > 0
    spacing = (1.0, 1.0, 5.0)  # 5 ul voxels
    voxels, core_voxels = (int(round(ml * 1000 / 5)) for ml in inference_ml)  # 400 and 600
    label = np.zeros((1, 60, 60, 4), np.float32)
    label[0, :10, : voxels // 10 + 2, 0] = 1  # an island a little over the minimum (420 voxels) ...
    label[0, 2:4, 2:4, 0] = 2  # ... with a core of 4 voxels inside
    label[0, 20:22, 20:22, 1:3] = 2  # a small core island alone (8 voxels)
    label[0, 30:33, 30:33, 1] = 1  # a small penumbra island (9 voxels)
    label[0, 45:55, : voxels // 10 - 1, 3] = 1  # one voxel under the minimum: 390 voxels ...
    label[0, 45, voxels // 10 - 1 : voxels // 10 + 8, 3] = 1  # ... and 9 more along its edge
    label[0, 19:45, 36:60, 0] = 2  # a large lesion: a core of 624 voxels, a little over the core minimum ...
    label[0, 20:45, 36:60, 1:3] = 1  # ... under two sections of penumbra ...
    label[0, 22:26, 40:44, 2] = 2  # ... with a core island of 16 voxels in the upper one, touching penumbra only
    assert (label[0, :, :, 3] > 0).sum() == voxels - 1 and (label[0, :10, :, 0] > 0).sum() == voxels + 20
    assert (label == 2).sum() == 4 + 8 + core_voxels + 24 + 16
    affine = np.diag([*spacing, 1.0])
    expected = label.copy()
    expected[0, 20:, :36] = 0  # the islands under the lesion minimum
    expected[0, :, :, 3] = 0
    expected[0, 2:4, 2:4, 0] = 1  # the 4-voxel core: penumbra
    expected[0, 22:26, 40:44, 2] = 1  # the 16-voxel core island: penumbra, as its own island is large
    for steps in (inference, evaluation):
        data = {"pred": MetaTensor(torch.as_tensor(label), affine=torch.as_tensor(affine))}
        for step in steps:
            data = step(data)
        np.testing.assert_array_equal(np.asarray(data["pred"]), expected)
        assert data["pred"].affine.diag().tolist() == [*spacing, 1.0]
    np.testing.assert_array_equal(drop_small_lesions(label[0].astype(np.uint8), spacing), expected[0])


def test_report_volumes_and_criteria():
    label = np.zeros((10, 10, 2), np.uint8)
    label[:2, :5, 0] = 2  # 10 voxels core
    label[2:6, :, :] = 1  # 80 voxels penumbra
    tmax = np.where(label > 0, 7.0, 1.0).astype(np.float32)
    tmax[label == 2] = 11.0
    report = clinical_report(label, tmax, (2.0, 2.0, 5.0), nihss=14)  # 20 mm3 = 0.02 ml per voxel
    assert report["volumes_ml"] == {"core": 0.2, "penumbra": 1.6, "hypoperfused": 1.8}
    assert report["mismatch"] == {"volume_ml": 1.6, "ratio": 9.0}
    assert report["tmax_volumes_ml"]["Tmax>6s"] == 1.8 and report["tmax_volumes_ml"]["Tmax>10s"] == 0.2
    assert report["hypoperfusion_intensity_ratio"] == pytest.approx(0.2 / 1.8, abs=1e-3)
    assert imaging_criteria(20, 40, 3.0) == {"DEFUSE-3": True, "EXTEND-IA": True}
    assert imaging_criteria(20, 12, 1.6) == {"DEFUSE-3": False, "EXTEND-IA": True}  # ratio < 1.8, mismatch < 15
    assert imaging_criteria(80, 100, 2.25) == {"DEFUSE-3": False, "EXTEND-IA": False}  # core >= 70 ml
    assert imaging_criteria(0, 20, None)["DEFUSE-3"]  # no core: the ratio is infinite


PLAUSIBLE = {"cbf": 40.0, "cbv": 3.0, "ttp": 20.0, "tmax": 1.0, "mip": 60.0}  # brain tissue, DESIGN.md units


def _patient(folder: Path, shape=(32, 32, 2), **replace) -> Path:
    folder.mkdir(parents=True)
    for key, value in PLAUSIBLE.items():
        array = replace.get(key, np.full(shape, value, np.float32))
        save_nifti(folder / f"{key}.nii.gz", array, np.diag([1.0, 1.0, 5.0, 1.0]))
    return folder


def test_bad_inputs_stop_with_the_file_named_and_leave_nothing(tmp_path, checkpoint):
    out = tmp_path / "out"
    missing = _patient(tmp_path / "missing")
    (missing / "ttp.nii.gz").unlink()
    with pytest.raises(CTPDataError, match="no patient found"):
        prepare_studies(missing, out)
    with pytest.raises(CTPDataError, match="tmax.nii.gz has shape"):
        prepare_studies(_patient(tmp_path / "shape", tmax=np.zeros((32, 16, 2), np.float32)), out)
    nan = np.full((32, 32, 2), 20.0, np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(CTPDataError, match="cbv.nii.gz: contains 1 NaN"):
        prepare_studies(_patient(tmp_path / "nan", cbv=nan), out)
    with pytest.raises(CTPDataError, match="takes NIHSS but none is given"):
        prepare_studies(_patient(tmp_path / "nihss"), out, needs_nihss=True)
    raw = tmp_path / "raw"
    raw.mkdir()
    series = nib.Nifti1Image(np.zeros((16, 16, 2, 40), np.float32), np.eye(4))
    series.header.set_zooms((1.0, 1.0, 1.0, 0.0))  # no frame timing
    nib.save(series, raw / "ctp.nii.gz")
    with pytest.raises(CTPDataError, match="ctp.nii.gz: no frame interval"):
        prepare_studies(raw, out)
    save_nifti(raw / "ctp.nii.gz", np.zeros((16, 16, 2, 40), np.float32), np.eye(4), frame_interval=1.0)
    with pytest.raises(ValueError, match="ctp.nii.gz: no contrast bolus"):  # maps would be silently empty
        prepare_studies(raw, out)
    with pytest.raises(CTPDataError, match="does not match this network"):
        load_model(create_network("SF", "PMs+M+N", pretrained=False, encoder_width=WIDTH), checkpoint)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(CTPDataError, match="output folder is not writable"):
        prepare_studies(_patient(tmp_path / "ok"), tmp_path / "a_file" / "out")
    assert not out.exists() or not any(out.iterdir())  # no partial outputs
    refused = refusal(
        "inference", INFERENCE, input=str(tmp_path / "nan"), checkpoint=str(checkpoint), nihss=3, output_dir=str(out)
    )
    assert refused.startswith("error: ") and "cbv.nii.gz: contains 1 NaN" in refused
    refused = refusal(
        "inference", INFERENCE, input=str(tmp_path / "ok"), checkpoint=str(checkpoint), nihss=3, sw_batch_size="big",
        output_dir=str(tmp_path / "ok_out"),
    )  # fmt: skip
    assert refused == "error: sw_batch_size must be a positive integer or 'auto', got 'big'."


def test_unreadable_and_implausible_maps_are_refused_with_the_file_named(tiny_cohort, checkpoint, tmp_path):
    """A truncated map stops inference with one line naming it; maps scaled by a vendor's 100, negated, Tmax in
    ms or a MIP stored without its HU intercept are refused naming the map and what was found, unless the
    user overrides the check."""
    item = json.loads(tiny_cohort.read_text())["test"][0]
    source = tiny_cohort.parent / item["id"]

    def patient(name: str, key: str | None = None, change=None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for map_key in PLAUSIBLE:
            shutil.copy(source / f"{map_key}.nii.gz", folder / f"{map_key}.nii.gz")
        if key is not None:
            img = nib.load(folder / f"{key}.nii.gz")
            save_nifti(folder / f"{key}.nii.gz", change(np.asarray(img.dataobj, np.float32)), img.affine)
        return folder

    out = tmp_path / "out"
    truncated = patient("truncated")
    content = (truncated / "cbf.nii.gz").read_bytes()
    (truncated / "cbf.nii.gz").write_bytes(content[: len(content) // 2])
    result = bundle(
        "inference", "--input", str(truncated), "--checkpoint", str(checkpoint), "--nihss", "3",
        "--output_dir", str(out), check=False,
    )  # fmt: skip
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last.startswith("error: ") and "cbf.nii.gz: the voxel data cannot be read" in last
    cases = {
        "cbf_x100": ("cbf", lambda a: a * 100, r"cbf\.nii\.gz: cbf has a median of [\d.]+ ml/100 g/min"),
        "cbf_negated": ("cbf", lambda a: -a, r"cbf\.nii\.gz: cbf is negative in 100% of the brain"),
        "cbv_x10": ("cbv", lambda a: a * 10, r"cbv\.nii\.gz: cbv has a median of"),
        "tmax_ms": ("tmax", lambda a: a * 1000, r"tmax\.nii\.gz: tmax has a median of [\d.]+ s"),
        "tmax_negated": ("tmax", lambda a: -a, r"tmax\.nii\.gz: tmax is negative in \d+% of the brain"),
        "ttp_ms": ("ttp", lambda a: a * 1000, r"ttp\.nii\.gz: ttp has a median"),
        "mip_unsigned": ("mip", lambda a: a + 1024, r"mip\.nii\.gz: mip does not look like HU"),
    }
    for name, (key, change, message) in cases.items():
        folder = patient(name, key, change)
        with pytest.raises(CTPDataError, match=message + ".*--check_values false"):
            prepare_studies(folder, out)
        assert prepare_studies(folder, out, check_values=False)[0]["id"] == name  # the documented override
    assert prepare_studies(patient("untouched"), out)[0]["id"] == "untouched"


def test_ckpt_export_gives_torchscript_equal_to_eager(checkpoint, tmp_path):
    ts = tmp_path / "model.ts"
    bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(checkpoint),
        "--key_in_ckpt",
        "network",
        "--meta_file",
        "bundle/configs/metadata.json",
        config="bundle/configs/inference.json",
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]["num_channels"] == 4
    assert "network_def" in json.loads(extra["inference.json"])
    eager = create_network("SF", "PMs+N", pretrained=False, encoder_width=WIDTH)
    eager.load_state_dict(torch.load(checkpoint)["network"])
    eager.eval()
    image, nihss = torch.randn(2, 4, 64, 64), torch.tensor([[4.0], [17.0]])
    with torch.no_grad():
        assert torch.allclose(scripted(image, nihss), eager(image, nihss), atol=1e-5)


def test_monai_label_contract():
    """Load inference.json the way MONAI Label's bundle infer task does and check what it reads."""
    from monai.bundle import ConfigParser
    from monai.inferers import Inferer
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle/configs/inference.json"))
    parser.read_meta(str(ROOT / "bundle/configs/metadata.json"))
    parser["bundle_root"] = str(ROOT / "bundle")
    for key in ("network_def", "preprocessing", "postprocessing", "inferer"):
        assert key in parser, key
    network = parser.get_parsed_content("network_def")
    assert isinstance(parser.get_parsed_content("preprocessing"), Compose)
    assert isinstance(parser.get_parsed_content("postprocessing"), Compose)
    assert isinstance(parser.get_parsed_content("inferer"), Inferer)
    fmt = parser["_meta_"]["network_data_format"]
    image = torch.zeros(1, fmt["inputs"]["image"]["num_channels"], *fmt["inputs"]["image"]["spatial_shape"])
    with torch.no_grad():
        out = network(image, torch.tensor([[10.0]]))
    assert out.shape[1] == fmt["outputs"]["pred"]["num_channels"]
    assert list(fmt["inputs"]["image"]["channel_def"].values()) == ["cbf", "cbv", "ttp", "tmax"]


def test_deploy_app_runs_the_bundle_inference_without_the_sdk(tiny_cohort, tmp_path):
    """deploy/app.py's operator body (the SDK itself cannot be installed here) from another working directory."""
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from app import label_studies
    finally:
        sys.path.pop(0)
    patient = tiny_cohort.parent / json.loads(tiny_cohort.read_text())["test"][0]["id"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        done = label_studies(patient, tmp_path / "out", threshold=True, nihss=8)
    finally:
        os.chdir(cwd)
    assert done == [patient.name] and (tmp_path / "out" / patient.name / "report.json").is_file()


def test_fast_forward_options_keep_the_output():
    from scripts.learning.engine.precision import FastForward

    torch.manual_seed(1)
    network = create_network("EF", "PMs+N", pretrained=False).eval()
    image, nihss = torch.randn(1, 4, 64, 64), torch.tensor([[9.0]])
    with torch.no_grad():
        reference = network(image, nihss)
        channels_last = FastForward(network, channels_last=True)(image, nihss)
        bf16 = FastForward(network, precision="bf16")(image, nihss)
    assert torch.allclose(channels_last, reference, atol=1e-4)
    assert (
        bf16.dtype == torch.float32 and torch.corrcoef(torch.stack([bf16.flatten(), reference.flatten()]))[0, 1] > 0.99
    )
    with pytest.raises(ValueError, match="precision must be one of"):
        FastForward(network, precision="fp8")


def test_auto_slice_batch_fills_the_free_memory_and_keeps_the_output(monkeypatch):
    from scripts.learning.engine import inferers

    layer = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1)), torch.nn.ReLU())
    assert inferers.slice_bytes(layer, 4) == 2 * 8 * 64 * 64 * 4  # conv and ReLU outputs, containers not again
    memory = inferers.available_memory("cpu")
    assert 0 < memory <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    torch.manual_seed(0)
    network = create_network("EF", "PMs+N", pretrained=False).eval()
    batches: list[int] = []

    def recorded(image, nihss=None):
        batches.append(image.shape[0])
        return network(image, nihss)

    volume, nihss = torch.randn(1, 4, 64, 96, 5), torch.tensor([[7.0]])
    per_slice = inferers.slice_bytes(network, 4, nihss=nihss) * (64 * 96) / 64**2
    with torch.no_grad():
        reference = inferers.KeywordSliceInferer(roi_size=[-1, -1], spatial_dim=2)(volume, network, nihss=nihss)
        auto = inferers.KeywordSliceInferer(roi_size=[-1, -1], spatial_dim=2, sw_batch_size="auto")
        # the first study runs the 64x64 probe (batch 1) before its batches; the estimate is kept afterwards
        for free, expected, chosen in ((1e15, [1, 5], 5), (2 * 3.5 * per_slice, [3, 2], 3), (1.0, [1] * 5, 1)):
            monkeypatch.setattr(inferers, "available_memory", lambda device, free=free: int(free))
            batches.clear()
            output = auto(volume, recorded, nihss=nihss)
            assert batches == expected, (free, batches)
            assert auto.sw_batch_size == chosen and torch.allclose(output, reference, atol=1e-5)
    for wrong in ("big", 0, True):
        with pytest.raises(ValueError, match="sw_batch_size must be a positive integer or 'auto'"):
            inferers.KeywordSliceInferer(roi_size=[-1, -1], sw_batch_size=wrong)


def test_default_checkpoint_prefers_the_bundle_model(tmp_path):
    from scripts.clinical.inference import default_checkpoint

    run = tmp_path / "runs" / "default"
    assert default_checkpoint(tmp_path / "bundle", run) is None
    (run / "model").mkdir(parents=True)
    (run / "model" / "best_network_key_metric=-0.5.pt").write_bytes(b"")
    assert default_checkpoint(tmp_path / "bundle", run).endswith(
        "model/best_network_key_metric=-0.5.pt"
    )  # what training writes
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    (tmp_path / "bundle" / "models" / "model.pt").write_bytes(b"")
    assert default_checkpoint(tmp_path / "bundle", run) == str(tmp_path / "bundle" / "models" / "model.pt")


def test_failed_writes_leave_no_partial_patient_and_overwrite_is_atomic(tmp_path, monkeypatch):
    """SaveStudyOutputsd under run_inference: a failure while writing (the montage, simulated) or inside the
    network leaves no patient folder and no ``.partial``; ``overwrite`` replaces a finished patient in one
    rename, and a failure during an overwrite leaves the finished outputs as they were."""
    from scripts.clinical import inference

    source = _patient(tmp_path / "P1")
    study = {
        "id": "P1",
        "nihss": torch.tensor([4.0]),
        **{k: str(source / f"{k}.nii.gz") for k in ("cbf", "cbv", "ttp", "tmax", "mip")},
    }
    label = torch.zeros(1, 32, 32, 2, dtype=torch.uint8)
    label[0, 4:12, 4:12] = 1
    out = tmp_path / "out"

    from ignite.engine import Engine as IgniteEngine

    class Engine(IgniteEngine):  # an Ignite engine whose one iteration writes through the transform
        def __init__(self, step):
            super().__init__(lambda engine, batch: step())

        def run(self):
            return super().run([0])

    def write(overwrite: bool, pred: torch.Tensor = label):
        return lambda: inference.SaveStudyOutputsd(out, overwrite=overwrite)({"pred": pred, "study": study})

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    real_montage = inference.save_montage
    monkeypatch.setattr(inference, "save_montage", broken)
    with pytest.raises(OSError, match="disk full"):
        inference.run_inference(Engine(write(False)), out)
    assert sorted(p.name for p in out.iterdir()) == []  # nothing half-written

    def network_fails():
        raise RuntimeError("out of memory (simulated)")

    with pytest.raises(RuntimeError, match="out of memory"):
        inference.run_inference(Engine(network_fails), out)
    assert sorted(p.name for p in out.iterdir()) == []

    monkeypatch.setattr(inference, "save_montage", real_montage)
    assert inference.run_inference(Engine(write(False)), out) == ["P1"]
    first = json.loads((out / "P1" / "report.json").read_text())
    with pytest.raises(FileExistsError, match="outputs already exist"):
        inference.run_inference(Engine(write(False)), out)
    bigger = label.clone()
    bigger[0, 4:20, 4:20] = 1
    monkeypatch.setattr(inference, "save_montage", broken)
    with pytest.raises(OSError, match="disk full"):
        inference.run_inference(Engine(write(True, bigger)), out)
    assert sorted(p.name for p in out.iterdir()) == ["P1"]
    assert json.loads((out / "P1" / "report.json").read_text()) == first  # the finished outputs kept
    monkeypatch.setattr(inference, "save_montage", real_montage)
    assert inference.run_inference(Engine(write(True, bigger)), out) == ["P1"]
    assert sorted(p.name for p in out.iterdir()) == ["P1"]  # replaced, no .old or .partial left
    second = json.loads((out / "P1" / "report.json").read_text())
    assert second != first and nib.load(out / "P1" / "label.nii.gz").get_fdata().sum() == bigger.sum().item()


def _enlarged_patient(tiny_cohort: Path, folder: Path) -> Path:
    """The first test patient (64x64x2) in a 160x160x4 field of view: zeros around the maps, air in the MIP,
    one slice without brain above and below."""
    item = json.loads(tiny_cohort.read_text())["test"][0]
    folder.mkdir(parents=True)
    for key in PLAUSIBLE:
        image = nib.load(tiny_cohort.parent / item[key])
        array = np.full((160, 160, 4), -1000.0 if key == "mip" else 0.0, np.float32)
        array[40:104, 56:120, 1:3] = np.asarray(image.dataobj, dtype=np.float32)
        save_nifti(folder / f"{key}.nii.gz", array, image.affine)
    return folder


def test_the_network_sees_only_the_brain_and_labels_return_to_the_input_grid(tiny_cohort, checkpoint, tmp_path):
    """Brain crop on (default) against whole slices: the network runs on the brain's box only, slices without
    brain are skipped, and the label, probabilities and report come back on the input grid. (How closely a
    trained model's labels agree with whole-slice inference is measured by benchmarks/inference_agreement.py:
    an untrained network's are not a fair test of it.)"""
    from monai.bundle import ConfigParser

    patient = _enlarged_patient(tiny_cohort, tmp_path / "patient")
    outputs, shapes = {}, {}
    for crop in (True, False):
        parser = ConfigParser()
        parser.read_config(str(ROOT / "bundle/configs/inference.json"))
        out = tmp_path / f"crop_{crop}"
        parser.update(
            {
                "bundle_root": str(ROOT / "bundle"),
                "input": str(patient),
                "output_dir": str(out),
                "checkpoint": str(checkpoint),
                "nihss": 7,
                "brain_crop": crop,
                "save_probabilities": True,
            }
        )
        seen = shapes[crop] = []
        network = parser.get_parsed_content("network")
        network.register_forward_pre_hook(lambda _, args, seen=seen: seen.append(tuple(args[0].shape)))
        parser.get_parsed_content("evaluator").run()
        outputs[crop] = out / patient.name
        assert seen.pop(0) == (1, 4, 64, 64)  # sw_batch_size auto: the memory probe runs first, once per model
    assert {s[-2:] for s in shapes[False]} == {(160, 160)} and sum(s[0] for s in shapes[False]) == 4
    assert all(h < 160 and w < 160 and h % 32 == w % 32 == 0 for *_, h, w in shapes[True])
    assert sum(s[0] for s in shapes[True]) == 2  # the two slices without brain never reach the network
    labels = {c: np.asarray(nib.load(outputs[c] / "label.nii.gz").dataobj) for c in outputs}
    cbf = nib.load(patient / "cbf.nii.gz")
    brain = brain_mask_from_mip(np.asarray(nib.load(patient / "mip.nii.gz").dataobj, dtype=np.float32))
    for crop, label in labels.items():
        assert label.shape == cbf.shape and not label[~brain].any()
        probabilities = nib.load(outputs[crop] / "probabilities.nii.gz").get_fdata()
        assert np.allclose(probabilities.sum(-1), 1, atol=1e-4) and np.array_equal(probabilities.argmax(-1), label)
    report = json.loads((outputs[True] / "report.json").read_text())
    voxel_ml = float(np.prod(cbf.header.get_zooms())) / 1000
    assert report["volumes_ml"]["core"] == pytest.approx((labels[True] == 2).sum() * voxel_ml, abs=0.01)


def test_precision_auto_takes_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    from scripts.learning.engine import precision

    for native, expected in ((False, "fp32"), (True, "bf16")):  # e.g. AVX2 (emulated, 150x slower) / AMX
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert precision.resolve_precision("auto", "cpu") == expected
        assert precision.resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice stands
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        precision.resolve_precision("fp16", "cpu")


def test_a_study_without_brain_is_refused_before_the_network(tmp_path):
    air = np.full((32, 32, 2), -1000.0, np.float32)
    with pytest.raises(CTPDataError, match=r"no brain found in .*mip.nii.gz"):
        prepare_studies(_patient(tmp_path / "air", mip=air), tmp_path / "out", check_values=False)


class PointwiseNetwork(torch.nn.Module):
    """Logits from each voxel's own map values (a fixed 1x1 convolution): its labels do not depend on any
    neighbour, so they are the same with and without the brain crop unless the crop or its inversion moves them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 1)
        with torch.no_grad():  # channels cbf, cbv, ttp, tmax: penumbra where Tmax > 6 s, core where CBF is also low
            self.conv.weight.zero_()
            self.conv.weight[1, 3] = self.conv.weight[2, 3] = 1.0
            self.conv.weight[2, 0] = -0.2
            self.conv.bias.copy_(torch.tensor([0.0, -6.0, -2.0]))

    def forward(self, image: torch.Tensor, nihss: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(image)


@pytest.mark.parametrize("method", ["threshold", "pointwise network"])
def test_brain_crop_on_and_off_give_the_same_labels_voxel_for_voxel(tiny_cohort, tmp_path, method):
    """Voxel-wise methods must give identical labels with the brain crop and without it: the RAPID-like overlay
    (its normal-flow reference lies inside the brain, hence inside the crop) and a network whose output at a voxel
    reads only that voxel. An Invertd shifted by one voxel, or a crop that lost brain, fails this exactly."""
    from monai.bundle import ConfigParser

    patient = _enlarged_patient(tiny_cohort, tmp_path / "patient")
    configs = [str(ROOT / "bundle/configs/inference.json")]
    if method == "threshold":
        configs.append(str(ROOT / "bundle/configs/inference_threshold.json"))
    labels = {}
    for crop in (True, False):
        parser = ConfigParser()
        parser.read_config(configs)
        out = tmp_path / f"crop_{crop}"
        parser.update({"bundle_root": str(ROOT / "bundle"), "input": str(patient), "output_dir": str(out)})
        parser.update({"nihss": 7, "brain_crop": crop, "checkpoint": None, "sw_batch_size": 2})
        if method != "threshold":
            parser["network"] = PointwiseNetwork().eval()
        parser.get_parsed_content("evaluator").run()
        labels[crop] = np.asarray(nib.load(out / patient.name / "label.nii.gz").dataobj)
    assert labels[True].shape == (160, 160, 4)
    assert (labels[True] > 0).sum() > 20  # a lesion to compare, not two empty labels
    if method != "threshold":
        assert (labels[True] == 1).any() and (labels[True] == 2).any()
    np.testing.assert_array_equal(labels[True], labels[False])


class _WritesAMarker:
    """A pickled object that, if unpickled, runs a command: what a crafted checkpoint from elsewhere can hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_with_one_line(tmp_path):
    """``--checkpoint`` is read weights-only: a pickle that would run a command is refused with one line naming
    the file, and the command never runs."""
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"network": _WritesAMarker(marker)}, crafted)
    refused = refusal(
        "inference", INFERENCE, input=str(_patient(tmp_path / "ok")), checkpoint=str(crafted), nihss=3,
        output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    assert refused.startswith(f"error: {crafted}: refused: the checkpoint holds Python objects other than weights")
    assert "\n" not in refused and not marker.exists()


@pytest.mark.parametrize("hostile", ["../../x", "/abs", "two\nlines"])
def test_a_patient_id_that_is_not_a_folder_name_is_refused_before_anything_is_written(tmp_path, hostile):
    """Ids become folder and file names only after a check: a datalist id with a separator, an absolute id or
    one with a control character stops inference (and every datalist reader) with one line naming the entry,
    and nothing is written, inside the output folder or above it."""
    from scripts.io import load_datalist

    patient = _patient(tmp_path / "data" / "p1")
    item = {"id": hostile, **{k: f"p1/{k}.nii.gz" for k in PLAUSIBLE}, "nihss": 3}
    datalist = tmp_path / "data" / "datalist.json"
    datalist.write_text(json.dumps({"test": [item]}))
    out = tmp_path / "a" / "b" / "out"
    before = {p for p in tmp_path.rglob("*")}
    refused = refusal("inference", INFERENCE, input=str(datalist), nihss=3, checkpoint=None, output_dir=str(out))
    assert refused == f"error: {datalist} test[0]: patient id {hostile!r} cannot be a folder name " + (
        "(it holds a control character)." if "\n" in hostile else "(it holds a path separator)."
    )
    made = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out) and p not in out.parents}
    assert made == before  # nothing outside the output folder (which inference creates first)
    assert not out.exists() or not any(out.rglob("*.nii.gz"))
    full = {"id": hostile, "group": "LVO", **{k: f"p1/{k}.nii.gz" for k in (*PLAUSIBLE, "label")}, "nihss": 3}
    (patient / "label.nii.gz").write_bytes((patient / "cbf.nii.gz").read_bytes())
    datalist.write_text(json.dumps({"training": [full]}))
    with pytest.raises(CTPDataError, match=r"training\[0\]: patient id .* cannot be a folder name"):
        load_datalist(datalist)  # training, evaluation, the voxel baseline and scoring read ids through it


THRESHOLD_CONFIGS = [INFERENCE, "bundle/configs/inference_threshold.json"]


def _inference(tiny_cohort: Path, out: Path, **overrides):
    """The threshold inference workflow on every patient of the tiny cohort, built in this process."""
    from workflows import at_root

    from scripts.cli import bundle_workflow

    with at_root():
        settings = {"input": str(tiny_cohort), "split": "all", "output_dir": str(out), "montage": True}
        return bundle_workflow("inference", THRESHOLD_CONFIGS, workflow_type="infer", **{**settings, **overrides})


def test_sigterm_stops_inference_between_patients_and_resume_finishes(tiny_cohort, tmp_path, capfd):
    """SIGTERM (sent to this process while the second patient is written) stops inference at that patient's
    end: status 143, one line, the two finished patients complete, nothing partial; ``--resume true`` then
    labels the rest only, and the outputs equal an uninterrupted run's. The handler is gone afterwards."""
    import signal

    from ignite.engine import Events
    from workflows import at_root

    ids = sorted(i["id"] for s in ("training", "validation", "test") for i in json.loads(tiny_cohort.read_text())[s])
    out = tmp_path / "stopped"
    workflow = _inference(tiny_cohort, out)
    evaluator = workflow.parser.get_parsed_content("evaluator")
    evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: os.kill(os.getpid(), signal.SIGTERM))
    with at_root(), pytest.raises(SystemExit) as stop:
        workflow.run()
    assert stop.value.code == 128 + signal.SIGTERM
    assert "inference stopped by SIGTERM at iteration 2, epoch 1; finished patients are kept" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    done = sorted(p.name for p in out.iterdir())
    assert len(done) == 2 and set(done) < set(ids)  # two finished patients, no .partial folder
    assert all((out / pid / "report.json").is_file() and (out / pid / "report.png").is_file() for pid in done)
    mtimes = {pid: (out / pid / "label.nii.gz").stat().st_mtime_ns for pid in done}
    with at_root():
        _inference(tiny_cohort, out, resume=True).run()
    assert sorted(p.name for p in out.iterdir()) == ids
    assert {pid: (out / pid / "label.nii.gz").stat().st_mtime_ns for pid in done} == mtimes  # not redone
    whole = tmp_path / "whole"
    with at_root():
        _inference(tiny_cohort, whole).run()
    for pid in ids:
        report = json.loads((out / pid / "report.json").read_text())
        assert report == json.loads((whole / pid / "report.json").read_text())


def test_a_full_disk_stops_inference_with_one_line_and_keeps_the_finished_patients(tiny_cohort, tmp_path):
    """Inference into a real filesystem that fills up (a tmpfs sized for about two patients): one line naming
    the folder and the patient, the patients before it complete and loadable, nothing half-written."""
    from conftest import small_filesystem

    reference = tmp_path / "reference"
    with __import__("workflows").at_root():
        _inference(tiny_cohort, reference).run()
    sizes = [sum(-(-f.stat().st_size // 4096) * 4 for f in p.iterdir()) for p in sorted(reference.iterdir())]
    out = tmp_path / "small"
    with small_filesystem(out, sizes[0] + sizes[1] + sizes[2] // 2):
        with __import__("workflows").at_root():
            refused = refusal("inference", THRESHOLD_CONFIGS, input=str(tiny_cohort), split="all", output_dir=str(out))
        done = sorted(p.name for p in out.iterdir())
        assert 1 <= len(done) <= 2 and not any(name.startswith(".") for name in done), done
        assert refused.startswith(f"error: {out}: patient ") and "outputs could not be written" in refused
        assert "(no space left on the device)" in refused and "rerun with --resume true" in refused
        assert "\n" not in refused
        for pid in done:
            assert np.array_equal(
                nib.load(out / pid / "label.nii.gz").get_fdata(), nib.load(reference / pid / "label.nii.gz").get_fdata()
            )
            assert json.loads((out / pid / "report.json").read_text()) == json.loads(
                (reference / pid / "report.json").read_text()
            )


def test_the_inference_config_runs_a_model_with_the_colour_windows_it_was_trained_with(tmp_path):
    torch.manual_seed(0)
    trained = create_network("SF", "PMs+N", pretrained=False, encoder_width=WIDTH, windows={"cbf": (0, 40)}).eval()
    path = tmp_path / "model.pt"
    torch.save({"network": trained.state_dict()}, path)
    parser = ConfigParser()
    parser.read_config(str(ROOT / INFERENCE))  # its network_def passes no windows: the registry's CBF 0-80
    parser["bundle_root"] = str(ROOT / "bundle")
    configured = parser.get_parsed_content("network_def", instantiate=True)
    assert configured.encoding.windows()["cbf"] == (0.0, 80.0)
    network = load_model(configured, path)
    assert network.encoding.windows()["cbf"] == (0.0, 40.0)
    image, nihss = torch.rand(1, 4, 64, 64) * torch.tensor([60.0, 5.0, 30.0, 10.0]).view(1, 4, 1, 1), torch.ones(1, 1)
    with torch.no_grad():
        torch.testing.assert_close(network(image, nihss=nihss), trained(image, nihss=nihss))
