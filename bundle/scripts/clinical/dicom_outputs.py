"""DICOM outputs of one study read from DICOM, in the input's study, written with highdicom:

- ``seg.dcm``: a DICOM Segmentation (binary) with two segments, 1 = penumbra and 2 = core (the label
  values), referencing the source CT images (the first frame of the CTP series) so it overlays them
  exactly; the algorithm identification names the bundle and its version.
- ``report_sr.dcm``: a Comprehensive 3D SR (TID 1500 measurement report) with the core and penumbra
  volumes, each referencing its segment in ``seg.dcm``, and the study-level figures of ``report.json``
  (hypoperfused volume, mismatch volume and ratio, Tmax > 6 s volume).
- ``report_sc.dcm``: the montage PNG as a Secondary Capture image, for viewers that show no SEG or SR.

Segment codes: category SNOMED CT 49755003 "Morphologically Abnormal Structure"; core as SNOMED CT 6574001
"Necrosis". DICOM's code dictionaries (pydicom's copy of them) hold no SNOMED CT concept for the ischaemic
penumbra, so penumbra and the study-level figures use codes of this bundle's local scheme
(:data:`LOCAL_SCHEME`, a DICOM "99" private scheme) with plain-English meanings.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from matplotlib import image
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ..io import save_bytes
from ..io.dicom import read_header
from ..perfusion.quality import TITLES

BUNDLE_NAME = "ctp-stroke-bundle"
LOCAL_SCHEME = "99CTPSTROKE"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9001, 9002, 9003


def bundle_version() -> str:
    """The bundle's version from ``bundle/configs/metadata.json``."""
    metadata = Path(__file__).resolve().parents[2] / "configs" / "metadata.json"
    return str(json.loads(metadata.read_text())["version"])


def _save(dataset, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return save_bytes(path, buffer.getvalue())


def _instance(series_number: int, description: str) -> dict[str, Any]:
    """The identity of a new single-instance series of this bundle (highdicom's constructor arguments)."""
    return {
        "series_instance_uid": generate_uid(),
        "series_number": series_number,
        "sop_instance_uid": generate_uid(),
        "instance_number": 1,
        "manufacturer": BUNDLE_NAME,
        "series_description": f"{description} (research use only)",
    }


def _local(value: str, meaning: str):
    return CodedConcept(value=value, scheme_designator=LOCAL_SCHEME, meaning=meaning)


def _algorithm():
    return hd.AlgorithmIdentificationSequence(
        name=BUNDLE_NAME, family=codes.DCM.ArtificialIntelligence, version=bundle_version()
    )


def segment_descriptions() -> list:
    """Segment 1 penumbra, segment 2 core (the label values)."""
    algorithm = _algorithm()
    common = {
        "segmented_property_category": codes.SCT.MorphologicallyAbnormalStructure,
        "algorithm_type": hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        "algorithm_identification": algorithm,
    }
    return [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="penumbra",
            segmented_property_type=_local("PENUMBRA", "Ischemic penumbra"),
            **common,
        ),
        hd.seg.SegmentDescription(
            segment_number=2, segment_label="core", segmented_property_type=codes.SCT.Necrosis, **common
        ),
    ]


def write_segmentation(label: np.ndarray, sources: Sequence, path: str | os.PathLike):
    """Write ``label`` (X=column, Y=row, slice; 0/1/2) as a DICOM SEG over ``sources`` (one header per slice,
    in the label's slice order); return the dataset."""
    label = np.asarray(label, dtype=np.uint8)
    if label.shape[2] != len(sources):
        raise ValueError(f"label has {label.shape[2]} slices but {len(sources)} source images were given.")
    pixels = np.stack([label[:, :, k].T for k in range(label.shape[2])])
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(),
        manufacturer_model_name="slow-fusion core/penumbra segmentation",
        software_versions=bundle_version(),
        device_serial_number="none",
        omit_empty_frames=False,
        **_instance(SEG_SERIES_NUMBER, "Core and penumbra"),
    )
    _save(seg, path)
    return seg


def read_segmentation(path: str | os.PathLike, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A DICOM SEG of this bundle read back as a label (0/1/2) on the grid ``affine`` (RAS) / ``shape``;
    ``ValueError`` when the SEG's voxels do not coincide with that grid."""
    volume = hd.seg.segread(path).get_volume(combine_segments=True, relabel=False)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    to_volume = np.linalg.inv(ras) @ np.asarray(affine, dtype=np.float64)
    if not np.allclose(to_volume, np.round(to_volume), atol=1e-3):
        raise ValueError(f"{path}: the segmentation's voxel grid does not coincide with the given one.")
    indices = np.indices(tuple(shape)).reshape(3, -1)
    mapped = np.round(to_volume[:3, :3] @ indices + to_volume[:3, 3:4]).astype(int)
    if (mapped < 0).any() or any((mapped[i] >= volume.array.shape[i]).any() for i in range(3)):
        raise ValueError(f"{path}: the segmentation covers a different extent from the given grid.")
    return np.asarray(volume.array)[tuple(mapped)].reshape(tuple(shape)).astype(np.uint8)


def write_report_sr(report: Mapping[str, Any], seg, sources: Sequence, path: str | os.PathLike):
    """Write the report's volumes as a TID 1500 Comprehensive 3D SR referencing ``seg``; return the dataset."""
    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(), name=BUNDLE_NAME, model_name=str(report.get("method", ""))
            ),
        )
    )
    algorithm = hd.sr.AlgorithmIdentification(name=BUNDLE_NAME, version=bundle_version())
    volumes, mismatch = report["volumes_ml"], report["mismatch"]
    groups = []
    for number, name in ((1, "penumbra"), (2, "core")):
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=name),
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, segment_number=number),
                finding_type=segment_descriptions()[number - 1].SegmentedPropertyTypeCodeSequence[0],
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.Volume,
                        value=float(volumes[name]),
                        unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"),
                        algorithm_id=algorithm,
                    )
                ],
            )
        )
    study_level = [
        ("HYPOPERFUSED", "Hypoperfused volume (core + penumbra)", volumes["hypoperfused"], "ml"),
        ("MISMATCH_VOLUME", "Mismatch volume (hypoperfused - core)", mismatch["volume_ml"], "ml"),
        ("TMAX6", "Tmax > 6 s volume", report["tmax_volumes_ml"]["Tmax>6s"], "ml"),
    ]
    if mismatch["ratio"] is not None:
        study_level.append(("MISMATCH_RATIO", "Mismatch ratio (hypoperfused / core)", mismatch["ratio"], "1"))
    units = {"ml": hd.sr.CodedConcept("ml", "UCUM", "milliliter"), "1": hd.sr.CodedConcept("1", "UCUM", "no units")}
    flags = [  # the perfusion quality flags (scripts.perfusion.quality), each a coded finding
        hd.sr.QualitativeEvaluation(
            name=_local("QUALITY", "Perfusion quality flag"), value=_local(f["flag"], TITLES[f["flag"]])
        )
        for f in report.get("quality") or []
    ]
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="study"),
            algorithm_id=algorithm,
            qualitative_evaluations=flags or None,
            measurements=[
                hd.sr.Measurement(name=_local(code, meaning), value=float(value), unit=units[unit])
                for code, meaning, value, unit in study_level
            ],
        )
    )
    measurement_report = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=codes.LN.CTPerfusionHeadWithContrastIV,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg],
        content=measurement_report,
        **_instance(SR_SERIES_NUMBER, "Core and penumbra volumes"),
    )
    _save(sr, path)
    return sr


def sr_quality_flags(sr) -> list[str]:
    """The perfusion quality flags (codes) in a report SR written by :func:`write_report_sr`."""
    parsed = hd.sr.srread(sr) if isinstance(sr, (str, os.PathLike)) else sr
    return [
        evaluation.value.value
        for group in parsed.content.get_image_measurement_groups()
        for evaluation in group.get_qualitative_evaluations()
    ]


def sr_volumes(sr) -> dict[str, float]:
    """The segment volumes (ml) in a report SR written by :func:`write_report_sr`, by tracking identifier."""
    parsed = hd.sr.srread(sr) if isinstance(sr, (str, os.PathLike)) else sr
    content = parsed.content
    volumes = {}
    for group in content.get_volumetric_roi_measurement_groups():
        for measurement in group.get_measurements():
            volumes[group.tracking_identifier] = float(measurement.value)
    return volumes


def write_montage_sc(png: str | os.PathLike, source, path: str | os.PathLike):
    """Write the montage PNG as an RGB Secondary Capture image in the study of ``source``; return the dataset."""
    rgb = (np.asarray(image.imread(png))[..., :3] * 255).round().astype(np.uint8)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "P"),
        **_instance(SC_SERIES_NUMBER, "Core and penumbra montage"),
    )
    _save(sc, path)
    return sc


def save_dicom_outputs(
    folder: str | os.PathLike,
    label: np.ndarray,
    report: Mapping[str, Any],
    reference_files: Sequence[str | os.PathLike],
    montage: str | os.PathLike | None = None,
) -> list[str]:
    """Write ``seg.dcm``, ``report_sr.dcm`` and (with a montage PNG) ``report_sc.dcm`` into ``folder``."""
    folder = Path(folder)
    sources = [read_header(path) for path in reference_files]
    seg = write_segmentation(label, sources, folder / "seg.dcm")
    write_report_sr(report, seg, sources, folder / "report_sr.dcm")
    written = [str(folder / "seg.dcm"), str(folder / "report_sr.dcm")]
    if montage is not None and Path(montage).is_file():
        write_montage_sc(montage, sources[0], folder / "report_sc.dcm")
        written.append(str(folder / "report_sc.dcm"))
    return written
