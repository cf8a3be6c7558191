"""The synthetic CTP cohort: tracer kinetics, anatomy and lesions, the tissue-fate model, one study, a cohort."""

from . import cohort, fate, phantom, simulate, tracer

__all__ = ["cohort", "fate", "phantom", "simulate", "tracer"]
