"""The clinic: a patient's core and penumbra from maps or a raw series, and the report a clinician reads."""

from . import inference, report

__all__ = ["inference", "report"]
