"""``benchmarks/seed_robustness.py``: where a network trains, where it is evaluated, what is logged."""

import sys
from pathlib import Path

import pytest
from workflows import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import seed_robustness  # noqa: E402


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The bundle workflows the benchmark would run, recorded; an evaluation writes a one-patient report."""
    recorded: list[list[str]] = []

    def bundle(*args: str) -> None:
        recorded.append(list(args))
        if args[0] == "evaluating":
            a = list(args)
            out = Path(a[a.index("--output_dir") + 1])
            report = Path(a[a.index("--report_dir") + 1]) if "--report_dir" in a else out / "test"
            report.mkdir(parents=True)
            (report / "metrics_per_patient.csv").write_text("id,group\nCTP_01_001,LVO\n")

    monkeypatch.setattr(seed_robustness, "bundle", bundle)
    monkeypatch.setattr(seed_robustness, "run_finished", lambda *a, **k: False)
    return recorded


def value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} given {args.count(flag)} times in {args}"
    return args[args.index(flag) + 1]


def test_an_independent_test_cohort_is_scored_by_a_network_trained_on_the_default_one(calls, tmp_path):
    rows = seed_robustness.network_rows(
        "data/a/datalist.json", "SF", "PMs+N", 0, tmp_path, "sqlite:///x.db", test_datalist="data/big/datalist.json"
    )
    training, evaluating = calls
    assert training[0] == "training" and value(training, "--datalist") == "data/a/datalist.json"
    assert "--tracking" in training
    assert evaluating[0] == "evaluating" and value(evaluating, "--datalist") == "data/big/datalist.json"
    assert Path(value(evaluating, "--report_dir")) == tmp_path / "SF_G-PMs-N-seed0" / "test_big"
    assert "--tracking" not in evaluating  # the training's MLflow run keeps its own test cohort's figures
    assert rows == [{"id": "CTP_01_001", "group": "LVO"}]


def test_without_one_the_own_test_split_is_evaluated_and_logged(calls, tmp_path):
    seed_robustness.network_rows("data/a/datalist.json", "SF", "PMs+N", 1, tmp_path, "sqlite:///x.db")
    evaluating = calls[1]
    assert value(evaluating, "--datalist") == "data/a/datalist.json" and "--report_dir" not in evaluating
    assert value(evaluating, "--tracking_uri") == "sqlite:///x.db"
    assert (tmp_path / "SF_G-PMs-N-seed1" / "test" / "metrics_per_patient.csv").is_file()
