"""Exp-1 as an Optuna study over real (tiny) bundle trainings: runs, resumes, prunes, fails a bad trial,
nests its MLflow runs, and refuses bad settings before any trial."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from scripts.learning.engine.reports import load_evaluation
from scripts.learning.experiments.search import check_search_space, objective_values, run_study
from scripts.learning.experiments.study import TRIAL_DICE, write_exp1_tables

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
    # the table comes from the study's storage (each trial's validation Dice), not from MLflow
    dice = trials[0].user_attrs[TRIAL_DICE]
    record = load_evaluation(trial_dirs[0] / "validation")["summary"]
    assert dice["core_LVO"][0] == pytest.approx(
        next(s["mean"] for s in record if (s["metric"], s["class"], s["group"]) == ("dice", "core", "LVO"))
    )
    (tmp_path / "mlflow.db").unlink()
    loaded = optuna.load_study(study_name="exp1", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    again = write_exp1_tables(loaded, tmp_path / "tables_again")
    assert Path(again["table_md"]).read_text() == table


def test_pruned_and_failed_trials_do_not_stop_the_study(tiny_cohort, tmp_path, in_root):
    pruned = study(tiny_cohort, tmp_path / "pruned", 1, pruner="threshold:1.01")  # every Dice is below 1.01
    assert pruned["pruned"] == 1 and pruned["complete"] == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'pruned' / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name("exp1").experiment_id], filter_string="tags.optuna_state = 'PRUNED'"
    )[0]
    assert run.info.status == "KILLED"
    broken = {**TINY_TRAINING, "loss_args#gamma": "$float('nan')"}  # a NaN loss
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
    with pytest.raises(ValueError, match="http://127.0.0.1:9: the MLflow tracking store does not answer"):
        study(tiny_cohort, tmp_path, 1, tracking_uri="http://127.0.0.1:9")
    assert not (tmp_path / "optuna.db").exists()  # refused before the study was created
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


def searching(tiny_cohort, tmp_path, storage, uri, n_trials, overrides, log_name, heartbeat_interval=1):
    """Start one ``searching`` worker (the documented command) with heartbeats every ``heartbeat_interval`` s."""
    command = [sys.executable, "-m", "monai.bundle", "run", "searching", "--config_file", "bundle/configs/search.json"]
    settings = {
        "datalist": str(tiny_cohort),
        "storage": storage,
        "tracking_uri": uri,
        "output_root": str(tmp_path / "runs"),
        "n_trials": str(n_trials),
        "pruner": "none",
        "heartbeat_interval": str(heartbeat_interval),
        "training_overrides": repr(overrides),
    }
    for key, value in settings.items():
        command += [f"--{key}", value]
    log = open(tmp_path / log_name, "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers share the cores (benchmarks/search_workers.py)
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_checkpoint(worker, checkpoints, timeout=300):
    """Poll until ``checkpoints`` holds epoch 1's resume point (or the worker ended)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and worker.poll() is None and not list(checkpoints().glob("last*epoch=1.pt")):
        time.sleep(0.05)
    return list(checkpoints().glob("last*epoch=1.pt"))


def test_two_workers_share_one_study_on_postgresql(tiny_cohort, tmp_path, in_root, postgres, mlflow_server, reaped):
    """The scale-out commands (bundle/docs/search.md), run for real: two ``searching`` workers on one PostgreSQL Optuna
    storage (a throwaway cluster) logging to one MLflow tracking server over HTTP (its backend store on the
    same cluster). One is killed with SIGKILL mid-trial and
    started again; the other goes on. The study ends with exactly ``n_trials`` complete trials, no sample
    drawn twice, the killed trial failed by the heartbeat and retried (resumed) once, and every trial's run
    nested under the one parent run, none left RUNNING. The retry runs in the killed trial's folder and MLflow
    run, resumed from its epoch-1 checkpoint."""
    import signal

    optuna_url, mlflow_url = postgres + "optuna", mlflow_server
    overrides = {**TINY_TRAINING, "max_epochs": 2, "patience": 5}
    first = searching(tiny_cohort, tmp_path, optuna_url, mlflow_url, 2, overrides, "first.log")
    second = searching(tiny_cohort, tmp_path, optuna_url, mlflow_url, 2, overrides, "second.log")
    reaped += [first, second]  # killed and reaped at the end if a wait below fails

    known = []  # the first worker's trial folder, asked of the database only until it is known

    def first_workers_checkpoints():  # the folder of the trial the first worker runs, once it has one
        if not known:
            try:
                trials = optuna.load_study(study_name="exp1", storage=optuna_url).trials
            except KeyError:
                trials = []
            mine = [t.number for t in trials if t.user_attrs.get("worker", "").endswith(f":{first.pid}")]
            known.extend(tmp_path / "runs" / "exp1" / f"exp1_trial_{n:03d}" / "checkpoints" for n in mine[:1])
        return known[0] if known else tmp_path / "no trial yet"

    found = wait_for_checkpoint(first, first_workers_checkpoints)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert found, (tmp_path / "first.log").read_text()[-3000:]
    again = searching(tiny_cohort, tmp_path, optuna_url, mlflow_url, 2, overrides, "again.log")
    reaped.append(again)
    for worker, log in ((second, "second.log"), (again, "again.log")):
        assert worker.wait(timeout=600) == 0, (tmp_path / log).read_text()[-3000:]

    trials = optuna.load_study(study_name="exp1", storage=optuna_url).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1 and len(trials) == 3, states
    killed = next(t for t in trials if t.state.name == "FAIL")
    assert killed.user_attrs["worker"].endswith(f":{first.pid}")
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state.name == "COMPLETE" and retry.params == killed.params
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len({t.params["gamma"] for t in complete}) == 2  # no sample run twice
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the study was shared
    client = mlflow.MlflowClient(mlflow_url)
    experiment_id = client.get_experiment_by_name("exp1").experiment_id
    parents = client.search_runs([experiment_id], filter_string="attributes.run_name = 'exp1'")
    assert len(parents) == 1
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
    )
    names = sorted(c.info.run_name for c in children)
    assert names == sorted(f"exp1_trial_{t.number:03d}" for t in trials if t is not retry)
    assert all(c.info.status == "FINISHED" for c in children)
    assert not client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    resumed = next(c for c in children if c.info.run_name == f"exp1_trial_{killed.number:03d}")
    history = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "train_loss"))
    assert history == [1, 2]  # resumed after epoch 1, not restarted (that would log epoch 1 twice)


def test_processes_left_running_by_a_failed_test_are_killed_and_reaped():
    """What ``reaped`` does for the search workers: a failed wait ends the block, the process is killed and
    reaped (it has an exit status), not left running."""
    from conftest import reaping

    with pytest.raises(subprocess.TimeoutExpired):
        with reaping() as processes:
            sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            processes.append(sleeper)
            sleeper.wait(timeout=0.5)
    assert sleeper.returncode is not None and sleeper.returncode < 0  # killed by a signal and reaped


def test_a_database_restart_during_a_search_loses_and_repeats_no_trial(tiny_cohort, tmp_path, mlflow_server, reaped):
    """Two ``searching`` workers on their own PostgreSQL cluster, restarted (``pg_ctl stop -m fast``: every
    connection cut, 5 s down, started again) while a trial trains: both workers reconnect
    (``ReconnectingRDBStorage``: ``pool_pre_ping`` and retries; the study lock reconnects too) and the study
    ends with exactly ``n_trials`` complete trials, none failed, none repeated."""
    import time

    import postgres as pg
    from conftest import missing_engine

    if pg.binaries() is None:
        missing_engine("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    overrides = {**TINY_TRAINING, "max_epochs": 2, "patience": 5}
    with pg.cluster(("optuna",)) as base:
        url = base + "optuna"
        workers = [
            searching(tiny_cohort, tmp_path, url, mlflow_server, 3, overrides, f"worker{i}.log", heartbeat_interval=10)
            for i in (1, 2)
        ]
        reaped += workers
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "runs").glob("exp1/*/checkpoints/last*epoch=1.pt")):
            assert all(w.poll() is None for w in workers), (tmp_path / "worker1.log").read_text()[-3000:]
            time.sleep(0.05)
        pg.restart(base, down_s=5.0)  # mid-trial: a trial is between its epochs 1 and 2
        for i, worker in enumerate(workers, 1):
            assert worker.wait(timeout=600) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
        logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in (1, 2))
        assert "Optuna database connection lost" in logs  # the restart was felt, and ridden out
        trials = optuna.load_study(study_name="exp1", storage=url).trials
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE"] * 3, states
    assert len({t.params["gamma"] for t in trials}) == 3  # no trial run twice


def test_sigterm_gives_the_trial_back_and_the_next_worker_resumes_it(tiny_cohort, tmp_path, reaped):
    """A ``searching`` worker sent SIGTERM mid-trial (after epoch 1 of 2) stops at the next iteration boundary
    and exits 143; its trial is failed and enqueued again at once with the same parameters, its checkpoint kept,
    its MLflow run KILLED. The next worker resumes it (epoch 2 only) and the study ends with ``n_trials``."""
    import signal

    storage, uri = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {**TINY_TRAINING, "max_epochs": 2, "patience": 5}
    first = searching(tiny_cohort, tmp_path, storage, uri, 2, overrides, "first.log", heartbeat_interval=60)
    reaped.append(first)
    checkpoints = tmp_path / "runs" / "exp1" / "exp1_trial_000" / "checkpoints"
    assert wait_for_checkpoint(first, lambda: checkpoints), (tmp_path / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM, (tmp_path / "first.log").read_text()[-3000:]
    assert "stopped by SIGTERM" in (tmp_path / "first.log").read_text()
    assert [p.name for p in checkpoints.iterdir()] == ["last_checkpoint_epoch=1.pt"]  # kept for the resume
    trials = optuna.load_study(study_name="exp1", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # given back at once, not after the heartbeat
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("exp1").experiment_id
    (stopped,) = client.search_runs([experiment_id], filter_string="attributes.run_name = 'exp1_trial_000'")
    assert stopped.info.status == "KILLED"

    again = searching(tiny_cohort, tmp_path, storage, uri, 2, overrides, "again.log", heartbeat_interval=60)
    reaped.append(again)
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()[-3000:]
    trials = optuna.load_study(study_name="exp1", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    (resumed,) = client.search_runs([experiment_id], filter_string="attributes.run_name = 'exp1_trial_000'")
    assert resumed.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "train_loss")) == [1, 2]


def test_the_median_pruner_waits_for_the_warm_up_epochs():
    """A trial far below the median is not pruned before ``warmup_epochs`` (the training's ``min_epochs``: core,
    half of the Dice objective, appears only after several epochs), and is from then on."""
    from scripts.learning.experiments.study import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", warmup_epochs=5))
    for _ in range(2):  # two finished trials, the median at every epoch 0.6
        finished = study.ask()
        for epoch in range(1, 8):
            finished.report(0.6, epoch)
        study.tell(finished, 0.6)
    trial = study.ask()
    decisions = []
    for epoch in range(1, 8):
        trial.report(0.1, epoch)
        decisions.append(trial.should_prune())
    assert decisions == [False] * 4 + [True] * 3
