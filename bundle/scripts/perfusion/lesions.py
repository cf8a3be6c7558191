"""Lesion islands below a minimum volume dropped from a label map, and core islands below another read as penumbra,
as every workflow's last post-processing steps.

A predicted island of a millilitre or two (penumbra and core together, face-connected in 3D) is noise to a reader,
and in a patient without a lesion it turns "no penumbra" into "penumbra present". Inference and evaluation drop
islands under :data:`MIN_LESION_ML` with MONAI's ``RemoveSmallObjectsd`` (``by_measure``, ``independent_channels``
false: the island is measured over both classes and keeps its classes). Then a core island (core voxels,
face-connected in 3D) under :data:`MIN_CORE_ML` becomes penumbra (:class:`SmallCoresToPenumbrad`): the tissue stays
hypoperfused, but a few scattered core voxels do not make a core, and in a patient without one they turn "no core"
into "core present". :func:`drop_small_lesions` is both steps for label arrays outside a MONAI pipeline (the voxel
baseline, the benchmarks). Both volumes were chosen on a development cohort, not the test cohort
(``bundle/docs/README.md``, *Results*).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RemoveSmallObjects
from monai.utils import convert_to_dst_type

MIN_LESION_ML = 2.0
"""Smallest lesion island kept (ml)."""

MIN_CORE_ML = 3.0
"""Smallest core island kept as core (ml); a smaller one is labelled penumbra."""

PENUMBRA, CORE = 1, 2
"""Label values of the two lesion classes."""


def small_cores_to_penumbra(
    label: np.ndarray, spacing: Sequence[float] | None, min_ml: float = MIN_CORE_ML
) -> np.ndarray:
    """``label`` (X, Y, Z) with its core islands (face-connected in 3D) under ``min_ml`` labelled penumbra; voxel
    ``spacing`` in mm (``None``: unknown, MONAI's ``RemoveSmallObjects`` rule: it warns and takes 1 mm)."""
    label = np.asarray(label)
    if min_ml <= 0:
        return label
    core = label == CORE
    pixdim = None if spacing is None else spacing[:3]
    remove = RemoveSmallObjects(min_size=min_ml * 1000.0, connectivity=1, by_measure=True, pixdim=pixdim)
    kept = np.asarray(remove(core[None]))[0].astype(bool)
    return np.where(core & ~kept, PENUMBRA, label).astype(label.dtype)


class SmallCoresToPenumbrad(MapTransform):
    """:func:`small_cores_to_penumbra` on channel-first label maps (one channel), the voxel size from the
    MetaTensor's affine (a plain tensor: MONAI's warning, 1 mm)."""

    def __init__(self, keys: KeysCollection, min_ml: float = MIN_CORE_ML, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_ml = min_ml

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            spacing = [float(s) for s in label.pixdim] if isinstance(label, MetaTensor) else None
            values = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
            out = small_cores_to_penumbra(values[0], spacing, self.min_ml)[None]
            d[key] = convert_to_dst_type(out, label)[0]
        return d


def drop_small_lesions(
    label: np.ndarray, spacing: Sequence[float], min_ml: float = MIN_LESION_ML, min_core_ml: float = MIN_CORE_ML
) -> np.ndarray:
    """``label`` (X, Y, Z; 0 background) without its lesion islands under ``min_ml`` and with its core islands under
    ``min_core_ml`` labelled penumbra, as the workflows' post-processing leaves it; voxel ``spacing`` in mm."""
    if min_ml > 0:
        remove = RemoveSmallObjects(
            min_size=min_ml * 1000.0, connectivity=1, independent_channels=False, by_measure=True, pixdim=spacing[:3]
        )
        label = np.asarray(remove(np.asarray(label)[None]))[0].astype(label.dtype)
    return small_cores_to_penumbra(label, spacing, min_core_ml)
