"""Learning: encoders and the multi-input networks, loss, metrics, training handlers (fine-tuning stages,
checkpoints, tracking), the voxel-wise baseline, the experiment grids and the Optuna loss search."""

from . import (
    checkpoints,
    encoding,
    experiments,
    finetuning,
    inferers,
    losses,
    metrics,
    networks,
    search,
    tracking,
    training,
    vgg,
    voxel_baseline,
)

__all__ = [
    "checkpoints",
    "encoding",
    "experiments",
    "finetuning",
    "inferers",
    "losses",
    "metrics",
    "networks",
    "search",
    "tracking",
    "training",
    "vgg",
    "voxel_baseline",
]
