"""What MONAI lacks for CT perfusion stroke segmentation: simulation, perfusion maps, data validation, networks."""

from . import cli, cohort, data, encoding, maps, networks, perfusion, phantom, simulate, tracer, vgg

__all__ = ["cli", "cohort", "data", "encoding", "maps", "networks", "perfusion", "phantom", "simulate", "tracer", "vgg"]
