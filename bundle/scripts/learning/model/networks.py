"""Slow-fusion (SF), early-fusion (EF) and inflated early-fusion (EFI) networks with VGG-16 encoders.

Interface (``shared/DESIGN.md``): ``forward(image, nihss=None)`` with ``image`` ``(B, C, H, W)`` in physical
units, channels ``cbf, cbv, ttp, tmax[, mip]``, ``nihss`` ``(B, 1)`` when the network uses it; returns
logits ``(B, 3, H, W)`` (healthy, penumbra, core). H and W must be multiples of 32.

After Tomasetti et al. (NLDL 2022) and the original Keras code: every map is colour-encoded
(:mod:`scripts.learning.model.encoding`); SF gives each map its own VGG-16, followed by two 3x3 convolutions (128) and
dropout 0.25, and the decoder concatenates, at every level, that level's features of all encoders; NIHSS
goes through Dense(100)-Dense(16x16), reshaped and resized to the bottleneck grid and concatenated there as
one channel (NIHSS is divided by 42 first). The original's Keras L1/L2 and max-norm weight constraints are
not reproduced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...io.map_registry import network_maps
from .encoding import PerfusionColourEncoding
from .vgg import InflatedVGG16Encoder, VGG16Encoder, check_width, load_vgg16_state, scaled, skip_channels

INPUT_SETS = ("PMs", "PMs+M", "PMs+N", "PMs+M+N")
"""The paper's input sets: the perfusion maps (PMs: the map registry's network maps), with the MIP (M), with
NIHSS (N); :func:`input_set` gives each one's maps."""


def input_set(inputs: str) -> tuple[tuple[str, ...], bool]:
    """The maps of the input set ``inputs`` (the registry's network maps, then the MIP for ``+M``) and whether
    NIHSS is an input."""
    if inputs not in INPUT_SETS:
        raise ValueError(f"inputs must be one of {', '.join(INPUT_SETS)}, got {inputs!r}.")
    parts = inputs.split("+")
    return (*network_maps(), *(("mip",) if "M" in parts else ())), "N" in parts


FINETUNING_SCHEDULES = {
    "frozen": ("frozen",),
    "unfrozen": ("all",),
    "gradual": ("frozen", "half", "all"),
    "gradual_full": ("frozen", "all"),
}
"""Fine-tuning modes as the sequence of encoder stages a training run goes through."""


def conv_relu(in_channels: int, out_channels: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]


def init_relu_layers(module: nn.Module) -> None:
    """He (Kaiming) initialisation of every conv, transposed conv and linear layer of the non-VGG parts,
    so the signal (NIHSS included) keeps its scale through the ReLU decoder at initialisation."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)


def bottleneck_head(in_channels: int, dropout: float, width: float = 1.0) -> nn.Sequential:
    """The two 3x3 convolutions (128 times ``width``) and dropout after each encoder."""
    out = scaled(128, width)
    return nn.Sequential(*conv_relu(in_channels, out), *conv_relu(out, out), nn.Dropout(dropout))


class NIHSSBranch(nn.Module):
    """NIHSS (B, 1) -> Dense(100) -> Dense(grid x grid) -> one channel resized to the bottleneck grid."""

    def __init__(self, grid: int = 16) -> None:
        super().__init__()
        self.grid = grid
        self.dense = nn.Sequential(
            nn.Linear(1, 100), nn.ReLU(inplace=True), nn.Linear(100, grid * grid), nn.ReLU(inplace=True)
        )

    def forward(self, nihss: torch.Tensor, size: list[int]) -> torch.Tensor:
        x = self.dense(nihss.reshape(-1, 1).float() / 42.0).reshape(-1, 1, self.grid, self.grid)
        if size[0] != self.grid or size[1] != self.grid:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class FusionDecoder(nn.Module):
    """Transposed-convolution decoder fusing one skip tensor per level (deepest first) into 3-class logits.

    Args:
        bottleneck_channels: channels of the fused bottleneck (stride 32).
        skip_channels: channels of the skips at strides 1, 2, 4, 8, 16.
        n_encoders: number of image encoders (the filters of each level are 128/64/32/16 times it).
        n_classes: output classes.
        encoder_width: the encoders' width (the decoder's filters scale with it, the 16-filter head does not).
    """

    def __init__(
        self,
        bottleneck_channels: int,
        skip_channels: Sequence[int],
        n_encoders: int,
        n_classes: int = 3,
        encoder_width: float = 1.0,
    ) -> None:
        super().__init__()
        up = scaled(256, encoder_width)
        self.up = nn.Sequential(nn.ConvTranspose2d(bottleneck_channels, up, 2, stride=2), nn.ReLU(inplace=True))
        channels = up + skip_channels[4]
        levels = []
        for filters, skip in zip((128, 64, 32, 16), reversed(skip_channels[:4])):
            f = scaled(filters * n_encoders, encoder_width)
            levels.append(
                nn.Sequential(
                    *conv_relu(channels, f),
                    *conv_relu(f, f),
                    nn.ConvTranspose2d(f, f, 2, stride=2),
                    nn.ReLU(inplace=True),
                )
            )
            channels = f + skip
        self.levels = nn.ModuleList(levels)
        self.head = nn.Sequential(*conv_relu(channels, 16), *conv_relu(16, 16), nn.Conv2d(16, n_classes, 1))

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([self.up(bottleneck), skips[4]], dim=1)
        level = 3
        for block in self.levels:
            x = torch.cat([block(x), skips[level]], dim=1)
            level -= 1
        return self.head(x)


class FineTunableEncoders(nn.Module):
    """What the three networks share: input maps and colour encoding, the NIHSS branch, input checks, and
    the fine-tuning stages ``frozen`` (no VGG weight trains), ``half`` (blocks 4-5 of every encoder train)
    and ``all``. Non-VGG layers always train. A network defines its encoders in :meth:`_build_encoders`;
    the NIHSS branch and the fusion decoder follow.

    Args:
        maps: input channels in order (names of the map registry; default its network maps).
        use_nihss: take NIHSS as an extra input.
        n_classes: output classes (healthy, penumbra, core).
        pretrained: ImageNet weights for the encoders: True (download), False, or a state-dict path.
        dropout: dropout after each encoder's bottleneck convolutions.
        windows, lut: colour encoding of the maps (:class:`scripts.learning.model.encoding.PerfusionColourEncoding`).
        encoder_width: filters of every VGG-16 encoder, its bottleneck head and the decoder relative to the
            paper's network (1); same topology, slow fusion and skips at any width (:mod:`scripts.learning.model.vgg`).
    """

    __jit_unused_properties__ = ["pretrained"]

    def __init__(
        self,
        maps: Sequence[str] | None = None,
        use_nihss: bool = True,
        n_classes: int = 3,
        pretrained: bool | str | os.PathLike = False,
        dropout: float = 0.25,
        windows: Mapping[str, Sequence[float]] | None = None,
        lut: str = "jet",
        encoder_width: float = 1.0,
    ) -> None:
        super().__init__()
        self.encoder_width = check_width(encoder_width)
        self.maps = list(network_maps() if maps is None else maps)
        self.use_nihss = bool(use_nihss)
        self.encoding = PerfusionColourEncoding(self.maps, windows, lut)
        self.finetuning_stage = "all"
        bottleneck_channels, skips, n_encoders = self._build_encoders(pretrained, dropout)
        self.nihss_branch = NIHSSBranch() if self.use_nihss else None
        self.decoder = FusionDecoder(
            bottleneck_channels + int(self.use_nihss), skips, n_encoders, n_classes, self.encoder_width
        )
        self._init_new_layers()

    def _build_encoders(self, pretrained: bool | str | os.PathLike, dropout: float) -> tuple[int, list[int], int]:
        """Register the encoders (and their heads); return the decoder's bottleneck channels (without NIHSS),
        skip channels per level and number of image encoders."""
        raise NotImplementedError

    def _init_new_layers(self) -> None:
        """He-initialise every part that is not an encoder (or the fixed colour encoding), NIHSS last."""
        for name, child in self.named_children():
            if name not in ("encoders", "encoding", "nihss_branch"):
                init_relu_layers(child)
        if self.nihss_branch is not None:
            init_relu_layers(self.nihss_branch)

    def set_finetuning(self, stage: str) -> None:
        """Set which VGG weights train; call per stage, then build the optimizer on trainable parameters."""
        if stage not in ("frozen", "half", "all"):
            raise ValueError(f"fine-tuning stage must be 'frozen', 'half' or 'all', got {stage!r}.")
        for encoder in self.encoders:
            for p in encoder.parameters():
                p.requires_grad_(stage == "all")
            if stage == "half":
                for p in encoder.deep_half():
                    p.requires_grad_(True)
        self.finetuning_stage = stage

    @property
    def pretrained(self) -> bool:
        """True when every encoder started from ImageNet weights."""
        return all(encoder.pretrained for encoder in self.encoders)

    def _check_input(self, image: torch.Tensor, nihss: torch.Tensor | None) -> None:
        if image.dim() != 4 or image.shape[1] != len(self.maps):
            raise ValueError(
                "expected image (B, "
                + str(len(self.maps))
                + ", H, W) with channels "
                + ", ".join(self.maps)
                + "; got shape "
                + str(list(image.shape))
            )
        h, w = image.shape[2], image.shape[3]
        if h % 32 != 0 or w % 32 != 0:
            raise ValueError(
                "input H x W = "
                + str(h)
                + " x "
                + str(w)
                + " is not divisible by 32; pad it to "
                + str((h + 31) // 32 * 32)
                + " x "
                + str((w + 31) // 32 * 32)
                + " (e.g. monai.transforms.DivisiblePadd(k=32))"
            )
        if self.use_nihss and nihss is None:
            raise ValueError("this network takes NIHSS: call it with nihss=(B, 1) tensor of scores 0-42")

    def _fuse_nihss(self, bottleneck: torch.Tensor, nihss: torch.Tensor | None) -> torch.Tensor:
        if self.nihss_branch is not None and nihss is not None:
            size = [bottleneck.shape[2], bottleneck.shape[3]]
            score = self.nihss_branch(nihss, size)
            if score.shape[0] == 1 and bottleneck.shape[0] > 1:  # one patient's slices batched by SliceInferer
                score = score.expand(bottleneck.shape[0], -1, -1, -1)
            bottleneck = torch.cat([bottleneck, score], dim=1)
        return bottleneck


class SlowFusionNet(FineTunableEncoders):
    """SF: one VGG-16 per map, every level's features of all encoders concatenated into the decoder
    (arguments: :class:`FineTunableEncoders`)."""

    def _build_encoders(self, pretrained: bool | str | os.PathLike, dropout: float) -> tuple[int, list[int], int]:
        n = len(self.maps)
        w = self.encoder_width
        weights = load_vgg16_state(pretrained)  # one download or read for all encoders
        self.encoders = nn.ModuleList([VGG16Encoder(weights if weights is not None else False, w) for _ in range(n)])
        self.heads = nn.ModuleList([bottleneck_head(scaled(512, w), dropout, w) for _ in range(n)])
        return scaled(128, w) * n, [c * n for c in skip_channels(w)], n

    def forward(self, image: torch.Tensor, nihss: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(image, nihss)
        colour = self.encoding(image)
        per_level: list[list[torch.Tensor]] = [[], [], [], [], []]
        fused: list[torch.Tensor] = []
        i = 0
        for encoder in self.encoders:
            skips, bottom = encoder(colour[:, i])
            for level in range(5):
                per_level[level].append(skips[level])
            fused.append(bottom)
            i += 1
        i = 0
        for head in self.heads:
            fused[i] = head(fused[i])
            i += 1
        bottleneck = self._fuse_nihss(torch.cat(fused, dim=1), nihss)
        return self.decoder(bottleneck, [torch.cat(level, dim=1) for level in per_level])


class EarlyFusionNet(FineTunableEncoders):
    """EF: colour-encoded maps concatenated on channels, a 3x3 convolution to 3 channels, one VGG-16."""

    def _build_encoders(self, pretrained: bool | str | os.PathLike, dropout: float) -> tuple[int, list[int], int]:
        self.squeeze = nn.Sequential(*conv_relu(3 * len(self.maps), 3))
        w = self.encoder_width
        self.encoders = nn.ModuleList([VGG16Encoder(pretrained, w)])
        self.head = bottleneck_head(scaled(512, w), dropout, w)
        return scaled(128, w), list(skip_channels(w)), 1

    def forward(self, image: torch.Tensor, nihss: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(image, nihss)
        x = self.squeeze(self.encoding(image).flatten(1, 2))
        skips: list[torch.Tensor] = []
        bottom = x
        for encoder in self.encoders:
            skips, bottom = encoder(x)
        return self.decoder(self._fuse_nihss(self.head(bottom), nihss), skips)


class InflatedFusionNet(FineTunableEncoders):
    """EFI: colour-encoded maps stacked along depth through an I3D-inflated VGG-16; depth folded into
    channels before the 2D decoder."""

    def _build_encoders(self, pretrained: bool | str | os.PathLike, dropout: float) -> tuple[int, list[int], int]:
        w = self.encoder_width
        self.encoders = nn.ModuleList([InflatedVGG16Encoder(pretrained, w)])
        depths = InflatedVGG16Encoder.depths(len(self.maps))
        self.head = bottleneck_head(scaled(512, w) * depths[5], dropout, w)
        return scaled(128, w), [c * d for c, d in zip(skip_channels(w), depths)], 1

    def forward(self, image: torch.Tensor, nihss: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(image, nihss)
        video = self.encoding(image).transpose(1, 2)  # (B, 3, D = maps, H, W)
        skips: list[torch.Tensor] = []
        bottom = video
        for encoder in self.encoders:
            skips, bottom = encoder(video)
        return self.decoder(self._fuse_nihss(self.head(bottom), nihss), skips)


VARIANTS = {"SF": SlowFusionNet, "EF": EarlyFusionNet, "EFI": InflatedFusionNet}


def create_network(variant: str = "SF", inputs: str = "PMs+N", **kwargs) -> FineTunableEncoders:
    """Build a network by the paper's names: ``variant`` SF/EF/EFI, ``inputs`` PMs, PMs+M, PMs+N, PMs+M+N."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
    maps, use_nihss = input_set(inputs)
    return VARIANTS[variant](maps=maps, use_nihss=use_nihss, **kwargs)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should see in the current fine-tuning stage."""
    return [p for p in model.parameters() if p.requires_grad]
