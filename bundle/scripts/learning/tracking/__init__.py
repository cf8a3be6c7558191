"""MLflow, entered here only: runs and their handler, riding out a server outage, the model registry."""

from . import outage, registry, runs

__all__ = ["outage", "registry", "runs"]
