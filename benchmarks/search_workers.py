"""Benchmark: the loss search (``searching``) with one worker against several workers sharing one study.

A throwaway PostgreSQL cluster (``tests/postgres.py``) holds the Optuna storage and the MLflow tracking store,
as in bundle/docs/search.md's scale-out commands. For each worker count, the same budget (``--n_trials`` trials of a
short training on a small synthetic cohort) runs as a fresh study; the workers are started together with
the documented command and the wall time is measured from the first start to the last exit. Prints the
wall time, the trials each worker ran, and the ratio to one worker. On one machine the workers share its
cores: the ratio shows what several workers cost or gain there, not what several hosts would.

Rows (``--workers``, default ``1 2 2x1``): one worker; two workers with PyTorch's default threads each (they
compete for the cores); two workers with one thread each.

Run: python benchmarks/search_workers.py [--workers 1 2 2x1] [--n_trials 4] [--max_epochs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))
sys.path.insert(0, str(ROOT / "tests"))

import optuna  # noqa: E402
import postgres  # noqa: E402
import torch  # noqa: E402

from scripts.simulation.cohort import generate_cohort  # noqa: E402


def worker(
    datalist: Path, name: str, url: str, n_trials: int, overrides: dict, out: Path, threads: int | None
) -> subprocess.Popen:
    command = [sys.executable, "-m", "monai.bundle", "run", "searching", "--config_file", "bundle/configs/search.json"]
    settings = {
        "datalist": str(datalist),
        "study_name": name,
        "experiment_name": name,
        "storage": url + "optuna",
        "tracking_uri": url + "mlflow",
        "output_root": str(out / "runs"),
        "n_trials": str(n_trials),
        "pruner": "none",
        "training_overrides": repr(overrides),
    }
    for key, value in settings.items():
        command += [f"--{key}", value]
    log = open(out / f"{name}_{time.time_ns()}.log", "w")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workers",
        nargs="+",
        default=["1", "2", "2x1"],
        help="worker counts; NxT runs N workers with T threads each (OMP_NUM_THREADS), else PyTorch's default",
    )
    parser.add_argument("--n_trials", type=int, default=4)
    parser.add_argument("--max_epochs", type=int, default=2)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="keep the cohort, runs and worker logs here")
    args = parser.parse_args()
    overrides = {
        "max_epochs": args.max_epochs,
        "patience": args.max_epochs,
        "pretrained": False,
        "roi_size": [64, 64],
        "slices_per_volume": 2,
    }
    with tempfile.TemporaryDirectory() as tmp, postgres.cluster() as url:
        out = Path(args.workdir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        datalist = generate_cohort(
            out / "cohort", n_patients=args.patients, size=64, slices=4, n_frames=40, seed=3, workers=1
        )
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(f"budget: {args.n_trials} trials x {args.max_epochs} epochs, {args.patients}-patient 64x64x4 cohort")
        print("| workers | threads each | wall s | trials complete | trials per worker | ratio to the first row |")
        print("|---|---|---|---|---|---|")
        baseline = None
        for index, spec in enumerate(args.workers):
            count, _, threads = spec.partition("x")
            count, threads = int(count), int(threads) if threads else None
            name = f"bench_{index}_{count}w"
            start = time.perf_counter()
            procs = [worker(datalist, name, url, args.n_trials, overrides, out, threads) for _ in range(count)]
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - start
            if any(codes):
                raise SystemExit(f"a worker failed (exit codes {codes}); logs in {out}")
            trials = optuna.load_study(study_name=name, storage=url + "optuna").trials
            per_worker = sorted(
                sum(1 for t in trials if t.user_attrs.get("worker", "").endswith(f":{p.pid}")) for p in procs
            )
            complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
            if complete < args.n_trials:
                print(f"not all trials completed: {[t.state.name for t in trials]}; logs in {out}")
            baseline = baseline or wall
            shown = threads or f"default ({torch.get_num_threads()})"
            print(f"| {count} | {shown} | {wall:.1f} | {complete} | {per_worker} | {wall / baseline:.2f} |")


if __name__ == "__main__":
    main()
