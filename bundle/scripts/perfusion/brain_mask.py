"""Brain mask from the temporal MIP, as a MONAI transform for pre- and post-processing configs.

The paper forced the predicted lesion inside a brain mask made from the MIP (the original code kept
pixels whose displayed MIP was > 0). From a MIP in HU: keep voxels inside ``hu_range`` (air is about
-1000 HU, bone several hundred and more, brain 20-80 HU), fill holes slice by slice (ventricles, vessels
inside the brain), and keep the largest 3D connected component (drops scalp and neck soft tissue
separated from the brain by the skull). ``method="otsu"`` instead thresholds the MIP clipped to the
window at Otsu's level (for MIPs whose soft-tissue range is not known), then fills and keeps the
largest component. Force a prediction inside the mask with MONAI's
``MaskIntensityd(keys="pred", mask_key="brain")``. :func:`brain_crop` gives the networks only the brain's
bounding box (MONAI's crop and pad, inverted by ``Invertd``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import CropForegroundd, DivisiblePadd, MapTransform
from monai.transforms.utils import is_positive
from monai.utils import convert_to_numpy
from scipy import ndimage


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (maximises the between-class variance of a histogram)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centres) / np.maximum(weight_low, 1)
    mean_high = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def brain_mask_from_mip(
    mip: np.ndarray,
    hu_range: Sequence[float] = (-10.0, 150.0),
    method: str = "threshold",
    fill_holes: bool = True,
    largest_component: bool = True,
) -> np.ndarray:
    """Boolean brain mask ``(X, Y, Z)`` from a MIP in HU (see the module docstring)."""
    mip = np.asarray(mip, dtype=np.float32)
    if mip.ndim != 3:
        raise ValueError(f"mip must be 3D (X, Y, slices), got shape {mip.shape}.")
    lo, hi = float(hu_range[0]), float(hu_range[1])
    if method == "threshold":
        mask = (mip >= lo) & (mip <= hi)
    elif method == "otsu":
        inside = (mip >= lo) & (mip <= hi)
        mask = inside & (mip > otsu_threshold(mip[inside])) if inside.any() else inside
    else:
        raise ValueError(f"method must be 'threshold' or 'otsu', got {method!r}.")
    if fill_holes:
        for z in range(mask.shape[2]):
            mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    if largest_component and mask.any():
        labels, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(np.argmax(sizes))
    return mask


class BrainMaskFromMIPd(MapTransform):
    """Add ``mask_key`` (1, X, Y, Z) uint8 brain mask computed from the channel-first MIP at ``keys``.

    Args:
        keys: the MIP key (one).
        mask_key: where to store the mask.
        hu_range, method, fill_holes, largest_component: see :func:`brain_mask_from_mip`.
    """

    def __init__(
        self,
        keys: KeysCollection = "mip",
        mask_key: str = "brain",
        hu_range: Sequence[float] = (-10.0, 150.0),
        method: str = "threshold",
        fill_holes: bool = True,
        largest_component: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.options = {
            "hu_range": hu_range,
            "method": method,
            "fill_holes": fill_holes,
            "largest_component": largest_component,
        }

    def __call__(self, data: Mapping[Hashable, torch.Tensor | np.ndarray]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = convert_to_numpy(image)
            channels = [brain_mask_from_mip(array[c], **self.options) for c in range(array.shape[0])]
            mask = np.stack(channels).astype(np.uint8)
            if isinstance(image, MetaTensor):
                d[self.mask_key] = MetaTensor(
                    torch.as_tensor(mask),
                    affine=image.affine,
                    meta={k: v for k, v in image.meta.items() if k != "affine"},
                )
            elif isinstance(image, torch.Tensor):
                d[self.mask_key] = torch.as_tensor(mask, device=image.device)
            else:
                d[self.mask_key] = mask
        return d


def _everywhere(brain: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(brain, dtype=torch.bool)


def brain_crop(
    keys: KeysCollection, enabled: bool = True, margin: int = 8, source_key: str = "brain", multiple: int = 32
) -> list[MapTransform]:
    """MONAI's crop to the brain's bounding box (the ``source_key`` mask plus ``margin`` pixels in-plane; slices
    without brain dropped) and pad to a multiple of ``multiple`` in-plane, on ``keys``. Not ``enabled``: whole
    slices, padded alike. Both are invertible (``Invertd`` pastes predictions back onto the input grid)."""
    select = is_positive if enabled else _everywhere
    return [
        CropForegroundd(
            keys,
            source_key=source_key,
            select_fn=select,
            margin=[margin, margin, 0] if enabled else 0,
            allow_smaller=True,
        ),
        DivisiblePadd(keys, k=[multiple, multiple, 1]),
    ]
