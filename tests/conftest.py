"""Shared fixtures: a tiny synthetic cohort generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.simulation.cohort import generate_cohort


def pytest_configure(config) -> None:
    """The suite must not depend on the user's MLflow or Optuna settings (a shell with MLFLOW_TRACKING_URI
    set would otherwise send the tests' runs into the user's store): they are cleared for the session and
    for every process it starts. Tests that need one set it themselves."""
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "OPTUNA_"))]:
        del os.environ[key]


@pytest.fixture(scope="session")
def postgres():
    """Base URL of a throwaway PostgreSQL cluster with databases ``optuna`` and ``mlflow`` (tests/postgres.py);
    skipped only where no PostgreSQL binaries exist (CI has them)."""
    import postgres as pg

    if pg.binaries() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
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
