"""MLflow, entered here only: runs and their handler, riding out a server outage, the model registry."""

from . import handlers, outage, registry, runs

__all__ = ["handlers", "outage", "registry", "runs"]
