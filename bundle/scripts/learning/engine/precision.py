"""The numeric precision a network computes in: bfloat16 autocast where the device computes it natively.

Training (``train.json``: ``precision``) and inference (``inference.json``: ``precision``) share it: ``auto`` is bf16
on a CPU with native bf16 kernels (AVX512-BF16, AMX, Arm bf16) and fp32 elsewhere, because emulated bf16 (AVX2)
is far slower than fp32. Weights stay fp32 either way; only the forward's matrix products run in bf16, and its
output is returned in fp32 so that losses and softmax see full precision.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU with bf16, or a CPU whose oneDNN has bf16
    kernels (AVX512-BF16, AMX, Arm bf16). Elsewhere bf16 is emulated, e.g. 150x slower than fp32 on AVX2."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return bool(torch.cpu._is_avx512_bf16_supported())


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``precision`` with ``auto`` resolved: bf16 where ``device`` computes it natively, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
        logger.info("precision auto: %s on %s (%s)", precision, device, torch.backends.cpu.get_cpu_capability())
    return precision


class FastForward(torch.nn.Module):
    """A network with speed options: bfloat16 autocast and channels-last memory layout (2D convolutions).

    On CPUs with bfloat16 support, channels-last + bf16 runs SF at 512² several times faster than fp32 at
    inference and a training step about 1.6x faster (see the model card); labels can differ from fp32 at a few
    boundary voxels (``benchmarks/inference_agreement.py --candidate "--precision bf16"`` measures by how much).
    The wrapped network keeps its own state dict: checkpoints save and load it, not this wrapper.
    """

    def __init__(self, network: torch.nn.Module, precision: str = "fp32", channels_last: bool = False) -> None:
        super().__init__()
        precision = resolve_precision(precision, next(network.parameters()).device)
        self.network, self.precision, self.channels_last = network, precision, bool(channels_last)
        if self.channels_last:  # 2D convolutions only (EFI's 3D ones keep their layout)
            for module in self.network.modules():
                if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor, nihss: torch.Tensor | None = None) -> torch.Tensor:
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return self.network(image, nihss)
        with torch.autocast(device_type=image.device.type, dtype=torch.bfloat16):
            return self.network(image, nihss).float()


def with_precision(network: torch.nn.Module, precision: str = "auto", channels_last: bool = False) -> torch.nn.Module:
    """``network`` itself when it runs in fp32 with its own layout, else wrapped in :class:`FastForward`."""
    precision = resolve_precision(precision, next(network.parameters()).device)
    return network if precision == "fp32" and not channels_last else FastForward(network, precision, channels_last)
