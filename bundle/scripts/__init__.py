"""What MONAI lacks for CT perfusion stroke segmentation: simulation, perfusion maps, data validation."""

from . import cli, cohort, data, maps, perfusion, phantom, simulate, tracer

__all__ = ["cli", "cohort", "data", "maps", "perfusion", "phantom", "simulate", "tracer"]
