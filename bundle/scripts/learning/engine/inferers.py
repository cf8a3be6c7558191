"""Inferers MONAI lacks: slice-by-slice inference that forwards keyword inputs (NIHSS) to the network and
sizes its slice batches to the memory the device has free."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.inferers import SliceInferer

logger = logging.getLogger(__name__)

PROBE_SIZE = 64
"""Side of the square slice on which :func:`slice_bytes` measures a network's activations."""


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes that ``device`` can still allocate: a GPU's free memory plus what PyTorch's cache holds unused;
    for the CPU, ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup's (container's) memory limit."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):  # no cgroup v2 limit
        pass
    return max(int(free), 0)


def slice_bytes(network: Callable[..., Any], channels: int, device: str | torch.device = "cpu", **kwargs: Any) -> int:
    """Bytes of activations ``network`` produces for one ``PROBE_SIZE``² slice of ``channels`` maps: the sum of
    every leaf module's outputs in one forward pass (an upper bound of what is alive at once without gradients,
    the exact retained total with them). Activations grow with the slice's area; scale by it."""
    total = 0

    def count(module: torch.nn.Module, _: Any, output: Any) -> None:
        nonlocal total
        if next(module.children(), None) is None:
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            total += sum(o.numel() * o.element_size() for o in outputs if isinstance(o, torch.Tensor))

    probe = torch.zeros(1, channels, PROBE_SIZE, PROBE_SIZE, device=device)
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        network(probe, **kwargs)
    finally:
        handle.remove()
    return total


class KeywordSliceInferer(SliceInferer):
    """``SliceInferer`` that passes keyword arguments (e.g. ``nihss``) on to the network, and with
    ``sw_batch_size="auto"`` sends as many slices at once as fit in ``memory_fraction`` of the free memory.

    MONAI 1.6's ``SliceInferer`` drops keyword arguments; here they are bound to the network before the volume
    is cut into 2D slices, so every slice of a patient sees that patient's NIHSS. The automatic batch is
    ``memory_fraction`` × :func:`available_memory` over the estimated bytes of one slice (:func:`slice_bytes`
    scaled to the volume's slice area), between 1 and the number of slices; the estimate is measured once
    per network.
    """

    def __init__(self, *args: Any, sw_batch_size: int | str = 1, memory_fraction: float = 0.5, **kwargs: Any):
        positive_int = isinstance(sw_batch_size, int) and not isinstance(sw_batch_size, bool) and sw_batch_size >= 1
        if sw_batch_size != "auto" and not positive_int:
            raise ValueError(f"sw_batch_size must be a positive integer or 'auto', got {sw_batch_size!r}.")
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}.")
        super().__init__(*args, sw_batch_size=1 if sw_batch_size == "auto" else sw_batch_size, **kwargs)
        self.auto_batch, self.memory_fraction = sw_batch_size == "auto", memory_fraction
        self._probe: tuple[int, int] | None = None  # (id of the network, bytes per PROBE_SIZE² slice)
        self._said: tuple[int, int] | None = None  # the last slice batch logged

    def slice_batch(self, inputs: torch.Tensor, network: Callable[..., Any], **kwargs: Any) -> int:
        """Slices per forward pass for ``inputs`` (B, C, H, W, D) sliced along ``spatial_dim``."""
        spatial = list(inputs.shape[2:])
        n_slices = spatial.pop(self.spatial_dim) * inputs.shape[0]
        if self._probe is None or self._probe[0] != id(network):
            first = {k: v[:1] if isinstance(v, torch.Tensor) and v.ndim else v for k, v in kwargs.items()}
            self._probe = (id(network), slice_bytes(network, inputs.shape[1], inputs.device, **first))
        per_slice = self._probe[1] * spatial[0] * spatial[1] / PROBE_SIZE**2
        free = available_memory(inputs.device)
        batch = max(1, min(n_slices, int(self.memory_fraction * free // max(per_slice, 1))))
        # said once, and again when it changes (not once per patient)
        changed, self._said = self._said != (batch, n_slices), (batch, n_slices)
        (logger.info if changed else logger.debug)(
            "slice batch %d of %d slices (%.2f GB of activations per %dx%d slice, %.1f GB free on %s)",
            batch,
            n_slices,
            per_slice / 1e9,
            *spatial,
            free / 1e9,
            inputs.device,
        )
        return batch

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if self.auto_batch:
            self.sw_batch_size = self.slice_batch(inputs, network, **kwargs)
        if kwargs:
            network = functools.partial(network, **kwargs)
        return super().__call__(inputs, network, *args)
