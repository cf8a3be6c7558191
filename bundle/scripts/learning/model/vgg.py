"""VGG-16 feature encoders: 2D with torchvision-compatible weights, and the I3D-inflated 3D version.

``VGG16Encoder.features`` has exactly torchvision's ``vgg16().features`` layout, so the published ImageNet
state dict (``features.<i>.weight`` / ``.bias``) loads unchanged; the classifier keys are ignored.
torchvision itself is not needed (it cannot be installed beside the CPU torch these machines use).

``width`` scales every convolution's filters (1 = the paper's VGG-16, 64...512; 0.25 = 16...128) with the same
topology: 13 convolutions, 5 pools, the same skip taps. A narrower encoder starts from the first filters of the
ImageNet weights (each kernel sliced to the first input and output channels), the channel-subset
initialisation of width-multiplied networks; at width 1 the weights load unchanged.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.utils import str2bool
from torch import nn

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
SKIP_INDICES = (3, 8, 15, 22, 29)
"""Indices in ``features`` after which the block outputs are tapped: block1_conv2 ... block5_conv3 (+ReLU)."""
SKIP_CHANNELS = (64, 128, 256, 512, 512)
DEEP_HALF_START = 17
"""First ``features`` index of block 4: blocks 4-5 are the deeper half unfrozen by gradual fine-tuning."""


def scaled(channels: int, width: float) -> int:
    """Filters of a layer with ``channels`` at full width, at ``width`` (at least 1)."""
    return max(1, int(round(channels * float(width))))


def check_width(width: float) -> float:
    """``width`` as a float in (0, 1]; anything else raises ``ValueError``."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"encoder_width must be in (0, 1] (1 = the paper's VGG-16), got {width!r}.")
    return value


def skip_channels(width: float = 1.0) -> tuple[int, ...]:
    """Channels of the five skip taps at ``width``."""
    return tuple(scaled(c, width) for c in SKIP_CHANNELS)


def vgg16_layers(width: float = 1.0) -> nn.Sequential:
    """torchvision's ``vgg16().features`` (13 conv+ReLU and 5 max-pools, same indices), filters times ``width``."""
    width = check_width(width)
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            out = scaled(int(item), width)
            conv = nn.Conv2d(channels, out, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            channels = out
    return nn.Sequential(*layers)


def slice_to(state: dict[str, torch.Tensor], layers: nn.Sequential) -> dict[str, torch.Tensor]:
    """Full-width ``features`` weights cut to the first filters and input channels of ``layers``' shapes."""
    target = layers.state_dict()
    return {k: v[tuple(slice(0, n) for n in target[k].shape)].clone() for k, v in state.items() if k in target}


def load_vgg16_state(pretrained: bool | str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """ImageNet weights for ``features`` (keys without the ``features.`` prefix): downloaded (torch.hub
    cache), from a torchvision-keyed file, or None.

    An unavailable download warns and returns None (the caller records that it is not pretrained); a
    given file that is missing or lacks VGG-16 feature keys raises ``ValueError`` naming it.
    """
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("true", "false", "1", "0", ""):
        pretrained = str2bool(pretrained.strip() or "false")  # command-line overrides arrive as text
    if pretrained is False or pretrained is None:
        return None
    if pretrained is True:
        try:
            state = torch.hub.load_state_dict_from_url(VGG16_URL, progress=False, map_location="cpu")
        except Exception as err:  # offline, proxy, corrupt cache: all mean "not pretrained"
            warnings.warn(
                f"ImageNet VGG-16 weights could not be downloaded from {VGG16_URL} ({err}); "
                "the encoders start from random weights (pretrained=False).",
                stacklevel=2,
            )
            return None
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise ValueError(f"{path}: VGG-16 weights file not found.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable torch state dict ({err}).") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    missing = {f"features.{k}" for k in vgg16_layers().state_dict()} - {f"features.{k}" for k in features}
    if missing:
        source = VGG16_URL if pretrained is True else str(pretrained)
        raise ValueError(f"{source}: not a torchvision vgg16 state dict (missing {sorted(missing)[:3]} ...).")
    return features


class VGG16Encoder(nn.Module):
    """VGG-16 convolutional part returning the five block outputs (strides 1, 2, 4, 8, 16) and the pooled
    bottleneck (stride 32).

    Args:
        pretrained: True (ImageNet via torch.hub), False, a path to a torchvision-keyed state dict, or
            already-loaded ``features`` weights (from :func:`load_vgg16_state`, to share one download).
        width: filters relative to VGG-16 (module docstring).
    """

    def __init__(self, pretrained: bool | str | os.PathLike | dict = False, width: float = 1.0) -> None:
        super().__init__()
        self.features = vgg16_layers(width)
        state = pretrained if isinstance(pretrained, dict) else load_vgg16_state(pretrained)
        if state is not None:
            self.features.load_state_dict(slice_to(state, self.features))
        self.pretrained = state is not None

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips: list[torch.Tensor] = []
        i = 0
        for layer in self.features:  # TorchScript-friendly walk; taps at SKIP_INDICES
            x = layer(x)
            if i == 3 or i == 8 or i == 15 or i == 22 or i == 29:
                skips.append(x)
            i += 1
        return skips, x

    def deep_half(self) -> list[nn.Parameter]:
        """Parameters of blocks 4 and 5."""
        return [p for i, layer in enumerate(self.features) if i >= DEEP_HALF_START for p in layer.parameters()]


class InflatedConv3d(nn.Module):
    """A 2D 3x3 convolution inflated to 3x3x3 (I3D): the kernel repeated along depth and divided by 3.

    Depth is padded by replication, so a depth-constant input gives exactly the 2D convolution's output.
    Computed as three 2D convolutions over depth-shifted slices (one per kernel depth), summed: the same sum
    as ``F.conv3d`` (equal within float rounding), on the 2D kernels that every backend optimises. oneDNN's
    bf16 3D convolution crashes (SIGSEGV) in the backward pass on CPUs with AMX (torch 2.13, oneDNN 3.12,
    e.g. a 16 -> 16 channel layer at 128² and depth 4) and runs its 3-channel first layer far slower than fp32.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        weight = conv.weight.detach().unsqueeze(2).repeat(1, 1, 3, 1, 1) / 3.0
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, depth, h, w = x.shape
        x = F.pad(x, (0, 0, 0, 0, 1, 1), mode="replicate").transpose(1, 2)  # (N, D + 2, C, H, W)
        # kernel depth k reads the padded volume's slices k ... k + D - 1
        out = F.conv2d(x[:, :depth].reshape(n * depth, c, h, w), self.weight[:, :, 0], self.bias, padding=1)
        for k in range(1, 3):
            out = out + F.conv2d(x[:, k : k + depth].reshape(n * depth, c, h, w), self.weight[:, :, k], padding=1)
        return out.reshape(n, depth, -1, h, w).transpose(1, 2)


class InflatedVGG16Encoder(nn.Module):
    """VGG-16 inflated to 3D: inputs ``(B, 3, D, H, W)``; pooling keeps depth in blocks 1-3 and halves it
    (rounding up) in blocks 4-5. Returns block outputs with depth folded into channels, and the bottleneck
    likewise, so a 2D decoder can use them.
    """

    def __init__(self, pretrained: bool | str | os.PathLike | dict = False, width: float = 1.0) -> None:
        super().__init__()
        base = VGG16Encoder(pretrained, width)
        self.pretrained = base.pretrained
        layers: list[nn.Module] = []
        pools = 0
        for layer in base.features:
            if isinstance(layer, nn.Conv2d):
                layers.append(InflatedConv3d(layer))
            elif isinstance(layer, nn.MaxPool2d):
                pools += 1
                depth = 2 if pools >= 4 else 1
                layers.append(nn.MaxPool3d((depth, 2, 2), (depth, 2, 2), ceil_mode=True))
            else:
                layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips: list[torch.Tensor] = []
        i = 0
        for layer in self.features:
            x = layer(x)
            if i == 3 or i == 8 or i == 15 or i == 22 or i == 29:
                skips.append(x.flatten(1, 2))
            i += 1
        return skips, x.flatten(1, 2)

    def deep_half(self) -> list[nn.Parameter]:
        """Parameters of blocks 4 and 5."""
        return [p for i, layer in enumerate(self.features) if i >= DEEP_HALF_START for p in layer.parameters()]

    @staticmethod
    def depths(n_maps: int) -> list[int]:
        """Depth of each block output (then of the bottleneck) for ``n_maps`` stacked maps."""
        d4 = n_maps
        d5 = -(-d4 // 2)
        return [n_maps, n_maps, n_maps, d4, d5, -(-d5 // 2)]
