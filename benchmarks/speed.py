"""Benchmark: the bundle's speed against the machine's own peak, before and after the speed work, in one table.

Rows, each measured in this run:
- the matmul peak (GFLOP/s, 2048² repeated) in fp32, and in bf16 where the device computes it natively
  (``scripts.learning.engine.precision.native_bf16``; on CPUs without it bf16 is emulated and far slower);
- a 512×512×16-slice study (60 frames), raw 4D → maps → labels → report, and its network stage alone with
  the network's achieved GFLOP/s and its ratio to the same-run peak of the precision it ran in;
- the default 128×128×8 study from maps;
- one SF(PMs+N) training step (forward, backward, Adam) on 4 slices of 128² at train.json's encoder width, all
  weights trainable ("all" stage) and encoders frozen ("frozen" stage), split into its parts, with its GFLOP/s
  and ratio to the peak of the precision it ran in.

Columns: *before* = whole slices in fp32 (the inference defaults before issue #16) and, for training, fp32 with
Adam's per-parameter loop; *after* = the bundle's defaults (brain crop, ``precision auto``, channels-last; for
training ``precision auto`` and Adam's fused kernel). Both columns use the configs' encoder width. The network
has untrained weights (speed does not depend on them); the brain crop's agreement with whole slices on a trained
model is ``benchmarks/inference_agreement.py``. Uses CUDA when present (then AMP, as the configs).

Run: python benchmarks/speed.py [--repeats 1] [--skip-512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from inference_speed import BEFORE, STAGES, config_width, make_study, time_study, untrained_checkpoint  # noqa: E402
from network_speed import DEVICE, count_macs, sync  # noqa: E402

from scripts.learning.engine.precision import native_bf16, resolve_precision  # noqa: E402
from scripts.learning.model.networks import create_network  # noqa: E402

AFTER: dict = {}  # the bundle's defaults


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n×n matmul in ``dtype`` (best of ``repeats`` after a warm-up)."""
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def remeasure(peaks: dict[str, float]) -> None:
    """Keep the highest matmul peak per precision measured so far in the run."""
    for name in peaks:
        peaks[name] = max(peaks[name], matmul_peak(torch.float32 if name == "fp32" else torch.bfloat16))


def network_gflop(shapes: list[tuple[int, ...]], cache: dict) -> float:
    """GFLOP of SF(PMs+N) forward passes (at inference.json's width) over the recorded input shapes (batch, maps,
    H, W)."""
    total = 0
    for shape in shapes:
        if shape[-2:] not in cache:
            net = create_network("SF", "PMs+N", pretrained=False, encoder_width=config_width("inference")).eval()
            cache[shape[-2:]] = count_macs(net, torch.zeros(1, *shape[1:]), torch.zeros(1, 1))
        total += 2 * cache[shape[-2:]] * shape[0]
    return total / 1e9


def study_row(patient: Path, raw: bool, options: dict, checkpoint: Path, work: Path, repeats: int, cache: dict) -> dict:
    runs = [time_study(patient, raw, "network", checkpoint, work / f"run{r}", options) for r in range(repeats)]
    times = {s: statistics.median(r[0][s] for r in runs) for s in STAGES}
    shapes, precision = runs[-1][1], runs[-1][2]
    return {
        "total": sum(times.values()),
        "network": times["network"],
        "gflops": network_gflop(shapes, cache) / times["network"],
        "precision": precision,
        "slice_batch": runs[-1][3],
    }


def training_step(frozen: bool, fused: bool, repeats: int, precision: str = "fp32") -> dict:
    """Seconds and GFLOP/s of one SF training step (forward, loss, backward, Adam) on 4 slices of 128², at
    train.json's width, in ``precision`` (bf16: autocast, as ``precision auto`` trains where bf16 is native)."""
    torch.manual_seed(0)
    net = create_network("SF", "PMs+N", pretrained=False, encoder_width=config_width("train")).to(DEVICE).train()
    net.set_finetuning("frozen" if frozen else "all")
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4, fused=fused)
    image, nihss = torch.rand(4, 4, 128, 128, device=DEVICE), torch.full((4, 1), 9.0, device=DEVICE)
    label = torch.randint(0, 3, (4, 128, 128), device=DEVICE)
    amp = DEVICE.type == "cuda"  # the training config's amp
    bf16 = precision == "bf16" and not amp

    def step() -> dict[str, float]:
        times = {}
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, enabled=amp or bf16, dtype=torch.bfloat16 if bf16 else None):
            loss = torch.nn.functional.cross_entropy(net(image, nihss).float(), label)
        sync()
        times["forward"] = time.perf_counter() - start
        loss.backward()
        sync()
        times["backward"] = time.perf_counter() - start - times["forward"]
        optimizer.step()
        sync()
        times["optimiser"] = time.perf_counter() - start - times["forward"] - times["backward"]
        return times

    step()
    runs = [step() for _ in range(repeats)]
    parts = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    net.eval()
    macs, trainable = (count_macs(net, image[:1], nihss[:1], only) for only in (False, True))
    # forward, then per trainable layer the weight gradient and (behind the frozen encoders only) the input's
    flop = 2 * image.shape[0] * (macs + 2 * trainable)
    seconds = sum(parts.values())
    return {"seconds": seconds, "parts": parts, "gflops": flop / seconds / 1e9, "precision": "bf16" if bf16 else "fp32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-512", action="store_true", help="only the 128² study and the training step")
    args = parser.parse_args()
    peaks = {"fp32": matmul_peak(torch.float32)}
    if native_bf16(DEVICE):
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    capability = torch.backends.cpu.get_cpu_capability() if DEVICE.type == "cpu" else torch.cuda.get_device_name()
    print(
        f"device {DEVICE} ({capability}), threads {torch.get_num_threads()}, torch {torch.__version__}; "
        f"bf16 native: {native_bf16(DEVICE)}"
    )
    cache: dict = {}
    rows: list[tuple[str, dict, dict]] = []  # printed at the end, against the highest peak of the run

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        untrained_checkpoint(work / "model.pt")
        studies = [(128, 8, False)] + ([] if args.skip_512 else [(512, 16, True)])
        for size, slices, raw in studies:
            patient = make_study(work / "cohort", size, slices)
            before = study_row(patient, raw, BEFORE, work / "model.pt", work / "before", args.repeats, cache)
            after = study_row(patient, raw, AFTER, work / "model.pt", work / "after", args.repeats, cache)
            rows.append((f"{size}²×{slices} {'raw 4D' if raw else 'maps'}", before, after))
            remeasure(peaks)  # a busy moment at the start must not lower the peak
    # before: fp32 and Adam's per-parameter loop; after: train.json's precision auto and Adam's fused kernel
    trained = resolve_precision("auto", DEVICE)
    for frozen in (False, True):
        before = training_step(frozen, False, args.repeats + 2)
        after = training_step(frozen, True, args.repeats + 2, trained)
        stage = "frozen encoders" if frozen else "all weights"
        rows.append((f"SF training step at 128², 4 slices, width {config_width('train')}, {stage}", before, after))
    remeasure(peaks)
    print_table(peaks, rows)


def print_table(peaks: dict[str, float], rows: list[tuple[str, dict, dict]]) -> None:
    """One markdown table; achieved GFLOP/s as a ratio to the highest matmul peak measured in the run."""

    def ratio(row: dict) -> str:
        return f"{row['gflops']:.0f} GFLOP/s = {row['gflops'] / peaks[row['precision']]:.2f}× {row['precision']} peak"

    print("| measure | before | after | after / before |")
    print("|---|---|---|---|")
    for name, peak in peaks.items():
        print(f"| {name} matmul peak (highest of the run), GFLOP/s | {peak:.0f} | {peak:.0f} | 1.00 |")
    for name, before, after in rows:
        if "total" in before:
            change = after["total"] / before["total"]
            print(f"| {name} → report, s | {before['total']:.1f} | {after['total']:.1f} | {change:.2f} |")
            print(
                f"| {name}: network stage, s | {before['network']:.1f} ({ratio(before)}) | "
                f"{after['network']:.1f} ({ratio(after)}) | {after['network'] / before['network']:.2f} |"
            )
            print(f"| … slices per network pass | {before['slice_batch']} | {after['slice_batch']} | |")
        else:
            print(
                f"| {name}, s | {before['seconds']:.2f} ({ratio(before)}) | "
                f"{after['seconds']:.2f} ({ratio(after)}) | {after['seconds'] / before['seconds']:.2f} |"
            )
            for part in before["parts"]:
                print(f"| … of which {part}, s | {before['parts'][part]:.2f} | {after['parts'][part]:.2f} | |")


if __name__ == "__main__":
    main()
