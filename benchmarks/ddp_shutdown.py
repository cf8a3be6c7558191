"""The DDP tests, run again and again: how often a rank dies at exit (issue #27, the shutdown race).

Runs ``pytest tests/test_training.py -k ddp`` (the two-process update test and the two-process torchrun
training with kill and resume) ``--runs`` times in a row and prints each run's result, then the failure count
(a failed run's output is kept in the temporary folder).
With ``--stress N`` it instead runs the two-process update script alone, N launches at a time (the race is a
timing window at interpreter exit; oversubscribed cores widen it), to compare shutdown procedures quickly.
Not a test: it takes about a minute per run on 2 cores.
Run: python benchmarks/ddp_shutdown.py [--runs 30] [--stress 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bundle")]

from test_training import DDP_STEP  # noqa: E402


def pytest_run(index: int) -> tuple[int, float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_training.py", "-k", "ddp"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode:  # keep what failed
        Path(tempfile.gettempdir(), f"ddp_shutdown_run{index + 1}.log").write_text(result.stdout + result.stderr)
    return result.returncode, time.perf_counter() - start, result.stdout.strip().splitlines()[-1]


def step_run(index: int) -> tuple[int, float, str]:
    """One torchrun launch of the update test's script (its own temporary folder)."""

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "ddp_step.py"
        script.write_text(DDP_STEP.replace("CLIP", "0.01"))
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
            + [str(Path(tmp) / "ddp.pt")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "bundle")},
        )
    aborted = "terminate called" in result.stderr
    return result.returncode, time.perf_counter() - start, "aborted at exit" if aborted else "exit code"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--stress", type=int, default=0, help="launches of the update script at a time (0: pytest)")
    args = parser.parse_args()
    run = step_run if args.stress else pytest_run
    failures = 0
    with ThreadPoolExecutor(max(1, args.stress)) as pool:
        for i, (code, seconds, last) in enumerate(pool.map(run, range(args.runs)), 1):
            failures += code != 0
            print(f"run {i:3d}: exit {code:3d} in {seconds:6.1f} s  {last}", flush=True)
    what = f"update script, {args.stress} at a time" if args.stress else "pytest -k ddp"
    print(f"{failures} failed of {args.runs} runs ({what})")


if __name__ == "__main__":
    main()
