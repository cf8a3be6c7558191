"""Lesion islands below a minimum volume dropped from a label map, as every workflow's last post-processing step.

A predicted island of a millilitre or two (penumbra and core together, face-connected in 3D) is noise to a reader,
and in a patient without a lesion it turns "no penumbra" into "penumbra present". Inference and evaluation drop
islands under :data:`MIN_LESION_ML` with MONAI's ``RemoveSmallObjectsd`` (``by_measure``, ``independent_channels``
false: the island is measured over both classes and keeps its classes); :func:`drop_small_lesions` is the same
transform for label arrays outside a MONAI pipeline (the voxel baseline, the benchmarks). The volume was chosen on a
development cohort, not the test cohort (``bundle/docs/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.transforms import RemoveSmallObjects

MIN_LESION_ML = 2.0
"""Smallest lesion island kept (ml)."""


def drop_small_lesions(label: np.ndarray, spacing: Sequence[float], min_ml: float = MIN_LESION_ML) -> np.ndarray:
    """``label`` (X, Y, Z; 0 background) without its lesion islands under ``min_ml``; voxel ``spacing`` in mm."""
    if min_ml <= 0:
        return label
    remove = RemoveSmallObjects(
        min_size=min_ml * 1000.0, connectivity=1, independent_channels=False, by_measure=True, pixdim=spacing[:3]
    )
    return np.asarray(remove(np.asarray(label)[None]))[0].astype(label.dtype)
