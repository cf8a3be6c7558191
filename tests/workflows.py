"""Running a bundle workflow inside the test process: each test that only needs a workflow's outputs or its
refusal saves a process start (~13 s of imports here). Every workflow still runs as a real
``python -m monai.bundle run`` process in at least one test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def at_root() -> Iterator[None]:
    """Work in the repository root (the configs' ``bundle_root`` is relative to it), then go back."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(cwd)


def run_in_process(run_id: str, config_file: str | list[str], **overrides: Any) -> Any:
    """Run a bundle workflow in this process from the repository root, as the search, the experiment grids and
    the MONAI Deploy app do (``scripts.cli.run_workflow``); return its result."""
    from scripts.cli import run_workflow

    with at_root():
        return run_workflow(run_id, config_file, **overrides)


def refusal(run_id: str, config_file: str | list[str], **overrides: Any) -> str:
    """The one-line message a bundle workflow stops with (``scripts.cli.run_or_exit``'s ``SystemExit``), run in
    this process from the repository root as ``python -m monai.bundle run`` would run it; an ``AssertionError``
    if it does not stop. The command line prints exactly that line (``test_cohort.py`` and
    ``test_inference.py`` check real processes); in-process saves a process start (~13 s of imports here)."""
    from monai.bundle import ConfigWorkflow

    with at_root():  # not scripts.cli.bundle_workflow: it records the config into the run it would refuse
        workflow = ConfigWorkflow(config_file=config_file, logging_file=False, run_id=run_id, **overrides)
        workflow.initialize()
        try:
            workflow.run()
        except SystemExit as stop:
            return str(stop.code)
        finally:
            workflow.finalize()
    raise AssertionError(f"{run_id} ran to the end instead of stopping")


def overrides_from(args: list[str]) -> dict[str, Any]:
    """``["--key", "value", ...]`` command-line overrides as config values (JSON where they parse as JSON)."""
    import json

    values = {}
    for key, value in zip(args[::2], args[1::2]):
        try:
            values[key.removeprefix("--")] = json.loads(value)
        except json.JSONDecodeError:
            values[key.removeprefix("--")] = value
    return values
