"""Benchmark: end-to-end inference per study, maps -> report and raw 4D CTP -> report, with a stage breakdown.

Builds the components from ``bundle/configs/inference.json`` (the same pre-processing, inferer, network and
post-processing as ``python -m monai.bundle run inference``) and times, per study: checks/maps (input checks,
and the maps when the input is a raw 4D series),
load (pre-processing: reading NIfTI, brain mask, stacking, padding), network (slice inferer), post-processing
(softmax, argmax, brain mask, inversion) and report (label NIfTI, report JSON, PNG montage). The network is
SF(PMs+N) with untrained weights: speed does not depend on the weights. Sizes: the default 128x128x8 study
and a paper-like 512x512x16 study (60 frames).

Run: python benchmarks/inference_speed.py [--sizes 128x8 512x16] [--mode network|threshold] [--repeats 2] [--before]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))

from monai.bundle import ConfigParser  # noqa: E402
from monai.data import decollate_batch, list_data_collate  # noqa: E402

from scripts.learning.model.networks import create_network  # noqa: E402
from scripts.simulation.cohort import simulate_patient  # noqa: E402

STAGES = ("checks/maps", "load", "network", "post-processing", "report")
BEFORE = {"brain_crop": False, "precision": "fp32", "channels_last": False, "sw_batch_size": 2}
"""The inference settings before issue #16: whole slices, fp32, PyTorch's default layout, 2 slices per pass."""


def config_width(config: str = "inference") -> float:
    """The encoder width ``bundle/configs/<config>.json`` builds its network with."""
    return float(json.loads((ROOT / f"bundle/configs/{config}.json").read_text())["encoder_width"])


def untrained_checkpoint(path: Path, seed: int = 0) -> Path:
    """An untrained SF(PMs+N) checkpoint at the width ``inference.json`` builds its network with (speed does not
    depend on the weights; a checkpoint of another width would be refused as unfitting)."""
    width = config_width("inference")
    torch.manual_seed(seed)
    torch.save({"network": create_network("SF", "PMs+N", pretrained=False, encoder_width=width).state_dict()}, path)
    return path


def make_study(root: Path, size: int, slices: int) -> Path:
    """One simulated LVO patient with its raw 4D series and its maps; returns the patient folder."""
    task = {
        "group": "LVO",
        "id": f"bench_{size}",
        "root": str(root),
        "seed": 0,
        "index": 0,
        "size": size,
        "slices": slices,
        "slice_thickness": 5.0,
        "noise_hu": 8.0,
        "n_frames": 60,
        "frame_interval": 1.0,
        "save_ctp": True,
        "lesion_model": "fate",
    }
    simulate_patient(task)
    return root / task["id"]


def components(patient: Path, output_dir: Path, mode: str, checkpoint: Path, options: dict) -> ConfigParser:
    parser = ConfigParser()
    configs = ["inference.json"] + (["inference_threshold.json"] if mode == "threshold" else [])
    parser.read_config([str(ROOT / "bundle/configs" / name) for name in configs])
    parser.update(
        {
            "input": str(patient),
            "output_dir": str(output_dir),
            "checkpoint": str(checkpoint),
            "nihss": 12,
            "overwrite": True,
            **options,
        }
    )
    return parser


def time_study(
    patient: Path, raw: bool, mode: str, checkpoint: Path, work: Path, options: dict | None = None
) -> tuple[dict[str, float], list[tuple[int, ...]], str, int]:
    """Seconds per stage for one study (from the raw series the maps are computed first) with the inference
    config's ``options``; also the network's input shapes, the precision it ran in and the slices it took per
    pass (``sw_batch_size``, as chosen by ``auto``)."""
    source = patient
    if raw:  # a folder with only the raw series
        source = work / "raw" / patient.name
        source.mkdir(parents=True, exist_ok=True)
        (source / "ctp.nii.gz").write_bytes((patient / "ctp.nii.gz").read_bytes())
    parser = components(source, work / ("out_raw" if raw else "out_maps"), mode, checkpoint, options or {})
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    shapes: list[tuple[int, ...]] = []
    if isinstance(network, torch.nn.Module):
        network.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    preprocessing, postprocessing = (
        parser.get_parsed_content("preprocessing"),
        parser.get_parsed_content("postprocessing"),
    )
    prepare_batch = parser.get_parsed_content("prepare_batch")
    times = {}
    start = time.perf_counter()
    studies = parser.get_parsed_content("studies")  # includes the map computation for a raw series
    times["checks/maps"] = time.perf_counter() - start
    start = time.perf_counter()
    batch = list_data_collate([preprocessing(studies[0])])
    times["load"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        inputs, _, args, kwargs = prepare_batch(batch, torch.device("cpu"), False)
        batch["pred"] = inferer(inputs, network, *args, **kwargs)
    times["network"] = time.perf_counter() - start
    start = time.perf_counter()
    items = [postprocessing.transforms[i] for i in range(len(postprocessing.transforms) - 1)]
    outputs = []
    for item in decollate_batch(batch):
        for transform in items:
            item = transform(item)
        outputs.append(item)
    times["post-processing"] = time.perf_counter() - start
    start = time.perf_counter()
    for item in outputs:
        postprocessing.transforms[-1](item)
    times["report"] = time.perf_counter() - start
    return times, shapes, getattr(network, "precision", "fp32"), inferer.sw_batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128x8", "512x16"], help="SIZExSLICES")
    parser.add_argument("--mode", default="network", choices=("network", "threshold"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", action="store_true", help="whole slices, fp32, contiguous (before #16)")
    args = parser.parse_args()
    torch.manual_seed(0)
    options = BEFORE if args.before else {}
    precision = "whole slices, fp32" if args.before else "defaults"
    print(
        f"CPU threads: {torch.get_num_threads()}, mode: {args.mode}, {precision}, "
        f"median of {args.repeats} runs (seconds)"
    )
    header = f"| study | input | {' | '.join(STAGES)} | total | target |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = work / "model.pt"
        untrained_checkpoint(checkpoint)
        for spec in args.sizes:
            size, slices = (int(v) for v in spec.lower().split("x"))
            patient = make_study(work / "cohort", size, slices)
            for raw in (False, True):
                runs = [
                    time_study(patient, raw, args.mode, checkpoint, work / f"run{r}", options)[0]
                    for r in range(args.repeats)
                ]
                median = {s: float(np.median([r[s] for r in runs])) for s in STAGES}
                total = sum(median.values())
                target = f"{total / 30:.2f} of 30 s" if size >= 512 and raw else ""
                cells = " | ".join(f"{median[s]:.2f}" for s in STAGES)
                print(
                    f"| {size}x{size}x{slices} | {'raw 4D' if raw else 'maps'} | {cells} | {total:.2f} | {target} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
