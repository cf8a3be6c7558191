"""Many trainings: the experiment grids, the Optuna loss search (its storage and the lock its workers share), the
voxel-wise baseline they are compared with."""

from . import grids, search, study, study_lock, study_storage, voxel_baseline

__all__ = ["grids", "search", "study", "study_lock", "study_storage", "voxel_baseline"]
