"""Exp-1 as an Optuna study over real (tiny) bundle trainings: runs, resumes, prunes, fails a bad trial,
nests its MLflow runs, and refuses bad settings before any trial."""

import json
import os
from pathlib import Path

import mlflow
import optuna
import pytest

from scripts.learning.search import check_search_space, objective_values, run_study

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAINING = {"max_epochs": 1, "patience": 1, "pretrained": False, "roi_size": [64, 64], "slices_per_volume": 1}


@pytest.fixture
def in_root():
    cwd = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(cwd)


def study(tiny_cohort, tmp_path, n_trials, **kwargs):
    settings = {
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "output_root": str(tmp_path / "runs"),
        "training_overrides": TINY_TRAINING,
        **kwargs,
    }
    return run_study(str(tiny_cohort), n_trials=n_trials, **settings)


def test_study_runs_resumes_and_nests_its_mlflow_runs(tiny_cohort, tmp_path, in_root):
    first = study(tiny_cohort, tmp_path, 2, pruner="none")  # pruning is tested on its own below
    assert first["trials"] == 2 and first["complete"] == 2
    assert study(tiny_cohort, tmp_path, 2, pruner="none")["trials"] == 2  # rerun: complete, nothing restarts
    resumed = study(tiny_cohort, tmp_path, 3, pruner="none")
    assert resumed["trials"] == 3 and resumed["complete"] == 3  # continues with one more trial
    best = json.loads(Path(resumed["best_params_file"]).read_text())
    assert set(best) == {"gamma", "alpha", "beta"} and best["beta"] == pytest.approx(1 - best["alpha"])
    assert 1.0 <= best["gamma"] <= 3.0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("exp1")
    parent = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'exp1'")[0]
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 3 and all(c.data.tags["optuna_state"] == "COMPLETE" for c in children)
    assert all("val_dice_core_LVO" in c.data.metrics and "objective" in c.data.metrics for c in children)
    trials = optuna.load_study(study_name="exp1", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert {float(c.data.params["gamma"]) for c in children} == {t.params["gamma"] for t in trials}
    assert len({t.params["gamma"] for t in trials}) == 3  # the resumed study did not repeat a sample
    trial_dirs = sorted((tmp_path / "runs" / "exp1").glob("exp1_trial_*"))
    assert len(trial_dirs) == 3 and all(list((d / "model").glob("best*.pt")) for d in trial_dirs)
    assert not any(list((d / "checkpoints").glob("last*.pt")) for d in trial_dirs)  # resume points dropped
    assert parent.data.metrics["trials_complete"] == 3
    table = Path(resumed["table_md"]).read_text()
    assert table.count("| penumbra |") == 3 and "±" in table


def test_pruned_and_failed_trials_do_not_stop_the_study(tiny_cohort, tmp_path, in_root):
    pruned = study(tiny_cohort, tmp_path / "pruned", 1, pruner="threshold:1.01")  # every Dice is below 1.01
    assert pruned["pruned"] == 1 and pruned["complete"] == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'pruned' / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name("exp1").experiment_id], filter_string="tags.optuna_state = 'PRUNED'"
    )[0]
    assert run.info.status == "KILLED"
    broken = {**TINY_TRAINING, "loss#gamma": "$float('nan')"}  # a NaN loss
    failed = study(tiny_cohort, tmp_path / "nan", 1, training_overrides=broken)
    assert failed["failed"] == 1 and failed["trials"] == 1


def test_bad_settings_are_refused_before_any_trial(tiny_cohort, tmp_path, in_root):
    with pytest.raises(ValueError, match="empty or inverted"):
        check_search_space({"gamma": [3.0, 1.0]}, tie_beta=True)
    with pytest.raises(ValueError, match="unknown parameter 'delta'"):
        check_search_space({"delta": [0, 1]}, tie_beta=True)
    with pytest.raises(ValueError, match="objective must be one of"):
        study(tiny_cohort, tmp_path, 1, objective="hd95")
    with pytest.raises(ValueError, match="cannot open the Optuna storage"):
        study(tiny_cohort, tmp_path, 1, storage="postgresql://nobody@127.0.0.1:9/none")
    with pytest.raises(ValueError, match="pruner must be"):
        study(tiny_cohort, tmp_path, 1, pruner="hyperband")
    assert not (tmp_path / "runs").exists()


def test_a_study_refuses_another_search_space(tiny_cohort, tmp_path, in_root):
    """Two searches in one study would mix trials drawn from different ranges: the second is refused."""
    existing = optuna.create_study(study_name="exp1", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    existing.set_user_attr("search_space", {"gamma": [1.0, 3.0], "alpha": [0.3, 0.7]})
    existing.set_user_attr("tie_beta", True)
    with pytest.raises(ValueError, match="study 'exp1' was created with .*use another study_name"):
        study(tiny_cohort, tmp_path, 1, search_space={"gamma": [1.0, 2.0], "alpha": [0.3, 0.7]})
    assert not (tmp_path / "runs").exists()


def test_search_on_postgresql_storage_and_tracking(tiny_cohort, tmp_path, in_root, postgres):
    """The README's scale-out settings, run for real: the Optuna storage and the MLflow tracking store are
    both PostgreSQL databases (a throwaway cluster); trials are distinct and nested under the study's run."""
    optuna_url, mlflow_url = postgres + "optuna", postgres + "mlflow"
    client = mlflow.MlflowClient(mlflow_url)  # artifacts under tmp_path, not MLflow's default ./mlruns
    client.create_experiment("exp1", artifact_location=(tmp_path / "artifacts").as_uri())
    summary = study(tiny_cohort, tmp_path, 2, pruner="none", storage=optuna_url, tracking_uri=mlflow_url)
    assert summary["trials"] == 2 and summary["complete"] == 2
    trials = optuna.load_study(study_name="exp1", storage=optuna_url).trials
    assert [t.number for t in trials] == [0, 1] and len({t.params["gamma"] for t in trials}) == 2
    experiment = client.get_experiment_by_name("exp1")
    parent = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'exp1'")[0]
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2 and all("val_dice_core_LVO" in c.data.metrics for c in children)
    assert {float(c.data.params["gamma"]) for c in children} == {t.params["gamma"] for t in trials}


def test_objectives_from_metric_names():
    metrics = {
        "val_dice_penumbra_LVO": 0.8,
        "val_dice_core_LVO": 0.6,
        "val_dice_penumbra_Non-LVO": 0.4,
        "val_dice_core_Non-LVO": 0.2,
        "val_adv_ml_penumbra_LVO": 10.0,
        "val_adv_ml_core_LVO": 2.0,
        "val_adv_ml_penumbra_Non-LVO": 4.0,
        "val_adv_ml_core_Non-LVO": 0.0,
    }
    assert objective_values(metrics, "dice") == pytest.approx((0.5,))
    assert objective_values(metrics, "dice_LVO") == pytest.approx((0.7,))
    assert objective_values(metrics, "dice_Non-LVO") == pytest.approx((0.3,))
    assert objective_values(metrics, "dice_vs_dv") == pytest.approx((0.5, 4.0))


def test_a_killed_workers_trial_is_retried_and_resumes_its_training(tiny_cohort, tmp_path, in_root):
    """A worker running ``searching`` is killed with SIGKILL once its trial has saved epoch 1. After three
    missed heartbeats the storage fails the trial and re-enqueues it (Optuna's RetryFailedTrialCallback); the
    next worker runs the retry with the same parameters in the same folder and MLflow run, resumed from
    epoch 1 (each epoch logged once), and the study holds exactly ``n_trials`` counted trials."""
    import signal
    import subprocess
    import sys
    import time

    storage, uri = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {**TINY_TRAINING, "max_epochs": 3, "patience": 5}
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "searching",
        "--config_file",
        "bundle/configs/search.json",
        "--datalist",
        str(tiny_cohort),
        "--storage",
        storage,
        "--tracking_uri",
        uri,
        "--output_root",
        str(tmp_path / "runs"),
        "--n_trials",
        "1",
        "--pruner",
        "none",
        "--heartbeat_interval",
        "1",
        "--training_overrides",
        repr(overrides),
    ]
    worker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "runs" / "exp1" / "exp1_trial_000" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and worker.poll() is None and not list(checkpoints.glob("last*epoch=1.pt")):
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    _, stderr = worker.communicate()
    assert list(checkpoints.glob("last*epoch=1.pt")), stderr[-3000:]
    time.sleep(4)  # more than three heartbeat intervals: the killed trial is stale
    summary = study(tiny_cohort, tmp_path, 1, pruner="none", heartbeat_interval=1, training_overrides=overrides)
    assert (summary["complete"], summary["failed"], summary["retried"]) == (1, 1, 1)
    trials = optuna.load_study(study_name="exp1", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].params == trials[0].params
    assert not (tmp_path / "runs" / "exp1" / "exp1_trial_001").exists()  # the retry used trial 0's folder
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("exp1")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'exp1_trial_000'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss"))
    assert history == [1, 2, 3]  # resumed after epoch 1, not restarted (that would log epoch 1 twice)
