"""What MONAI lacks for CT perfusion stroke segmentation: simulation, perfusion maps, data validation, networks,
loss, metrics, training helpers, the threshold baseline, inference outputs and the clinical report."""

from . import (brain_mask, cli, cohort, data, encoding, experiments, fate, inference, inferers, losses, maps, metrics,
               networks, perfusion, phantom, report, search, simulate, thresholds, tracer, training, vgg, voxel_baseline)

__all__ = ["brain_mask", "cli", "cohort", "data", "encoding", "experiments", "fate", "inference", "inferers", "losses", "maps",
           "metrics", "networks", "perfusion", "phantom", "report", "search", "simulate", "thresholds", "tracer", "training", "vgg",
           "voxel_baseline"]
