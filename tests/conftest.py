"""Shared fixtures: a tiny synthetic cohort generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.simulation.cohort import generate_cohort

TINY = {"n_patients": 5, "size": 64, "slices": 2, "n_frames": 40, "noise_hu": 6.0, "seed": 3, "workers": 1}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Datalist of a 5-patient 64x64x2 cohort with raw 4D series saved."""
    root = tmp_path_factory.mktemp("cohort") / "synthetic"
    return generate_cohort(root, save_ctp=True, **TINY)
