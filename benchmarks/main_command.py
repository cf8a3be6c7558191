"""Wall time of the README's main command (the bundle's default workflow) on the default cohort.

Runs ``python -m monai.bundle run generating --config_file bundle/configs/synthetic.json`` into a fresh
temporary directory (the install step is not timed) and prints the wall time of each repeat.
Run: python benchmarks/main_command.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    walls = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "monai.bundle", "run", "generating", "--config_file",
                       "bundle/configs/synthetic.json", "--output_dir", f"{tmp}/synthetic"]
            start = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
    print("command: python -m monai.bundle run generating --config_file bundle/configs/synthetic.json")
    print("wall time (s): " + ", ".join(f"{w:.1f}" for w in walls))


if __name__ == "__main__":
    main()
