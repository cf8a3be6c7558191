"""What MONAI lacks for CT perfusion stroke segmentation: simulation, perfusion maps, data validation, networks."""

from . import brain_mask, cli, cohort, data, encoding, experiments, inferers, losses, maps, metrics, networks, perfusion, phantom, simulate, tracer, training, vgg

__all__ = ["brain_mask", "cli", "cohort", "data", "encoding", "experiments", "inferers", "losses", "maps", "metrics", "networks", "perfusion", "phantom", "simulate", "tracer", "training", "vgg"]
