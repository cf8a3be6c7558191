"""DICOM in and out: CTP studies as scanners write them (layouts, transfer syntaxes, timing, geometry), the
refusals, and the DICOM SEG / SR / SC outputs read back against the NIfTI outputs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.fileset import FileSet
from test_inference import ROOT, bundle
from workflows import refusal, run_in_process

from scripts.clinical.dicom_outputs import read_segmentation, sr_quality_flags, sr_volumes
from scripts.clinical.report import radiological
from scripts.clinical.studies import find_studies
from scripts.io import CTPDataError, save_json, save_nifti
from scripts.io.dicom import read_ctp_dicom, read_pixels
from scripts.io.dicom_convert import convert_dicom_study
from scripts.perfusion.maps import compute_maps
from scripts.simulation.dicom_study import TRANSFER_SYNTAXES, write_ctp_dicom, write_map_series
from scripts.simulation.motion import move_volume


def make_ctp(folder: Path, shape=(16, 12, 4, 12), affine=None, times=None, seed=0) -> Path:
    """A 4D HU series (integers, -1024..3071) with an optional uneven-timing sidecar."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-1024, 3072, size=shape).astype(np.int16)
    affine = np.diag([0.8, 0.9, 5.0, 1.0]) if affine is None else affine
    path = save_nifti(folder / "ctp.nii.gz", data, affine, frame_interval=1.0)
    if times is not None:
        save_json(folder / "ctp.json", {"FrameTimesStart": list(times)})
    return path


def files_of(study: Path) -> list[Path]:
    return sorted(study.rglob("*.dcm"))


def edit(path: Path, **attributes) -> None:
    ds = pydicom.dcmread(path)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.save_as(path)


@pytest.mark.parametrize("layout", ["single", "per-frame"])
@pytest.mark.parametrize("syntax", list(TRANSFER_SYNTAXES))
def test_dicom_ctp_round_trips_every_layout_and_transfer_syntax(tmp_path, syntax, layout):
    ctp = make_ctp(tmp_path, shape=(64, 48, 3, 10))  # JPEG 2000 needs >= 2^5 pixels a side
    study = tmp_path / "dicom"
    info = write_ctp_dicom(ctp, study, layout=layout, transfer_syntax=syntax)
    files = files_of(study)
    assert info["files"] == len(files) == 3 * 10
    assert {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files} == {
        TRANSFER_SYNTAXES[syntax]
    }
    series_count = len({pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files})
    assert series_count == (1 if layout == "single" else 10)
    series = read_ctp_dicom(study)
    reference = nib.load(ctp)
    assert np.array_equal(series.array, np.asarray(reference.dataobj, dtype=np.float32))
    assert np.allclose(series.affine, reference.affine, atol=1e-4)
    assert np.allclose(series.frame_times, np.arange(10), atol=1e-6)
    references = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.reference_files]
    assert [r.AcquisitionNumber for r in references] == [1, 1, 1]  # the first frame, one image per slice
    assert [float(r.SliceLocation) for r in references] == sorted(float(r.SliceLocation) for r in references)


def test_jpeg_lossless_first_order_from_another_encoder_decodes():
    """Transfer syntax 1.2.840.10008.1.2.4.70 (what most CT scanners write), encoded by GDCM (a file shipped
    with pydicom), decodes through the bundle's reader to the same pixels as its RLE twin."""
    jpeg = get_testdata_file("SC_rgb_jpeg_gdcm.dcm")
    assert pydicom.dcmread(jpeg).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    assert np.array_equal(read_pixels(jpeg), read_pixels(get_testdata_file("SC_rgb_rle.dcm")))


def test_uneven_times_and_each_time_source(tmp_path):
    times = [0, 1, 2, 3, 4, 5, 6.5, 8, 10, 12, 15, 18]
    ctp = make_ctp(tmp_path, times=times)
    for tags in (["AcquisitionDateTime"], ["AcquisitionTime"], ["ContentTime"], ["TriggerTime"]):
        study = tmp_path / tags[0]
        write_ctp_dicom(ctp, study, time_tags=tags)
        series = read_ctp_dicom(study)
        assert series.time_source == tags[0] and np.allclose(series.frame_times, times, atol=1e-3)
    study = tmp_path / "series-start"  # AcquisitionDateTime is the series' start on every image: skipped
    write_ctp_dicom(ctp, study, time_tags=["AcquisitionDateTime", "AcquisitionTime"])
    for path in files_of(study):
        edit(path, AcquisitionDateTime="20260101080000.000000")
    series = read_ctp_dicom(study)
    assert series.time_source == "AcquisitionTime" and np.allclose(series.frame_times, times, atol=1e-3)
    study = tmp_path / "index"
    write_ctp_dicom(ctp, study, time_tags=["TemporalPositionIndex"])
    with pytest.raises(CTPDataError, match="only TemporalPositionIndex.*frame_interval"):
        read_ctp_dicom(study)
    assert np.allclose(read_ctp_dicom(study, frame_interval=2.0).frame_times, np.arange(12) * 2.0)
    study = tmp_path / "none"
    write_ctp_dicom(ctp, study, time_tags=[])
    with pytest.raises(CTPDataError, match=r"IM\d+_\d+\.dcm: no usable acquisition time"):
        read_ctp_dicom(study)


def _ge_cine(path: Path, mid_scan_time: float, as_text: bool = False) -> None:
    """Rewrite one image as a GE LightSpeed cine run stores it: the run's start in AcquisitionTime and
    ContentTime on every frame, the frame's time only in GEMS_ACQU_01 (0019,xx24) "Mid Scan Time [sec]", a DS
    element holding a binary little-endian double (or DS text, as a rewriting tool may leave it)."""
    import struct

    from pydicom.dataelem import RawDataElement

    ds = pydicom.dcmread(path)
    ds.AcquisitionTime = ds.ContentTime = "080000.000000"
    tag = ds.private_block(0x0019, "GEMS_ACQU_01", create=True).get_tag(0x24)
    value = f"{mid_scan_time:.4f}".encode() if as_text else struct.pack("<d", mid_scan_time)
    value += b" " * (len(value) % 2)
    ds[tag] = RawDataElement(tag, "DS", len(value), value, 0, False, True)
    ds.save_as(path)


@pytest.mark.parametrize("as_text", [False, True], ids=["binary-double", "ds-text"])
def test_a_ge_cine_series_is_timed_by_its_mid_scan_time(tmp_path, as_text):
    """GE cine CTP: constant AcquisitionTime/ContentTime (the former reader refused it: "duplicate image"); the
    frame times come from the private Mid Scan Time, uneven steps kept, the constant standard times ignored."""
    times = [0, 1, 2, 3, 4, 5, 6.5, 8, 10, 12, 15, 18]
    ctp = make_ctp(tmp_path, times=times)
    study = tmp_path / "ge"
    write_ctp_dicom(ctp, study, time_tags=["AcquisitionTime", "ContentTime"])
    reference = read_ctp_dicom(study)
    for path in files_of(study):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        frame = next(t for t in range(len(times)) if abs(_frame_seconds(header) - times[t]) < 0.5)
        _ge_cine(path, 1234.5 + times[frame], as_text)
    series = read_ctp_dicom(study)
    assert series.time_source == "GEMidScanTime"
    assert np.allclose(series.frame_times, times, atol=1e-6)
    assert np.array_equal(series.array, reference.array) and np.allclose(series.affine, reference.affine)
    for path in files_of(study):  # without the private time, the constant standard times cannot order frames
        ds = pydicom.dcmread(path)
        del ds[ds.private_block(0x0019, "GEMS_ACQU_01").get_tag(0x24)]
        ds.save_as(path)
    with pytest.raises(CTPDataError, match="duplicate image"):
        read_ctp_dicom(study)


def _frame_seconds(header) -> float:
    """Seconds after the study start (08:00:00) of an image written by write_ctp_dicom."""
    t = str(header.AcquisitionTime)
    return int(t[:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:]) - 8 * 3600


def test_a_malformed_ge_mid_scan_time_is_refused_with_the_file_named(tmp_path):
    ctp = make_ctp(tmp_path)
    study = tmp_path / "ge"
    write_ctp_dicom(ctp, study, time_tags=["AcquisitionTime"])
    first = files_of(study)[0]
    from pydicom.dataelem import RawDataElement

    for path in files_of(study):
        _ge_cine(path, 1.0 + files_of(study).index(path))
    ds = pydicom.dcmread(first)
    tag = ds.private_block(0x0019, "GEMS_ACQU_01").get_tag(0x24)
    ds[tag] = RawDataElement(tag, "DS", 4, b"\x01\x02\x03\x04", 0, False, True)
    ds.save_as(first)
    with pytest.raises(CTPDataError, match=rf"{first.name}: GEMidScanTime .* is not a valid time"):
        read_ctp_dicom(study)


def test_oblique_grid_is_read_exactly(tmp_path):
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, np.cos(angle / 2), -np.sin(angle / 2)], [0, np.sin(angle / 2), np.cos(angle / 2)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.75, 4.0])
    affine[:3, 3] = [-40, 30, 12]
    ctp = make_ctp(tmp_path, affine=affine)
    write_ctp_dicom(ctp, tmp_path / "dicom")
    series = read_ctp_dicom(tmp_path / "dicom")
    assert np.allclose(series.affine, affine, atol=1e-4)
    assert np.array_equal(series.array, np.asarray(nib.load(ctp).dataobj, dtype=np.float32))


def on_grid_of(values: np.ndarray, affine: np.ndarray, reference_affine: np.ndarray, shape) -> np.ndarray:
    """``values`` (a 3D volume with ``affine``) on the voxel grid of ``reference_affine`` and ``shape``: the two
    grids must be the same points in space, up to axis order and direction (a signed permutation of whole voxels),
    else the assertion fails."""
    to_values = np.linalg.inv(affine) @ reference_affine
    assert np.allclose(to_values, np.round(to_values), atol=1e-3), np.round(to_values, 4)
    index = np.indices(shape).reshape(3, -1)
    mapped = np.round(to_values[:3, :3] @ index + to_values[:3, 3:]).astype(int)
    assert all((0 <= m).all() and (m < n).all() for m, n in zip(mapped, values.shape, strict=True))
    return values[tuple(mapped)].reshape(shape)


GEOMETRIES = {
    "axial": np.diag([0.7, 0.75, 4.0]),
    "flipped rows and slices": np.diag([-0.7, 0.75, -4.0]),
    "oblique": (  # 20° about z after 10° about x
        np.array([[np.cos(0.349), -np.sin(0.349), 0], [np.sin(0.349), np.cos(0.349), 0], [0, 0, 1]])
        @ np.array([[1, 0, 0], [0, np.cos(0.175), -np.sin(0.175)], [0, np.sin(0.175), np.cos(0.175)]])
        @ np.diag([0.7, 0.75, 4.0])
    ),
}


@pytest.mark.parametrize("layout", ["single", "per-frame"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_geometry_agrees_with_dcm2niix(tmp_path, geometry, layout):
    """The reader's affine and voxel order against dcm2niix (Rorden's converter, the Debian package), which shares
    no code with the bundle: a series the bundle writes from a NIfTI must come back, through dcm2niix, as the
    same values at the same points in space as the NIfTI, and through the bundle's reader as well. A convention
    error that the writer and the reader share (RAS/LPS, row order, slice order) cancels out in a round trip;
    here dcm2niix would disagree with the source."""
    if shutil.which("dcm2niix") is None:
        from conftest import missing_engine

        missing_engine("dcm2niix is not installed (Debian package dcm2niix)")
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = GEOMETRIES[geometry], [-40.0, 30.0, 12.0]
    ctp = make_ctp(tmp_path, shape=(16, 12, 4, 10), affine=affine)
    source = np.asarray(nib.load(ctp).dataobj, dtype=np.float32)
    write_ctp_dicom(ctp, tmp_path / "dicom", layout=layout)
    out = tmp_path / "dcm2niix"
    out.mkdir()
    command = ["dcm2niix", "-z", "n", "-b", "n", "-f", "%s", "-o", str(out), str(tmp_path / "dicom")]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    converted = {int(p.name.split(".")[0].split("_")[0]): nib.load(p) for p in out.glob("*.nii")}
    if layout == "single":  # one 4D series
        frames = [np.asarray(converted[1].dataobj, dtype=np.float32)[..., t] for t in range(10)]
        affines = [converted[1].affine] * 10
    else:  # one 3D series per frame, numbered from 1
        frames = [np.asarray(converted[t + 1].dataobj, dtype=np.float32) for t in range(10)]
        affines = [converted[t + 1].affine for t in range(10)]
    for t in range(10):
        assert np.array_equal(on_grid_of(frames[t], affines[t], affine, source.shape[:3]), source[..., t]), t
    series = read_ctp_dicom(tmp_path / "dicom")
    first = on_grid_of(frames[0], affines[0], series.affine, series.array.shape[:3])
    assert np.array_equal(first, series.array[..., 0])


@pytest.fixture
def study(tmp_path) -> Path:
    ctp = make_ctp(tmp_path)
    write_ctp_dicom(ctp, tmp_path / "dicom")
    return tmp_path / "dicom"


def _image(study: Path, frame: int, slice_: int) -> Path:
    return next(study.rglob(f"IM{frame:03d}_{slice_:03d}.dcm"))


def test_refuses_tilt_with_the_file_named(study):
    edit(_image(study, 0, 1), GantryDetectorTilt=15)
    with pytest.raises(CTPDataError, match=r"IM000_001\.dcm: gantry tilt of 15 degrees"):
        read_ctp_dicom(study)


def test_refuses_sheared_slices(study):
    for frame in range(12):  # a tilted acquisition: each slice's origin moves in-plane
        path = _image(study, frame, 2)
        position = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        edit(path, ImagePositionPatient=[position[0], position[1] + 2.0, position[2]])
    with pytest.raises(CTPDataError, match=r"IM\d+_002\.dcm: slice origin is shifted 2\.00 mm in-plane"):
        read_ctp_dicom(study)


def test_refuses_mixed_sizes(study):
    edit(_image(study, 3, 0), PixelSpacing=[0.5, 0.5])
    with pytest.raises(CTPDataError, match=r"IM003_000\.dcm: image size .* differs .*mixed series"):
        read_ctp_dicom(study)


def test_refuses_a_missing_slice_in_a_frame(study):
    _image(study, 5, 2).unlink()
    with pytest.raises(CTPDataError, match="has 11 images, other slices 12: a frame is missing this slice"):
        read_ctp_dicom(study)


def test_refuses_a_missing_slice_position(study):
    for frame in range(12):
        _image(study, frame, 1).unlink()
    with pytest.raises(CTPDataError, match=r"slice gap 10 mm .* a slice position is missing"):
        read_ctp_dicom(study)


def test_refuses_duplicates(study):
    original = _image(study, 4, 1)
    copy = original.with_name("copy.dcm")
    shutil.copy(original, copy)
    edit(copy, SOPInstanceUID=pydicom.uid.generate_uid())
    with pytest.raises(CTPDataError, match="duplicate image"):
        read_ctp_dicom(study)


def test_refuses_non_ct(study):
    edit(_image(study, 0, 0), Modality="MR")
    with pytest.raises(CTPDataError, match=r"IM000_000\.dcm: modality MR"):
        read_ctp_dicom(study)


def test_refuses_a_malformed_time(study):
    edit(_image(study, 6, 0), AcquisitionDateTime="garbage")
    with pytest.raises(CTPDataError, match=r"IM006_000\.dcm: AcquisitionDateTime 'garbage' is not a valid time"):
        read_ctp_dicom(study)


def test_refuses_an_image_far_from_its_frame(study):
    edit(_image(study, 6, 0), AcquisitionDateTime="2026")  # valid DICOM (a year), 8 h before the others
    with pytest.raises(CTPDataError, match=r"IM006_000\.dcm: its AcquisitionDateTime is .* cannot be assembled"):
        read_ctp_dicom(study)


def test_refuses_multi_frame_images(study):
    edit(_image(study, 2, 2), NumberOfFrames=4)
    with pytest.raises(CTPDataError, match=r"IM002_002\.dcm: a multi-frame \(Enhanced\) CT image"):
        read_ctp_dicom(study)


def test_refuses_a_truncated_file(study):
    path = _image(study, 7, 3)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CTPDataError, match=r"IM007_003\.dcm: "):
        read_ctp_dicom(study)


@pytest.mark.parametrize("syntax", ["jpeg-lossless", "jpeg-ls"])
def test_refuses_a_compressed_image_whose_stream_is_cut_short(tmp_path, syntax):
    """A well-formed file whose JPEG codestream lost its end: the decoders return garbage without an error
    (thousands of HU off), so the reader checks the end marker and names the file."""
    study = tmp_path / "study"
    write_ctp_dicom(make_ctp(tmp_path / "ctp"), study, layout="per-frame", transfer_syntax=syntax)
    path = files_of(study)[5]
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds.save_as(path)
    with pytest.raises(CTPDataError, match=rf"{path.name}: cannot decode the pixel data .*cut short"):
        read_ctp_dicom(study)


def test_skips_non_dicom_files_and_reads_a_dicomdir(study, tmp_path):
    (study / "README.txt").write_text("exported by PACS")
    reference = read_ctp_dicom(study)
    media = FileSet()  # DICOM media as PACS export it: a DICOMDIR and extension-less files in subfolders
    for path in files_of(study):
        media.add(path)
    media.write(tmp_path / "media")
    series = read_ctp_dicom(tmp_path / "media" / "DICOMDIR")
    assert np.array_equal(series.array, reference.array) and np.allclose(series.affine, reference.affine)
    assert find_studies(tmp_path / "media" / "DICOMDIR") == [{"id": "media", "ctp": str(tmp_path / "media")}]


def test_converter_writes_the_datalist_format(study, tmp_path):
    written = convert_dicom_study(study, tmp_path / "patient")
    converted = nib.load(written["ctp"])
    sidecar = json.loads(Path(written["sidecar"]).read_text())
    source = nib.load(tmp_path / "ctp.nii.gz")
    assert np.array_equal(np.asarray(converted.dataobj), np.asarray(source.dataobj))
    assert np.allclose(converted.affine, source.affine, atol=1e-4)
    assert sidecar["FrameTimesStart"] == list(range(12)) and len(sidecar["dicom"]["reference_files"]) == 4


def test_radiological_display_puts_the_patients_right_on_the_left():
    volume = np.zeros((4, 3, 2))
    volume[3, 0, 0] = 1  # RAS affine: the largest x is the patient's right, the smallest y posterior
    shown = radiological(volume, np.diag([1.0, 1.0, 1.0, 1.0]))
    assert shown[0, 2, 0] == 1  # first column (screen left), last row (screen bottom = posterior)
    flipped = radiological(volume[::-1], np.diag([-1.0, 1.0, 1.0, 1.0]))  # LAS storage: same picture
    assert np.array_equal(flipped, shown)


def test_dicom_study_to_seg_and_report_end_to_end(tiny_cohort, tmp_path):
    """A synthetic study as JPEG Lossless DICOM (series per time point) -> inference -> DICOM SEG equal voxel
    for voxel to label.nii.gz in the input's geometry, SR volumes equal to report.json, maps identical to
    the NIfTI path's."""
    content = json.loads(tiny_cohort.read_text())
    ctp, other = (tiny_cohort.parent / item["ctp"] for item in (content["test"][0], content["training"][0]))
    studies = tmp_path / "studies"  # two studies, each in its own folder: two patients
    write_ctp_dicom(ctp, studies / "patient-a", layout="per-frame", transfer_syntax="jpeg-lossless")
    series = nib.load(other)  # patient b's scan ends at 22 s, before the bolus washed out: flagged, still labelled
    frames = np.asarray(series.dataobj)[..., :22].astype(np.float32)
    spacing = series.header.get_zooms()[:3]
    for t in range(12, 22):  # and the head moved 3 mm halfway: corrected, flagged
        frames[..., t] = move_volume(frames[..., t], spacing, np.zeros(3), np.array([3.0, 0.0, 0.0]))
    short = save_nifti(tmp_path / "short.nii.gz", frames, series.affine, frame_interval=1.0)
    write_ctp_dicom(short, studies / "patient-b")
    out = tmp_path / "out"
    run_in_process(
        "inference",
        ["bundle/configs/inference.json", "bundle/configs/inference_threshold.json"],
        input=str(studies),
        output_dir=str(out),
    )
    assert sorted(p.name for p in out.iterdir()) == ["patient-a", "patient-b"]
    folder = out / "patient-a"
    label = nib.load(folder / "label.nii.gz")
    values = np.asarray(label.dataobj)
    assert (values > 0).any()  # a lesion to compare
    assert np.array_equal(read_segmentation(folder / "seg.dcm", label.affine, label.shape), values)
    source = pydicom.dcmread(next((studies / "patient-a").rglob("*.dcm")), stop_before_pixels=True)
    seg = pydicom.dcmread(folder / "seg.dcm")
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["penumbra", "core"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ctp-stroke-bundle"
    report = json.loads((folder / "report.json").read_text())
    volumes = sr_volumes(folder / "report_sr.dcm")
    assert volumes == {k: report["volumes_ml"][k] for k in ("penumbra", "core")}
    assert report["quality"] == [] and sr_quality_flags(folder / "report_sr.dcm") == []
    truncated = json.loads((out / "patient-b" / "report.json").read_text())
    assert [f["flag"] for f in truncated["quality"]] == ["bolus_truncated", "motion"]
    assert sr_quality_flags(out / "patient-b" / "report_sr.dcm") == ["bolus_truncated", "motion"]
    sc = pydicom.dcmread(folder / "report_sc.dcm")
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PhotometricInterpretation == "RGB"
    nifti_maps = compute_maps(ctp, tmp_path / "nifti_maps")
    for name in ("cbf", "tmax", "mip"):
        from_dicom = nib.load(folder / "maps" / f"{name}.nii.gz")
        from_nifti = nib.load(nifti_maps[name])
        # float rounding only: DICOM stores the spacing to 6 decimals, which moves the smoothing kernel by 1e-8
        assert np.allclose(from_dicom.get_fdata(), from_nifti.get_fdata(), rtol=1e-5, atol=1e-4), name
        assert np.allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)


VENDOR = {  # SeriesDescription and RescaleSlope as perfusion software exports them
    "cbf": ("Perfusion CBF [ml/100g/min]", 0.01),
    "cbv": ("Perfusion CBV [ml/100g]", 0.001),
    "ttp": ("Perfusion TTP [s]", 0.01),
    "tmax": ("Perfusion Tmax [s]", 0.01),
    "mtt": ("Perfusion MTT [s]", 0.01),
}


def _vendor_study(tiny_cohort, folder: Path, with_ctp=True) -> Path:
    item = json.loads(tiny_cohort.read_text())["validation"][0]
    patient = tiny_cohort.parent / item["id"]
    info = write_ctp_dicom(tiny_cohort.parent / item["ctp"], folder / "ctp") if with_ctp else {}
    maps = {name: patient / f"{name}.nii.gz" for name in VENDOR}
    write_map_series(
        maps,
        folder / "maps",
        {name: description for name, (description, _) in VENDOR.items()},
        {name: slope for name, (_, slope) in VENDOR.items()},
        study_uid=info.get("study"),
        frame_of_reference=info.get("frame_of_reference"),
    )
    return patient


def test_vendor_maps_are_imported_with_their_rescale_slope(tiny_cohort, tmp_path):
    patient = _vendor_study(tiny_cohort, tmp_path / "study")
    out = tmp_path / "patient"
    bundle(
        "converting", "--input", str(tmp_path / "study"), "--output_dir", str(out), config="bundle/configs/dicom.json"
    )
    for name, (_, slope) in VENDOR.items():
        imported, source = nib.load(out / f"{name}.nii.gz"), nib.load(patient / f"{name}.nii.gz")
        # half a stored step, plus float32 rounding of values up to a few hundred
        assert np.abs(imported.get_fdata() - source.get_fdata()).max() <= slope / 2 + 1e-4, name
        assert np.allclose(imported.affine, source.affine, atol=1e-4)
    mip = nib.load(out / "mip.nii.gz").get_fdata()  # no MIP series: the CTP series' maximum over time
    assert np.array_equal(mip, nib.load(out / "ctp.nii.gz").get_fdata().max(axis=-1))
    again = refusal("converting", "bundle/configs/dicom.json", input=str(tmp_path / "study"), output_dir=str(out))
    assert again.startswith("error: ") and "already exists" in again


def test_vendor_maps_without_their_slope_or_matching_name_are_refused(tiny_cohort, tmp_path):
    _vendor_study(tiny_cohort, tmp_path / "unscaled", with_ctp=False)
    for path in (tmp_path / "unscaled" / "maps").rglob("*cbf/*.dcm"):  # exported without its 0.01 slope
        edit(path, RescaleSlope=1)
    with pytest.raises(CTPDataError, match=r"series100_cbf.*\.dcm: cbf has a median of [\d.]+ ml/100 g/min"):
        convert_dicom_study(tmp_path / "unscaled", tmp_path / "out")
    _vendor_study(tiny_cohort, tmp_path / "renamed", with_ctp=False)
    with pytest.raises(CTPDataError, match="no MIP series and no CTP series"):
        convert_dicom_study(tmp_path / "renamed", tmp_path / "out2")
    with pytest.raises(CTPDataError, match=r"no series for cbf.*map_patterns"):
        convert_dicom_study(tmp_path / "renamed", tmp_path / "out3", map_patterns={"cbf": "blood flow"})
    with pytest.raises(CTPDataError, match="both match the cbf pattern"):
        convert_dicom_study(tmp_path / "renamed", tmp_path / "out4", map_patterns={"cbf": "perfusion"})


def test_deploy_app_takes_a_dicom_study(tiny_cohort, tmp_path):
    """deploy/app.py's operator body (the SDK cannot be installed here) on a DICOMDIR-less study folder."""
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from app import label_studies
    finally:
        sys.path.pop(0)
    item = json.loads(tiny_cohort.read_text())["test"][0]
    study = tmp_path / "CT-perfusion"
    write_ctp_dicom(tiny_cohort.parent / item["ctp"], study, transfer_syntax="rle")
    done = label_studies(study, tmp_path / "out", threshold=True, nihss=8)
    assert done == ["CT-perfusion"]
    assert {p.name for p in (tmp_path / "out" / "CT-perfusion").iterdir()} >= {
        "seg.dcm",
        "report_sr.dcm",
        "report.json",
    }


def test_writing_and_computing_workflows_on_dicom(tiny_cohort, tmp_path):
    """The documented commands: a cohort study written as DICOM (``writing``), maps computed from it
    (``computing --ctp <DICOM folder>``) with the DICOM provenance recorded."""
    item = json.loads(tiny_cohort.read_text())["training"][1]
    study = tmp_path / "study"
    bundle(
        "writing", "--ctp", str(tiny_cohort.parent / item["ctp"]), "--output_dir", str(study),
        "--transfer_syntax", "jpeg-ls", "--layout", "per-frame", config="bundle/configs/dicom.json",
    )  # fmt: skip
    assert len(files_of(study)) == 2 * 40
    run_in_process("computing", "bundle/configs/perfusion.json", ctp=str(study), output_dir=str(tmp_path / "maps"))
    record = json.loads((tmp_path / "maps" / "perfusion.json").read_text())
    assert record["dicom"]["time_source"] == "AcquisitionDateTime" and len(record["dicom"]["reference_files"]) == 2
    assert nib.load(tmp_path / "maps" / "cbf.nii.gz").shape == (64, 64, 2)
