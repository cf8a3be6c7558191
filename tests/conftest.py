"""Shared fixtures: a tiny synthetic cohort generated once per test session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scripts.simulation.cohort import generate_cohort


def pytest_configure(config) -> None:
    """The suite must not depend on the user's MLflow or Optuna settings (a shell with MLFLOW_TRACKING_URI
    set would otherwise send the tests' runs into the user's store): they are cleared for the session and
    for every process it starts. Tests that need one set it themselves."""
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "OPTUNA_"))]:
        del os.environ[key]


def missing_engine(message: str) -> None:
    """A real engine a test needs is not here: skip on a developer's machine, fail under ``CI=true``."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true: the real-engine tests must run, not skip")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres():
    """Base URL of a throwaway PostgreSQL cluster with databases ``optuna`` and ``mlflow`` (tests/postgres.py).
    Without PostgreSQL binaries the tests that need it are skipped on a developer's machine, but fail under
    ``CI=true`` (``.ci/run`` sets it): they are the only coverage of the registry, ``models:/``, the artifact
    proxy and the study lock, so CI must not go green without them."""
    import postgres as pg

    if pg.binaries() is None:
        missing_engine("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    with pg.cluster(("optuna", "mlflow")) as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory):
    """Tracking URI of an ``mlflow server`` on the PostgreSQL cluster's ``mlflow`` database, with a local
    artifact destination (tests/mlflow_server.py)."""
    import mlflow_server as server

    with server.server(postgres + "mlflow", tmp_path_factory.mktemp("mlflow_server")) as url:
        yield url


TINY = {"n_patients": 5, "size": 64, "slices": 2, "n_frames": 40, "noise_hu": 6.0, "seed": 3, "workers": 1}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Datalist of a 5-patient 64x64x2 cohort with raw 4D series saved."""
    root = tmp_path_factory.mktemp("cohort") / "synthetic"
    return generate_cohort(root, save_ctp=True, **TINY)


@contextmanager
def reaping() -> Iterator[list[subprocess.Popen]]:
    """A list to put started processes in: whatever is still running when the block ends (normally, by a failed
    assertion or a timed-out wait) is killed and reaped, so a failed test never leaves a worker running or
    connected to a database."""
    processes: list[subprocess.Popen] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture()
def reaped() -> Iterator[list[subprocess.Popen]]:
    """:func:`reaping` for the length of a test."""
    with reaping() as processes:
        yield processes


@contextmanager
def small_filesystem(folder: Path, size_kib: int) -> Iterator[Path]:
    """``folder`` as a real filesystem of ``size_kib`` KiB (a tmpfs), so writes past it fail with ENOSPC as on a
    full disk; unmounted when the block ends. Mounting needs root (CI runs as root): elsewhere the test is
    skipped, and under ``CI=true`` it fails (:func:`missing_engine`)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={int(size_kib)}k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        missing_engine(f"cannot mount a small tmpfs to fill ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
