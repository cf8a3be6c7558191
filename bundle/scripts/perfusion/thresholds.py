"""The RAPID-like threshold baseline: what hospitals use today, with the same interface as the networks.

Per patient volume, inside the brain mask:

- **normal tissue** = voxels with Tmax < ``normal_tmax`` (4 s); the reference CBF is their median
  (RAPID and OpenPerfusion use the less hypoperfused hemisphere or such a region; a region defined by
  Tmax needs no midline and works with bilateral or absent lesions);
- **hypoperfused** = Tmax > ``hypoperfused_tmax`` (6 s);
- **core** = relative CBF (CBF / reference) < ``core_rcbf`` (0.30) *within the hypoperfused region*
  (low-flow voxels without delay are CSF, sulci or old infarcts, not acute core; as in Lin et al. 2016);
- **penumbra** = hypoperfused minus core.

:class:`ThresholdSegmentation` is an ``nn.Module`` taking the stacked maps ``(B, C, H, W, D)`` named by its
``maps`` (the config's ``image_keys``; CBF and Tmax are found by name) and a ``brain`` mask keyword, and
returning one-hot scores ``(B, 3, H, W, D)``, so the inference and evaluation configs run it exactly like a
network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.utils import convert_to_numpy
from torch import nn

from ..io.map_registry import channel, network_maps


def threshold_labels(
    cbf: np.ndarray,
    tmax: np.ndarray,
    brain: np.ndarray | None = None,
    core_rcbf: float = 0.30,
    hypoperfused_tmax: float = 6.0,
    normal_tmax: float = 4.0,
) -> np.ndarray:
    """Label volume (0 healthy, 1 penumbra, 2 core) from CBF and Tmax by the thresholds of the module docstring."""
    cbf, tmax = np.asarray(cbf, dtype=np.float32), np.asarray(tmax, dtype=np.float32)
    if cbf.shape != tmax.shape:
        raise ValueError(f"cbf {cbf.shape} and tmax {tmax.shape} must have the same shape.")
    brain = np.ones(cbf.shape, bool) if brain is None else np.asarray(brain, bool)
    hypoperfused = brain & (tmax > hypoperfused_tmax)
    normal = brain & (tmax < normal_tmax) & (cbf > 0)
    label = np.zeros(cbf.shape, np.uint8)
    label[hypoperfused] = 1
    if normal.any():
        reference = float(np.median(cbf[normal]))
        label[hypoperfused & (cbf < core_rcbf * reference)] = 2
    return label


class ThresholdSegmentation(nn.Module):
    """Threshold baseline as a module (no weights): maps in, one-hot healthy/penumbra/core scores out."""

    def __init__(
        self,
        core_rcbf: float = 0.30,
        hypoperfused_tmax: float = 6.0,
        normal_tmax: float = 4.0,
        maps: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.maps = tuple(network_maps() if maps is None else maps)
        self.cbf_channel, self.tmax_channel = channel(self.maps, "cbf"), channel(self.maps, "tmax")
        if not 0 < core_rcbf < 1:
            raise ValueError(f"core_rcbf is a fraction of normal CBF in (0, 1), got {core_rcbf}.")
        if not 0 <= normal_tmax <= hypoperfused_tmax:
            raise ValueError(f"need 0 <= normal_tmax ({normal_tmax}) <= hypoperfused_tmax ({hypoperfused_tmax}).")
        self.core_rcbf, self.hypoperfused_tmax, self.normal_tmax = core_rcbf, hypoperfused_tmax, normal_tmax

    def forward(
        self, image: torch.Tensor, brain: torch.Tensor | None = None, nihss: torch.Tensor | None = None
    ) -> torch.Tensor:
        if image.ndim != 5 or image.shape[1] != len(self.maps):
            raise ValueError(
                f"expected stacked maps {self.maps} as (B, {len(self.maps)}, H, W, D), got {tuple(image.shape)}."
            )
        scores = torch.zeros((image.shape[0], 3, *image.shape[2:]), dtype=torch.float32, device=image.device)
        for b in range(image.shape[0]):
            mask = None if brain is None else convert_to_numpy(brain[b, 0]) > 0
            label = threshold_labels(
                convert_to_numpy(image[b, self.cbf_channel]),
                convert_to_numpy(image[b, self.tmax_channel]),
                mask,
                self.core_rcbf,
                self.hypoperfused_tmax,
                self.normal_tmax,
            )
            scores[b] = nn.functional.one_hot(torch.as_tensor(label, dtype=torch.long), 3).movedim(-1, 0).float()
        return scores
