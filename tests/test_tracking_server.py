"""Training, evaluation, the model registry, inference from a registered model and the experiment tables
against an MLflow tracking server over HTTP (``mlflow server`` with a PostgreSQL backend
store; artifacts proxied by the server to a local folder)."""

import json
import re
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch
from test_training import CONFIG_FILES, tiny_overrides
from test_training import bundle as run_bundle
from workflows import overrides_from, run_in_process

from scripts.learning.experiments.grids import build_tables
from scripts.learning.tracking.registry import registered_weights
from scripts.learning.tracking.runs import data_version


def bundle(run_id: str, config: str, *args: str, check: bool = True):
    result = run_bundle(run_id, config, *args, check=False)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def test_runs_log_to_a_tracking_server_and_tables_are_built_beside_it(
    tiny_cohort, tmp_path, mlflow_server, monkeypatch
):
    """The loss search's workers log to the same server in ``test_search.py``."""
    out = tmp_path / "runs" / "exp3" / "SF_G-PMs-N"  # an Exp-3 cell's name, so `tabulating` finds it
    args = tiny_overrides(tiny_cohort, out, mlflow_server, "--max_epochs", "1", "--experiment_name", "exp3")
    bundle("training", "bundle/configs/train.json", *args, "--registered_model_name", "ctp-sf-tiny")
    run_in_process(
        "evaluating",
        CONFIG_FILES,
        **overrides_from([*args, "--split", "validation"]),
    )
    tables = build_tables(("exp3",), str(tmp_path / "runs"), str(tmp_path / "tables"))  # from the local evaluation
    client = mlflow.MlflowClient(mlflow_server)
    assert client._tracking_client.tracking_uri == mlflow_server  # over HTTP, not a local store
    experiment = client.get_experiment_by_name("exp3")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    (run,) = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'SF_G-PMs-N'")
    assert run.info.status == "FINISHED"
    assert run.data.params["variant"] == "SF" and run.data.params["inputs"] == "PMs+N"
    assert {"train_loss", "val_dice_penumbra_LVO", "val_dice_core_LVO", "val_dv_ml_core_all"} <= set(run.data.metrics)
    resolved = json.loads(Path(client.download_artifacts(run.info.run_id, "train_resolved.json", tmp_path)).read_text())
    assert resolved["roi_size"] == [64, 64] and resolved["experiment_name"] == "exp3"
    card = Path(client.download_artifacts(run.info.run_id, "validation/metrics_summary.md", tmp_path)).read_text()
    assert "| SF_gradual(PMs+N) |" in card  # the model card's table, from the server
    table = tables["exp3_md"].read_text()
    assert "| SF_G-PMs-N | penumbra |" in table and re.search(
        r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", table
    )  # mean [95 % CI]

    # what MLflow's UI shows: a model-training experiment, the run's dataset, source and model
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (dataset,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    assert dataset.dataset.digest == data_version(tiny_cohort) and dataset.dataset.name == tiny_cohort.stem
    assert run.data.tags["mlflow.source.name"] == "python -m monai.bundle run training"
    assert run.outputs.model_outputs  # the logged model
    version = client.get_model_version("ctp-sf-tiny", "1")
    assert version.run_id == run.info.run_id
    best = torch.load(next((out / "model").glob("best*.pt")), weights_only=False)  # the network's state dict
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    registered = registered_weights("models:/ctp-sf-tiny/1", mlflow_server)
    assert not any((tmp_path / "tmp").iterdir()), "the downloaded model was left in the temporary folder"
    assert registered.keys() == best.keys() and all(torch.equal(registered[k], best[k]) for k in best)
    client.set_registered_model_alias("ctp-sf-tiny", "champion", "1")
    inference = ["--input", str(tiny_cohort), "--split", "test", "--tracking_uri", mlflow_server, "--output_dir"]
    champion = [str(tmp_path / "inference"), "--checkpoint", "models:/ctp-sf-tiny@champion"]
    run_in_process("inference", "bundle/configs/inference.json", **overrides_from([*inference, *champion]))
    first = json.loads(tiny_cohort.read_text())["test"][0]["id"]
    assert (tmp_path / "inference" / first / "label.nii.gz").is_file()
    with pytest.raises(ValueError, match="^models:/ctp-sf-tiny/7: not found in the MLflow store http"):
        registered_weights("models:/ctp-sf-tiny/7", mlflow_server)


def test_a_missing_engine_fails_under_ci_and_skips_elsewhere(monkeypatch):
    """CI=true turns "PostgreSQL is not installed" from a skip into a failure (CI must not go green without
    the registry, models:/, the artifact proxy and the study lock); a developer's machine still skips."""
    from conftest import missing_engine

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the real-engine tests must run"):
        missing_engine("no PostgreSQL binaries")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL binaries"):
        missing_engine("no PostgreSQL binaries")


OUTAGE_LIMIT_S = 90  # a client left on MLflow's own retries (minutes per write) stalls an epoch past it


def test_a_tracking_server_outage_mid_training_loses_nothing(tiny_cohort, tmp_path, postgres):
    """A second ``mlflow server`` on the tests' PostgreSQL database, stopped once the training has logged its
    first epoch until two more epochs are saved (at least 20 s, at most ``OUTAGE_LIMIT_S``), then started again
    on the same port: the training neither dies nor stalls (epochs go on during the outage), the writes of the
    outage are sent when the server is back, and the run ends FINISHED with every epoch's metrics
    (``scripts.learning.tracking.outage``)."""
    import subprocess
    import sys
    import time

    import mlflow_server
    from postgres import free_port
    from test_training import ROOT, SUBPROCESS_TIMEOUT, metric_history, runs_named

    port, root, out = free_port(), tmp_path / "server", tmp_path / "run"
    epochs = 10
    args = tiny_overrides(tiny_cohort, out, f"http://127.0.0.1:{port}", "--max_epochs", str(epochs))
    args += ["--finetuning", "unfrozen", "--patience", "100", "--experiment_name", "outage"]

    def saved_epochs() -> int:
        return len(list((out / "checkpoints").glob("last*.pt"))) and max(
            int(p.stem.split("=")[-1]) for p in (out / "checkpoints").glob("last*.pt")
        )

    with mlflow_server.server(postgres + "mlflow", root, port=port) as url:
        log = open(tmp_path / "training.log", "w+")  # a file, not a pipe: a full pipe would stall the training
        command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", CONFIG_FILES[0]]
        process = subprocess.Popen([*command, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while saved_epochs() < 1 and process.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            assert process.poll() is None, (tmp_path / "training.log").read_text()[-3000:]
        except BaseException:
            process.kill()
            raise
    try:
        before = saved_epochs()  # the server is down from here
        down_since, target = time.time(), min(before + 2, epochs)
        while saved_epochs() < target and process.poll() is None and time.time() - down_since < OUTAGE_LIMIT_S:
            time.sleep(0.5)  # a loaded machine trains slower: wait for two epochs, not for a fixed time
        during, outage_s = saved_epochs(), time.time() - down_since
        assert process.poll() in (None, 0), (tmp_path / "training.log").read_text()[-3000:]  # alive or done
        assert during >= target, (before, during, outage_s)  # the epoch loop did not stall
        time.sleep(max(0.0, 20 - outage_s))  # the outage lasts at least 20 s
        with mlflow_server.server(postgres + "mlflow", root, port=port):
            process.wait(timeout=SUBPROCESS_TIMEOUT)
            output = (tmp_path / "training.log").read_text()
            assert process.returncode == 0, output[-3000:]
            assert "tracking server does not answer" in output and "tracking server back" in output
            _, runs = runs_named(url, "run", "outage")
            assert [run.info.status for run in runs] == ["FINISHED"]
            for metric in ("train_loss", "val_loss", "val_dice_lesion"):
                steps = [step for step, _ in metric_history(url, "run", metric, "outage")]
                assert steps == list(range(1, epochs + 1)), (metric, steps)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()


def test_runs_starting_together_log_one_new_dataset(mlflow_server, tmp_path):
    """Workers of a search start their trials at once and log the same new datalist: the tracking server
    checks for the dataset, then inserts it, and all but one insert break its unique key (seen in CI as a
    failed trial). Every run ends linked to the one dataset."""
    import threading

    from scripts.learning.tracking.runs import log_datalist

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"patient": str(tmp_path)}]}))  # a digest no other test has
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"datasets_{tmp_path.name}")
    runs = [client.create_run(experiment).info.run_id for _ in range(8)]
    start, errors = threading.Barrier(len(runs)), []

    def log(run_id: str) -> None:
        start.wait()
        try:
            log_datalist(client, run_id, datalist, "training")
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    digests = [[d.dataset.digest for d in client.get_run(r).inputs.dataset_inputs] for r in runs]
    assert all(len(d) == 1 for d in digests) and len({d[0] for d in digests}) == 1, digests
