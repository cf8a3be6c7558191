"""The clinic: a patient's core and penumbra from maps or a raw series, the report a clinician reads, and its
DICOM form (SEG, SR, Secondary Capture)."""

from . import dicom_outputs, inference, pipeline, report, studies

__all__ = ["dicom_outputs", "inference", "pipeline", "report", "studies"]
