"""Learning: encoders and the multi-input networks, loss, metrics, training handlers (fine-tuning stages,
checkpoints, tracking, the model registry), the clean end of a distributed run, the voxel-wise baseline, the
experiment grids and the Optuna loss search (with the lock its workers share)."""

from . import (
    checkpoints,
    distributed,
    encoding,
    experiments,
    finetuning,
    inferers,
    losses,
    metrics,
    networks,
    registry,
    search,
    study_lock,
    tracking,
    training,
    vgg,
    voxel_baseline,
)

__all__ = [
    "checkpoints",
    "distributed",
    "encoding",
    "experiments",
    "finetuning",
    "inferers",
    "losses",
    "metrics",
    "networks",
    "registry",
    "search",
    "study_lock",
    "tracking",
    "training",
    "vgg",
    "voxel_baseline",
]
