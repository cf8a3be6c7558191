"""Turn quantitative perfusion maps into the 3-channel images an ImageNet encoder expects.

The paper fed the vendor's colour-coded maps (RGB images with a fixed window and a rainbow colour bar) to
ImageNet VGG-16 encoders. :class:`PerfusionColourEncoding` does the same from maps in physical units: each
map is clipped to a fixed physiological window, scaled to [0, 1], passed through a colour lookup table
(``"jet"``, the rainbow of vendor maps, or ``"gray"``, which repeats the value on three channels) and
normalised with the ImageNet mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...io.map_registry import display_windows

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerfusionColourEncoding(nn.Module):
    """Map ``(B, C, H, W)`` physical-unit maps to ``(B, C, 3, H, W)`` ImageNet-normalised colour images.

    Args:
        maps: names of the input channels, in order (e.g. ``("cbf", "cbv", "ttp", "tmax")``).
        windows: per-map display window overriding the map registry's
            (:func:`scripts.io.map_registry.display_windows`).
        lut: ``"jet"`` (vendor-like rainbow) or ``"gray"`` (value repeated on three channels).
    """

    def __init__(
        self,
        maps: Sequence[str],
        windows: Mapping[str, Sequence[float]] | None = None,
        lut: str = "jet",
    ) -> None:
        super().__init__()
        if lut not in ("jet", "gray"):
            raise ValueError(f"lut must be 'jet' or 'gray', got {lut!r}.")
        chosen = {**display_windows(), **{k: tuple(v) for k, v in (windows or {}).items()}}
        unknown = [m for m in maps if m not in chosen]
        if unknown:
            raise ValueError(f"no display window for map(s) {unknown}; pass windows={{name: (low, high)}}.")
        low = torch.tensor([float(chosen[m][0]) for m in maps])
        high = torch.tensor([float(chosen[m][1]) for m in maps])
        if bool((high <= low).any()):
            raise ValueError(f"each window must have high > low, got {[chosen[m] for m in maps]}.")
        self.lut = lut
        self.register_buffer("low", low.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("span", (high - low).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = ((maps - self.low) / self.span).clamp(0.0, 1.0).unsqueeze(2)  # (B, C, 1, H, W)
        if self.lut == "jet":
            centres = torch.tensor([3.0, 2.0, 1.0], device=maps.device, dtype=maps.dtype).view(1, 1, 3, 1, 1)
            rgb = (1.5 - (4.0 * x - centres).abs()).clamp(0.0, 1.0)
        else:
            rgb = x.expand(-1, -1, 3, -1, -1)
        return (rgb - self.mean) / self.std
