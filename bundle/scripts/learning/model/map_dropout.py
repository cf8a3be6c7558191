"""Map dropout: training slices in which one input map is flattened inside the brain.

A network given CBF and CBV learns core from whichever separates it more easily on the training maps (CBV on the
synthetic cohort) and may then ignore the other: flattening CBF at test time took 10 % off its core. Flattening a
flow map in some training slices, the map replaced inside the brain by its median (the input ablation,
``benchmarks/input_ablation.py``, flattens to the normal-tissue median at test time), pushes the network to find
the core in the other one too (on the synthetic test cohort 2 of 3 seeds then lost half their core with CBF
flattened; the model card's *Input ablation*).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform


class RandMapDropoutd(RandomizableTransform, MapTransform):
    """With probability ``prob``, one of ``maps`` (drawn uniformly) is replaced inside ``brain_key`` by its median
    there, in every image of ``keys``, whose channels are the maps ``channels`` names in order. Maps the image
    does not hold (an input set without them) are never drawn; with none of them the transform does nothing."""

    def __init__(
        self,
        keys: KeysCollection,
        maps: Sequence[str],
        channels: Sequence[str],
        brain_key: str = "brain",
        prob: float = 0.5,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.indices = [list(channels).index(name) for name in maps if name in channels]
        self.brain_key = brain_key
        self._index: int | None = None

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self._index = int(self.R.choice(self.indices)) if self.indices else None

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform or self._index is None:
            return d
        brain = torch.as_tensor(d[self.brain_key])[0] > 0
        if not brain.any():
            return d
        for key in self.key_iterator(d):
            image = d[key].clone()
            image[self._index][brain] = image[self._index][brain].median()
            d[key] = image
        return d
