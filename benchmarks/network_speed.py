"""Benchmark the SF / EF / EFI networks: speed, memory, size, and achieved FLOP/s against a matmul peak.

Each (variant, size) runs in a fresh child process (so its peak memory is its own) with batch 2, inputs
PMs+N, all encoder weights trainable. Printed per row: forward ms per slice (inference mode), forward +
backward ms per step, peak memory (process RSS on CPU, max allocated on GPU), parameters, GMACs per slice,
and achieved GFLOP/s as a ratio to a large fp32 matmul measured in the same run. Then the SF forward at
the largest size under CPU options: channels_last, bf16 autocast, both (no_grad vs inference_mode too).
Uses the GPU when one is present.

``--widths`` adds rows per encoder width (default 1, the paper's network; the bundle's default is 0.25).

Run: python benchmarks/network_speed.py [--sizes 128 256 512 --variants SF EF EFI --widths 1 0.25 --repeats 2]
     python benchmarks/network_speed.py --training-precision 128 0.25 --repeats 5   (fp32 vs bf16 training step)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.learning.model.networks import create_network  # noqa: E402

BATCH = 2
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_macs(net: nn.Module, image: torch.Tensor, nihss: torch.Tensor, trainable_only: bool = False) -> int:
    """Multiply-accumulates of one forward pass (convolutions, transposed convolutions, linear layers), or of
    its layers with trainable weights only."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if trainable_only and not module.weight.requires_grad:
            return
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            total += output.numel() * module.weight[0].numel()
        elif isinstance(module, nn.ConvTranspose2d):
            total += inputs[0].numel() * module.weight[0].numel()
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear))
    ]
    conv3d_hooks = [m for m in net.modules() if m.__class__.__name__ == "InflatedConv3d"]

    def inflated_hook(module, inputs, output):
        nonlocal total
        if trainable_only and not module.weight.requires_grad:
            return
        total += output.numel() * module.weight[0].numel()

    handles += [m.register_forward_hook(inflated_hook) for m in conv3d_hooks]
    with torch.inference_mode():
        net(image, nihss)
    for h in handles:
        h.remove()
    return total


def matmul_peak_gflops(n: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    seconds = timed(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def inputs(size: int, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    scale = torch.tensor([60.0, 5.0, 30.0, 10.0], device=DEVICE).view(1, 4, 1, 1)
    image = torch.rand(batch, 4, size, size, device=DEVICE) * scale
    nihss = torch.full((batch, 1), 12.0, device=DEVICE)
    return image, nihss


def one(variant: str, size: int, repeats: int, width: float = 1.0) -> dict:
    """Measure one configuration (run in a child process)."""
    net = create_network(variant, "PMs+N", encoder_width=width).to(DEVICE)
    image, nihss = inputs(size)
    macs = count_macs(net.eval(), image[:1], nihss[:1])
    net.eval()

    def forward():
        with torch.inference_mode():
            net(image, nihss)

    forward_s = timed(forward, repeats)
    net.train()
    net.set_finetuning("all")
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        net.zero_grad(set_to_none=True)
        net(image, nihss).mean().backward()

    step_s = timed(step, repeats)
    if DEVICE.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    return {
        "variant": variant,
        "width": width,
        "size": size,
        "forward_ms_per_slice": 1000 * forward_s / BATCH,
        "step_ms": 1000 * step_s,
        "peak_gb": peak_gb,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "gmacs": macs / 1e9,
        "gflops": 2 * macs * BATCH / forward_s / 1e9,
    }


def cpu_options(size: int, repeats: int) -> list[tuple[str, float, float]]:
    """SF forward (batch 2) under channels_last / bf16 autocast / no_grad vs inference_mode."""
    net = create_network("SF", "PMs+N").to(DEVICE).eval()
    image, nihss = inputs(size)
    macs = count_macs(net, image[:1], nihss[:1])
    rows = []
    for name, channels_last, bf16, grad_ctx in (
        ("no_grad", False, False, torch.no_grad),
        ("inference_mode", False, False, torch.inference_mode),
        ("inference_mode + channels_last", True, False, torch.inference_mode),
        ("inference_mode + bf16 autocast", False, True, torch.inference_mode),
        ("inference_mode + channels_last + bf16", True, True, torch.inference_mode),
    ):
        layout = torch.channels_last if channels_last else torch.contiguous_format
        for module in net.modules():  # 4D weights only: the colour encoding keeps 5D buffers
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.weight.data = module.weight.data.contiguous(memory_format=layout)
        model = net
        x = image.contiguous(memory_format=layout)

        def run(model=model, x=x, bf16=bf16, grad_ctx=grad_ctx):
            autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if bf16 else nullcontext()
            with grad_ctx(), autocast:
                model(x, nihss)

        seconds = timed(run, repeats)
        rows.append((name, 1000 * seconds / BATCH, 2 * macs * BATCH / seconds / 1e9))
    return rows


def training_precision(size: int, width: float, repeats: int) -> list[tuple[str, float]]:
    """SF training step (forward, backward, Adam step; batch 2, all weights trainable) in fp32 and under bf16
    autocast, ms per step: whether bf16 speeds the bundle's training on this CPU (issue #26)."""
    rows = []
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        torch.manual_seed(0)
        net = create_network("SF", "PMs+N", encoder_width=width).to(DEVICE).train()
        net.set_finetuning("all")
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        image, nihss = inputs(size)

        def step(net=net, optimizer=optimizer, image=image, nihss=nihss, bf16=bf16):
            optimizer.zero_grad()
            autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if bf16 else nullcontext()
            with autocast:
                loss = net(image, nihss).float().mean()
            loss.backward()
            optimizer.step()

        rows.append((name, 1000 * timed(step, repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--variants", nargs="+", default=["SF", "EF", "EFI"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0], help="encoder widths (1 = the paper)")
    parser.add_argument("--one", nargs=3, metavar=("VARIANT", "SIZE", "WIDTH"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-options", action="store_true", help="skip the CPU-options comparison")
    parser.add_argument(
        "--training-precision",
        nargs=2,
        metavar=("SIZE", "WIDTH"),
        help="only the SF training step in fp32 and bf16 autocast at SIZE^2 and encoder WIDTH",
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.repeats, float(args.one[2]))))
        return
    if args.training_precision:
        size, width = int(args.training_precision[0]), float(args.training_precision[1])
        rows = training_precision(size, width, args.repeats)
        print(f"SF training step at {size}^2, width {width:g}, batch {BATCH}, {torch.get_num_threads()} threads:")
        for name, ms in rows:
            print(f"- {name}: {ms:.0f} ms per step ({rows[0][1] / ms:.2f}x fp32)")
        return
    peak = matmul_peak_gflops()
    print(
        f"device: {DEVICE}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, inputs PMs+N"
    )
    print(f"fp32 matmul peak (4096^2): {peak:.1f} GFLOP/s")
    print(
        "| model | width | size | forward ms/slice | fwd+bwd ms/step | peak memory GB | params M | GMACs/slice "
        "| GFLOP/s | ratio to matmul peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, width, variant in [(s, w, v) for s in args.sizes for w in args.widths for v in args.variants]:
        child = subprocess.run(
            [sys.executable, __file__, "--one", variant, str(size), str(width), "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"| {variant} | {width:g} | {size} | {r['forward_ms_per_slice']:.0f} | {r['step_ms']:.0f} | "
            f"{r['peak_gb']:.2f} | {r['params_m']:.1f} | {r['gmacs']:.1f} | {r['gflops']:.1f} | "
            f"{r['gflops'] / peak:.2f} |",
            flush=True,
        )
    if not args.skip_options:
        size = max(args.sizes)
        print(f"\nSF forward at {size}^2, batch {BATCH}, ms per slice:")
        base = None
        for name, ms, gflops in cpu_options(size, args.repeats):
            base = base or ms
            print(
                f"- {name}: {ms:.0f} ms, {gflops:.0f} GFLOP/s = {gflops / peak:.2f} of the fp32 matmul peak "
                f"({base / ms:.2f}x vs no_grad)",
                flush=True,
            )


if __name__ == "__main__":
    main()
