"""Inferers MONAI lacks: slice-by-slice inference that forwards keyword inputs (NIHSS) to the network."""

from __future__ import annotations

import functools
from typing import Any

import torch
from monai.inferers import SliceInferer


class KeywordSliceInferer(SliceInferer):
    """``SliceInferer`` that passes keyword arguments (e.g. ``nihss``) on to the network.

    MONAI 1.6's ``SliceInferer`` drops them; here they are bound to the network before the volume is cut
    into 2D slices, so every slice of a patient sees that patient's NIHSS.
    """

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            network = functools.partial(network, **kwargs)
        return super().__call__(inputs, network, *args)
