"""The networks and what shapes them: the VGG-16 encoders, the colour encoding of the maps, the SF/EF/EFI networks and
their input sets, the focal Tversky loss, the fine-tuning stages, loading weights."""

from . import encoding, finetuning, losses, networks, vgg, weights

__all__ = ["encoding", "finetuning", "losses", "networks", "vgg", "weights"]
