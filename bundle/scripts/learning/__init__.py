"""Learning, in four rooms that import downwards only (``tests/test_layout.py``): ``model`` (networks, loss,
fine-tuning stages, weights), ``tracking`` (MLflow: runs, outage, registry), ``engine`` (the Ignite training and
evaluation around the model) and ``experiments`` (grids, the Optuna search, the voxel baseline)."""

from . import engine, experiments, model, tracking

__all__ = ["engine", "experiments", "model", "tracking"]
