"""The Ignite engine around the model: training handlers and checks, inferers, checkpoints and resume, the polite stop,
precision, the clean end of a distributed run, profiling, metrics."""

from . import checkpoints, distributed, inferers, metrics, precision, profiling, stopping, training

__all__ = ["checkpoints", "distributed", "inferers", "metrics", "precision", "profiling", "stopping", "training"]
