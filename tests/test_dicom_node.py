"""The DICOM node against a real PACS: Orthanc (Debian package) sends studies to it and receives its results."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import orthanc as pacs
import pydicom
import pynetdicom
import pytest
from conftest import missing_engine, reaping
from postgres import free_port
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from scripts.clinical.dicom_outputs import read_segmentation, sr_volumes
from scripts.clinical.pipeline import label_studies
from scripts.node.service import DicomNode
from scripts.simulation.dicom_study import write_ctp_dicom

# a thread of the node that dies (the outbox's sender, a C-STORE handler) fails the test, not just warns
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

ROOT = Path(__file__).resolve().parents[1]
NODE_AET = "CTPNODE"


@pytest.fixture(scope="module")
def studies(tiny_cohort, tmp_path_factory) -> list[Path]:
    """Two synthetic studies as the ``writing`` workflow writes them (JPEG Lossless, a series per time point)."""
    root = tmp_path_factory.mktemp("studies")
    content = json.loads(tiny_cohort.read_text())
    items = [content["test"][0], content["training"][0]]
    folders = [root / f"study-{i}" for i in range(2)]
    for item, folder in zip(items, folders):
        write_ctp_dicom(tiny_cohort.parent / item["ctp"], folder, layout="per-frame", transfer_syntax="jpeg-lossless")
    return folders


@pytest.fixture(scope="module")
def expected(studies, tmp_path_factory) -> dict[str, dict]:
    """What the bundle's own inference gives on each study folder (the threshold overlay): label and volumes,
    by StudyInstanceUID."""
    out = tmp_path_factory.mktemp("expected")
    found = {}
    for folder in studies:
        label_studies(folder, out, threshold=True, nihss=8)
        uid = pydicom.dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
        label = nib.load(out / folder.name / "label.nii.gz")
        report = json.loads((out / folder.name / "report.json").read_text())
        found[uid] = {"label": label, "volumes": {k: report["volumes_ml"][k] for k in ("penumbra", "core")}}
    return found


def _need_orthanc() -> None:
    if pacs.binary() is None:
        missing_engine("no Orthanc binary (Debian package orthanc)")


def _serve(node: DicomNode) -> threading.Thread:
    thread = threading.Thread(target=node.serve, daemon=True)
    thread.start()
    return thread


def _results(orthanc: pacs.Orthanc, timeout: float = 120, n_studies: int = 1) -> dict[str, dict[str, list[str]]]:
    """Wait until ``n_studies`` studies in Orthanc hold a SEG, an SR and an SC; return per StudyInstanceUID the
    Orthanc instance ids per modality."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for study in orthanc.request("GET", "/studies"):
            info = orthanc.request("GET", f"/studies/{study}")
            by_modality: dict[str, list[str]] = {}
            for series in orthanc.request("GET", f"/studies/{study}/series"):
                by_modality.setdefault(series["MainDicomTags"]["Modality"], []).extend(series["Instances"])
            if {"SEG", "SR", "OT"} <= set(by_modality):
                found[info["MainDicomTags"]["StudyInstanceUID"]] = by_modality
        if len(found) >= n_studies:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"results did not arrive in Orthanc within {timeout} s (found {found})")
        time.sleep(0.5)


def _download(orthanc: pacs.Orthanc, instance: str, path: Path) -> Path:
    path.write_bytes(orthanc.request("GET", f"/instances/{instance}/file"))
    return path


def _check_results(orthanc, results: dict, expected: dict, tmp_path: Path) -> None:
    """One SEG, SR and SC per study, in the study, referencing its CT instances; the SEG decodes onto the label
    of the file path and the SR holds its volumes."""
    for uid, by_modality in results.items():
        assert [len(by_modality[m]) for m in ("SEG", "SR", "OT")] == [1, 1, 1], by_modality
        seg_path = _download(orthanc, by_modality["SEG"][0], tmp_path / f"{uid}-seg.dcm")
        label = expected[uid]["label"]
        assert np.array_equal(read_segmentation(seg_path, label.affine, label.shape), np.asarray(label.dataobj))
        seg = pydicom.dcmread(seg_path)
        assert seg.StudyInstanceUID == uid
        referenced = {
            i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence
        }
        ct = {orthanc.request("GET", f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in by_modality["CT"]}
        assert referenced and referenced <= ct
        sr = _download(orthanc, by_modality["SR"][0], tmp_path / f"{uid}-sr.dcm")
        assert sr_volumes(sr) == expected[uid]["volumes"]
        sc = pydicom.dcmread(_download(orthanc, by_modality["OT"][0], tmp_path / f"{uid}-sc.dcm"))
        assert sc.StudyInstanceUID == uid and sc.Modality == "OT"


def test_orthanc_sends_two_studies_at_once_and_gets_seg_sr_and_sc_back_in_each(studies, expected, tmp_path):
    """As a PACS would: the studies are uploaded to Orthanc, Orthanc C-STOREs both at once to the node, the node
    labels each and C-STOREs SEG, SR and SC back to the sending AE."""
    _need_orthanc()
    port = free_port()
    with pacs.server({"ctpnode": [NODE_AET, "127.0.0.1", port]}) as orthanc:
        destinations = {"pacs": orthanc.destination}
        node = DicomNode(tmp_path / "node", NODE_AET, port, "127.0.0.1", quiet_s=2.0, destinations=destinations,
                         threshold=True, inference={"nihss": 8})  # fmt: skip
        thread = _serve(node)
        try:
            ids = [orthanc.upload(sorted(folder.rglob("*.dcm"))).pop() for folder in studies]
            jobs = [orthanc.request("POST", "/modalities/ctpnode/store", {"Resources": [i], "Asynchronous": True})
                    for i in ids]  # fmt: skip
            results = _results(orthanc, n_studies=2)
            states = [orthanc.request("GET", f"/jobs/{job['ID']}")["State"] for job in jobs]
        finally:
            node.stop.set()
            thread.join(timeout=60)
        assert states == ["Success", "Success"]
        _check_results(orthanc, results, expected, tmp_path)


def _scanner_send(files, port: int, calling: str = "SCANNER") -> list[int]:
    """C-STORE ``files`` to the node as a scanner would; the statuses."""
    ae = AE(ae_title=calling)
    first = files[0] if isinstance(files[0], pydicom.Dataset) else pydicom.dcmread(files[0])
    ae.add_requested_context(CTImageStorage, [first.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(f if isinstance(f, pydicom.Dataset) else str(f)).Status for f in files]
    finally:
        assoc.release()


def test_a_dead_destination_neither_loses_results_nor_blocks_reception(studies, expected, tmp_path, caplog):
    """Results wait in the outbox, retried with back-off, while the PACS is down; another study is received
    meanwhile; both arrive once the PACS is up, once each."""
    _need_orthanc()
    port, http_port, dicom_port = free_port(), free_port(), free_port()
    down = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port}
    node = DicomNode(tmp_path / "node", NODE_AET, port, "127.0.0.1", quiet_s=1.0, destinations={"pacs": down},
                     destination="pacs", threshold=True, inference={"nihss": 8}, retry_s=(0.5, 2.0))  # fmt: skip
    thread = _serve(node)
    try:
        first = sorted(studies[0].rglob("*.dcm"))
        assert set(_scanner_send(first, port)) == {0}
        deadline = time.monotonic() + 120
        while "attempt 2," not in caplog.text:
            assert time.monotonic() < deadline, "no failed delivery attempt logged"
            time.sleep(0.2)
        second = sorted(studies[1].rglob("*.dcm"))
        assert set(_scanner_send(second, port)) == {0}  # received while the destination is down
        with pacs.server(ports=(http_port, dicom_port)) as orthanc:
            results = _results(orthanc, n_studies=2)
            for uid, by_modality in results.items():
                assert [len(by_modality[m]) for m in ("SEG", "SR", "OT")] == [1, 1, 1]
                seg = _download(orthanc, by_modality["SEG"][0], tmp_path / "seg.dcm")
                label = expected[uid]["label"]
                assert np.array_equal(read_segmentation(seg, label.affine, label.shape), np.asarray(label.dataobj))
    finally:
        node.stop.set()
        thread.join(timeout=60)
    assert not any((tmp_path / "node" / "outbox").iterdir())
    assert len(list((tmp_path / "node" / "sent").iterdir())) == 2


def _node_process(storage: Path, port: int, destination: dict, log: Path) -> subprocess.Popen:
    """The documented command: ``python -m monai.bundle run listening --config_file bundle/configs/dicom_node.json``."""
    command = [
        sys.executable, "-m", "monai.bundle", "run", "listening", "--config_file", "bundle/configs/dicom_node.json",
        "--storage_dir", str(storage), "--port", str(port), "--host", "127.0.0.1", "--ae_title", NODE_AET,
        "--quiet_seconds", "3", "--threshold", "true", "--inference", "{'nihss': 8}", "--retry_seconds", "[0.5, 2]",
        "--destinations", json.dumps({"pacs": destination}).replace('"', "'"), "--destination", "pacs",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_node_killed_mid_study_and_mid_delivery_resumes_from_its_storage(studies, expected, tmp_path):
    """SIGKILL halfway through receiving a study, then again with the results in the outbox and the PACS down:
    the restarted node labels the whole study once and delivers each result once."""
    _need_orthanc()
    port, http_port, dicom_port = free_port(), free_port(), free_port()
    destination = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port}
    storage, log = tmp_path / "node", tmp_path / "node.log"
    files = sorted(studies[0].rglob("*.dcm"))
    with reaping() as processes:
        processes.append(_node_process(storage, port, destination, log))
        _wait_for(lambda: _probe(port, "PROBE"), 120, "the node did not start")
        assert set(_scanner_send(files[: len(files) // 2], port)) == {0}
        processes[-1].send_signal(signal.SIGKILL)  # mid-study: before the study was quiet
        processes[-1].wait()
        processes.append(_node_process(storage, port, destination, log))
        _wait_for(lambda: _probe(port, "PROBE"), 120, "the node did not restart")
        assert set(_scanner_send(files[len(files) // 2 :], port)) == {0}
        outbox = storage / "outbox"
        _wait_for(lambda: any(p.is_dir() and not p.name.startswith(".") for p in outbox.iterdir()), 120, "no result")
        processes[-1].send_signal(signal.SIGKILL)  # mid-delivery: the PACS is down
        processes[-1].wait()
        with pacs.server(ports=(http_port, dicom_port)) as orthanc:
            processes.append(_node_process(storage, port, destination, log))
            results = _results(orthanc)
            time.sleep(4)  # a second labelling or delivery would arrive in this time
            results = _results(orthanc)
            processes[-1].send_signal(signal.SIGTERM)
            assert processes[-1].wait(timeout=60) == 0
            uid = next(iter(results))
            by_modality = results[uid]
            assert [len(by_modality[m]) for m in ("SEG", "SR", "OT")] == [1, 1, 1]
            seg = _download(orthanc, by_modality["SEG"][0], tmp_path / "seg.dcm")
            label = expected[uid]["label"]
            assert np.array_equal(read_segmentation(seg, label.affine, label.shape), np.asarray(label.dataobj))
    assert log.read_text().count("labelling") == 1, log.read_text()[-3000:]
    assert len(os.listdir(storage / "studies" / uid)) == len(files)


@pytest.mark.parametrize("hostile", ["../../x", "/abs", "1.2\n3", "1." * 40 + "1"])
def test_a_sender_cannot_write_outside_the_node_nor_send_other_than_ct(tmp_path, hostile, monkeypatch):
    """A StudyInstanceUID or SOPInstanceUID that is not a DICOM UID is refused (status C000) and nothing is written;
    an MR image is not accepted; with a list of callers, an unknown AE title cannot associate."""
    monkeypatch.setitem(pynetdicom._config.VALIDATORS, "UI", lambda value: (True, ""))  # a sender that checks nothing
    port = free_port()
    node = DicomNode(tmp_path / "node", NODE_AET, port, "127.0.0.1", accepted_callers=["SCANNER"], threshold=True)
    thread = _serve(node)
    try:
        _wait_for(lambda: _probe(port, "SCANNER"), 30, "the node did not start")
        ds = _ct_instance(hostile, generate_uid())
        other = _ct_instance(generate_uid(), hostile)
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
        assert assoc.is_established
        try:
            assert [assoc.send_c_store(d).Status for d in (ds, other)] == [0xC000, 0xC000]
            accepted = {c.abstract_syntax for c in assoc.accepted_contexts}
            assert CTImageStorage in accepted and MRImageStorage not in accepted
        finally:
            assoc.release()
        assert not _probe(port, "STRANGER")
    finally:
        node.stop.set()
        thread.join(timeout=60)
    assert not any((tmp_path / "node" / "studies").iterdir())
    assert {p.name for p in tmp_path.iterdir()} == {"node"}
    assert not Path("/abs").exists()


def _probe(port: int, calling: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if assoc.is_established:
        assoc.release()
        return True
    return False


def _ct_instance(study_uid: str, sop_uid: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = CTImageStorage, sop_uid, study_uid
    ds.SeriesInstanceUID, ds.Modality, ds.PatientID = generate_uid(), "CT", "../../x"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.zeros((2, 2), np.int16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_a_study_that_cannot_be_labelled_is_logged_with_its_uid_and_the_node_serves_on(studies, tmp_path, caplog):
    """A study missing one image gets one log line naming its StudyInstanceUID and why, is recorded as failed and
    sends nothing; the next study is labelled; more images of the failed study make it due again; a study with a
    broken image (its JPEG stream cut short) is refused with the reason; a study sent twice is labelled twice, each
    time from its own images only."""
    caplog.set_level(logging.INFO, logger="scripts.node")
    port = free_port()
    node = DicomNode(tmp_path / "node", NODE_AET, port, "127.0.0.1", quiet_s=1.0, threshold=True,
                     inference={"nihss": 8})  # fmt: skip
    thread = _serve(node)
    try:
        _wait_for(lambda: _probe(port, "SCANNER"), 30, "the node did not start")
        broken, good = (sorted(folder.rglob("*.dcm")) for folder in studies)
        uid = pydicom.dcmread(broken[0], stop_before_pixels=True).StudyInstanceUID
        assert set(_scanner_send(broken[:5] + broken[6:], port)) == {0}
        state = tmp_path / "node" / "state" / f"{uid}.json"
        _wait_for(lambda: "failed" in json.loads(state.read_text()), 120, "the incomplete study was not processed")
        refusal = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"study {uid}: no segmentation")]
        assert len(refusal) == 1 and "missing" in refusal[0], refusal
        assert set(_scanner_send(good, port)) == {0}
        good_uid = pydicom.dcmread(good[0], stop_before_pixels=True).StudyInstanceUID
        entry = tmp_path / "node" / "outbox"
        _wait_for(
            lambda: any(p.name.startswith(good_uid) for p in entry.iterdir()), 120, "the next study was not labelled"
        )
        assert sorted(p.name for p in next(entry.iterdir()).glob("*.dcm")) == [
            "report_sc.dcm",
            "report_sr.dcm",
            "seg.dcm",
        ]
        assert not any(p.name.startswith(uid) for p in entry.iterdir())
        assert "is not among destinations" in caplog.text  # no destination known for SCANNER: kept, and said so
        assert set(_scanner_send(good, port)) == {0}  # the same study sent again: labelled again, not doubled
        _wait_for(lambda: len([p for p in entry.iterdir() if p.name.startswith(good_uid)]) == 2, 120, "sent twice")
        runs = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"study {good_uid}: ")]
        assert [m.split(": ")[1].split(" ")[0] for m in runs if "labelling" in m] == [str(len(good))] * 2
        assert set(_scanner_send(broken[5:6], port)) == {0}  # the missing image arrives: labelled now
        _wait_for(
            lambda: any(p.name.startswith(uid) for p in entry.iterdir()), 120, "the completed study was not labelled"
        )
        _wait_for(lambda: "outbox" in json.loads(state.read_text()), 30, "the completed study's state")
        assert "failed" not in json.loads(state.read_text())  # its earlier failure is not its outcome any more
        copy, copy_uid = [pydicom.dcmread(f) for f in good], generate_uid()  # the good study again, one file broken
        for ds in copy:
            ds.StudyInstanceUID, ds.SOPInstanceUID = copy_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copy[3].PixelData = copy[3].PixelData[: len(copy[3].PixelData) // 3]  # its JPEG stream cut short
        assert set(_scanner_send(copy, port)) == {0}
        state = tmp_path / "node" / "state" / f"{copy_uid}.json"
        _wait_for(lambda: state.is_file() and "failed" in json.loads(state.read_text()), 120, "the broken study")
        assert "cannot decode the pixel data" in json.loads(state.read_text())["failed"]  # not garbage labelled
    finally:
        node.stop.set()
        thread.join(timeout=60)
