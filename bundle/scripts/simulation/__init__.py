"""The synthetic CTP cohort: tracer kinetics, anatomy and lesions, the tissue-fate model, one study, a cohort,
and a study written as DICOM."""

from . import cohort, dicom_study, fate, phantom, simulate, tracer

__all__ = ["cohort", "dicom_study", "fate", "phantom", "simulate", "tracer"]
