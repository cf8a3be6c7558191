"""Turn quantitative perfusion maps into the 3-channel images an ImageNet encoder expects.

The paper fed the vendor's colour-coded maps (RGB images with a fixed window and a rainbow colour bar) to
ImageNet VGG-16 encoders. :class:`PerfusionColourEncoding` does the same from maps in physical units: each
map is clipped to a fixed physiological window, scaled to [0, 1], passed through a colour lookup table
(``"jet"``, the rainbow of vendor maps, or ``"gray"``, which repeats the value on three channels) and
normalised with the ImageNet mean and standard deviation.

The windows are part of what a network learned, so they are saved in its state dict (``encoding.low`` and
``encoding.span``) and a checkpoint brings its own when loaded: a model trained with one window is never run with
another. Checkpoints written before windows were saved (bundle versions before 0.13.0) are read with the windows of
those versions (:data:`UNSAVED_WINDOWS`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...io.map_registry import display_windows

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

UNSAVED_WINDOWS = {
    "cbf": (0.0, 80.0),
    "cbv": (0.0, 6.0),
    "ttp": (0.0, 40.0),
    "tmax": (0.0, 12.0),
    "mip": (-20.0, 180.0),
}
"""The windows of the bundle versions that did not save them (before 0.13.0): what a checkpoint without saved windows
was trained with, unless its training overrode them: windows passed to the encoding are taken for those."""

logger = logging.getLogger(__name__)


class PerfusionColourEncoding(nn.Module):
    """Map ``(B, C, H, W)`` physical-unit maps to ``(B, C, 3, H, W)`` ImageNet-normalised colour images.

    Args:
        maps: names of the input channels, in order (e.g. ``("cbf", "cbv", "ttp", "tmax")``).
        windows: per-map display window overriding the map registry's
            (:func:`scripts.io.map_registry.display_windows`); a loaded checkpoint's own windows replace them.
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
        self.maps = tuple(maps)
        self.overrides = {k: tuple(v) for k, v in (windows or {}).items()}
        low, span = self._window_tensors(self.overrides)
        self.lut = lut
        self.register_buffer("low", low, persistent=True)
        self.register_buffer("span", span, persistent=True)
        self.register_load_state_dict_pre_hook(self._checkpoint_windows)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def _window_tensors(self, windows: Mapping[str, Sequence[float]] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``low`` and ``span`` buffers ``(1, C, 1, 1)`` of the registry's windows with ``windows`` over them."""
        chosen = {**display_windows(), **{k: tuple(v) for k, v in (windows or {}).items()}}
        unknown = [m for m in self.maps if m not in chosen]
        if unknown:
            raise ValueError(f"no display window for map(s) {unknown}; pass windows={{name: (low, high)}}.")
        low = torch.tensor([float(chosen[m][0]) for m in self.maps])
        high = torch.tensor([float(chosen[m][1]) for m in self.maps])
        if bool((high <= low).any()):
            raise ValueError(f"each window must have high > low, got {[chosen[m] for m in self.maps]}.")
        return low.view(1, -1, 1, 1), (high - low).view(1, -1, 1, 1)

    def windows(self) -> dict[str, tuple[float, float]]:
        """The windows in use, per map."""
        return self._named(self.low, self.span)

    def _named(self, low: torch.Tensor, span: torch.Tensor) -> dict[str, tuple[float, float]]:
        """``low`` and ``span`` buffers as ``{map: (low, high)}``."""
        return {m: (lo, lo + sp) for m, lo, sp in zip(self.maps, low.flatten().tolist(), span.flatten().tolist())}

    def _checkpoint_windows(self, module: nn.Module, state: dict, prefix: str, *args) -> None:
        """Give a checkpoint without saved windows those of the versions that wrote it (or the ones passed here);
        say when a checkpoint's windows replace the configured ones."""
        missing = [name for name in ("low", "span") if prefix + name not in state]
        if len(missing) == 2:
            low, span = self._window_tensors({**UNSAVED_WINDOWS, **self.overrides})
            state[prefix + "low"], state[prefix + "span"] = low.to(self.low), span.to(self.span)
        elif missing:  # half an entry: load_state_dict names the missing key
            return
        loaded = (state[prefix + "low"], state[prefix + "span"])
        if loaded[0].shape == self.low.shape and loaded[1].shape == self.span.shape:
            if not (torch.equal(loaded[0].to(self.low), self.low) and torch.equal(loaded[1].to(self.span), self.span)):
                theirs = self._named(*loaded)
                logger.warning("the checkpoint's colour windows %s replace the configured %s.", theirs, self.windows())

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = ((maps - self.low) / self.span).clamp(0.0, 1.0).unsqueeze(2)  # (B, C, 1, H, W)
        if self.lut == "jet":
            centres = torch.tensor([3.0, 2.0, 1.0], device=maps.device, dtype=maps.dtype).view(1, 1, 3, 1, 1)
            rgb = (1.5 - (4.0 * x - centres).abs()).clamp(0.0, 1.0)
        else:
            rgb = x.expand(-1, -1, 3, -1, -1)
        return (rgb - self.mean) / self.std
