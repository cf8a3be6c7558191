"""What MONAI lacks for CT perfusion stroke segmentation: simulation, perfusion maps, data validation."""

from . import cohort, data, maps, perfusion, phantom, simulate, tracer

__all__ = ["cohort", "data", "maps", "perfusion", "phantom", "simulate", "tracer"]
