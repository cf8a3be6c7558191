"""The Ignite engine around the model: training handlers and checks, inferers, checkpoints and resume, the polite stop,
precision, the clean end of a distributed run, profiling, metrics and the reports an evaluation writes."""

from . import checkpoints, distributed, inferers, metrics, precision, profiling, reports, stopping, training

__all__ = [
    "checkpoints",
    "distributed",
    "inferers",
    "metrics",
    "precision",
    "profiling",
    "reports",
    "stopping",
    "training",
]
