"""Learning: encoders and the multi-input networks, loss, metrics, training handlers (fine-tuning stages,
checkpoints, tracking through a server outage, the model registry), the clean end of a distributed run, the
polite stop on SIGTERM, the voxel-wise baseline, the experiment grids and the Optuna loss search (with the
lock its workers share)."""

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
    outage,
    registry,
    search,
    stopping,
    study_lock,
    study_storage,
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
    "outage",
    "registry",
    "search",
    "stopping",
    "study_lock",
    "study_storage",
    "tracking",
    "training",
    "vgg",
    "voxel_baseline",
]
