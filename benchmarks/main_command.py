"""Wall time of each step of the README's main command on the default cohort (install not timed).

Runs generation, training, evaluation and inference (test split) with the bundle's defaults into a temporary
directory (data, run and MLflow store there) and prints each step's wall time and the final validation and test Dice.
Run: python benchmarks/main_command.py [--only-generation]
As on an AVX2-only CPU (no AVX-512, bf16 emulated, so the default trains in fp32), on an AVX-512 machine:
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/main_command.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))

from scripts.learning.engine.precision import resolve_precision  # noqa: E402


def step(name: str, command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", *command], cwd=ROOT, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    print(f"{name}: {seconds:.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-generation", action="store_true")
    args = parser.parse_args()
    capability, precision = torch.backends.cpu.get_cpu_capability(), resolve_precision("auto", "cpu")
    print(f"CPU: {capability}, {torch.get_num_threads()} threads; training and inference precision: {precision}")
    with tempfile.TemporaryDirectory() as tmp:
        data, run, uri = f"{tmp}/synthetic", f"{tmp}/runs/default", f"sqlite:///{tmp}/mlflow.db"
        total = step(
            "generating", ["generating", "--config_file", "bundle/configs/synthetic.json", "--output_dir", data]
        )
        if not args.only_generation:
            common = ["--datalist", f"{data}/datalist.json", "--output_dir", run, "--tracking_uri", uri]
            common += ["--tracking", "bundle/configs/mlflow.json"]  # as the README's main command
            total += step("training", ["training", "--config_file", "bundle/configs/train.json", *common])
            total += step(
                "evaluating",
                [
                    "evaluating",
                    "--config_file",
                    "['bundle/configs/train.json','bundle/configs/evaluate.json']",
                    *common,
                ],
            )
            best = next(Path(run, "model").glob("best*.pt"))
            total += step(
                "inference",
                [
                    "inference",
                    "--config_file",
                    "bundle/configs/inference.json",
                    "--input",
                    f"{data}/datalist.json",
                    "--checkpoint",
                    str(best),
                    "--output_dir",
                    f"{tmp}/inference",
                ],
            )
            import mlflow

            client = mlflow.MlflowClient(uri)
            experiment = client.get_experiment_by_name("ctp-stroke")
            metrics = client.search_runs([experiment.experiment_id])[0].data.metrics
            for split in ("val", "test"):
                for group in ("LVO", "Non-LVO", "WIS", "all"):
                    values = [
                        f"{c} {metrics.get(f'{split}_dice_{c}_{group}', float('nan')):.2f}"
                        for c in ("penumbra", "core", "hypoperfused")
                    ]
                    print(f"{split} Dice {group}: " + ", ".join(values))
        print(f"total: {total:.1f} s")


if __name__ == "__main__":
    main()
