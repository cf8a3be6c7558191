"""Turn quantitative perfusion maps into the 3-channel images an ImageNet encoder expects.

The paper fed the vendor's colour-coded maps (RGB images with a fixed window and a rainbow colour bar) to
ImageNet VGG-16 encoders. :class:`PerfusionColourEncoding` does the same from maps in physical units: each
map is clipped to a fixed physiological window, scaled to [0, 1], passed through a colour lookup table
(``"jet"``, the rainbow of vendor maps, or ``"gray"``, which repeats the value on three channels) and
normalised with the ImageNet mean and standard deviation.

With ``slab=3`` (2.5D input) each map arrives as three neighbouring slices (the slice below, the slice, the
slice above; :class:`NeighbourSlicesd`) and the three slices, each windowed to [0, 1], become the encoder's
three colour channels in place of a colour lookup table.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import MapTransform
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
        slab: slices per map (1, or 3 for 2.5D input, whose three slices are the three channels).
    """

    def __init__(
        self,
        maps: Sequence[str],
        windows: Mapping[str, Sequence[float]] | None = None,
        lut: str = "jet",
        slab: int = 1,
    ) -> None:
        super().__init__()
        if lut not in ("jet", "gray"):
            raise ValueError(f"lut must be 'jet' or 'gray', got {lut!r}.")
        if slab not in (1, 3):
            raise ValueError(f"slab must be 1 or 3 slices per map, got {slab!r}.")
        self.slab = slab
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
        if self.slab == 3:  # (B, C x 3, H, W): each map's three slices are its colour channels
            slices = maps.unflatten(1, (-1, 3))
            return ((slices - self.low.unsqueeze(2)) / self.span.unsqueeze(2)).clamp(0.0, 1.0).sub(self.mean).div(self.std)
        x = ((maps - self.low) / self.span).clamp(0.0, 1.0).unsqueeze(2)  # (B, C, 1, H, W)
        if self.lut == "jet":
            centres = torch.tensor([3.0, 2.0, 1.0], device=maps.device, dtype=maps.dtype).view(1, 1, 3, 1, 1)
            rgb = (1.5 - (4.0 * x - centres).abs()).clamp(0.0, 1.0)
        else:
            rgb = x.expand(-1, -1, 3, -1, -1)
        return (rgb - self.mean) / self.std


def neighbour_slices(image: torch.Tensor, slab: int = 3) -> torch.Tensor:
    """``(C, H, W, D)`` maps to ``(C x slab, H, W, D)``: every channel followed by its neighbours along D, in
    order (slice below, slice, slice above for ``slab=3``), the end slices repeated at the volume's edges."""
    if slab == 1:
        return image
    half = slab // 2
    padded = torch.cat([image[..., :1]] * half + [image] + [image[..., -1:]] * half, dim=-1)
    depth = image.shape[-1]
    return torch.stack([padded[..., k : k + depth] for k in range(slab)], dim=1).flatten(0, 1)


class NeighbourSlicesd(MapTransform):
    """Dictionary transform of :func:`neighbour_slices` (2.5D input); ``slab=1`` leaves the data as it is."""

    def __init__(self, keys: Hashable | Sequence[Hashable], slab: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if slab not in (1, 3):
            raise ValueError(f"slab must be 1 or 3 slices per map, got {slab!r}.")
        self.slab = slab

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = neighbour_slices(d[key], self.slab)
        return d
