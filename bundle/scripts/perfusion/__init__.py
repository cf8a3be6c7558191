"""Perfusion analysis: maps from a raw 4D series (deconvolution), the MIP brain mask, the RAPID-like threshold
rule, lesion islands below a minimum volume dropped from labels, and an independent digital phantom (Kudo 2013
design) to validate the maps on curves not simulated here."""

from . import brain_mask, deconvolution, digital_phantom, lesions, maps, thresholds

__all__ = ["brain_mask", "deconvolution", "digital_phantom", "lesions", "maps", "thresholds"]
