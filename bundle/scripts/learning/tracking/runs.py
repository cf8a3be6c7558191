"""MLflow tracking beyond MONAI's ``MLFlowHandler``: the store's default, the data version, the executed
config, evaluation metrics logged into the training run, and fine-tuning stage changes."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import sqlalchemy
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.tracking.context.registry import resolve_tags

logger = logging.getLogger(__name__)


def default_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the bundle's SQLite store ``mlruns/mlflow.db``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.abspath("mlruns/mlflow.db")


def check_tracking_uri(tracking_uri: str | None = None, timeout: float = 10.0) -> str:
    """The resolved tracking URI (:func:`default_tracking_uri`), once its store answers: a tracking server's
    ``/health`` for ``http(s)://``, a connection for a database URL (SQLite files are created on use).

    MLflow's client retries an unreachable server for minutes and then fails deep inside a run; this fails
    first, with one line naming the URL.
    """
    uri = default_tracking_uri(tracking_uri)
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    try:
        if scheme in ("http", "https"):
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status != 200:
                    raise OSError(f"/health answered {response.status}")
        elif scheme in ("postgresql", "mysql", "mssql"):
            sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool).connect().close()
    except Exception as err:  # refused, timed out, unknown host, bad credentials, missing driver
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{uri}: the MLflow tracking store does not answer ({type(err).__name__}: {first}).") from err
    return uri


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The experiment tag MLflow 3's UI reads to open an experiment on its runs (model training) rather than on
the GenAI traces overview."""


def mark_model_training(client: Any, experiment: Any) -> None:
    """Tag ``experiment`` as a model-training experiment (:data:`EXPERIMENT_KIND`) unless it is tagged."""
    key, value = EXPERIMENT_KIND
    if experiment is not None and key not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, key, value)


def tag_source(client: Any, run: Any) -> None:
    """Set MLflow's default run tags (source name and type, user, git commit: ``mlflow.tracking.context``)
    that ``run`` lacks; the source name is the ``monai.bundle run <workflow>`` command when launched so."""
    tags = resolve_tags()
    if len(sys.argv) > 2 and "monai" in sys.argv[0] and sys.argv[1] == "run":
        tags["mlflow.source.name"] = f"python -m monai.bundle run {sys.argv[2]}"
    present = run.data.tags if run is not None else {}
    for key, value in tags.items():
        if key.startswith("mlflow.") and key not in present and key != "mlflow.runName":
            client.set_tag(run.info.run_id, key, value)


def log_datalist(client: Any, run_id: str, datalist: str | os.PathLike, context: str) -> None:
    """Log ``datalist`` as the run's input dataset (name: the file's stem, digest: :func:`data_version`,
    source: its path), tagged with the ``context`` it is first used for (``training``, or the evaluated split
    of a run that did not train on it). MLflow links a dataset to a run once, so a run holds it once."""
    path = Path(datalist).resolve()
    # a local file's source by its type: resolving the path warns on every run that MLflow registers two
    # "local" source types (a warning the user cannot act on)
    source = get_dataset_source_from_json(json.dumps({"uri": str(path)}), source_type="local")
    dataset = MetaDataset(source, name=path.stem, digest=data_version(path))
    if any(d.dataset.digest == dataset.digest for d in client.get_run(run_id).inputs.dataset_inputs):
        return
    tag = InputTag(key="mlflow.data.context", value=context)
    inputs = [DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[tag])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        # Two runs of one experiment logging a new dataset at once (workers of a search starting together):
        # the tracking server checks for the dataset, then inserts it, and the later insert breaks the unique
        # key. The dataset now exists, so a second call only links it to this run.
        if "dataset_pk" not in str(error) and "UNIQUE constraint failed: datasets" not in str(error):
            raise
        client.log_inputs(run_id, datasets=inputs)


@contextmanager
def use_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``mlflow.pytorch.log_model`` / ``load_model``) at
    ``tracking_uri`` for its tracking and registry within the block, then restore exactly what was there.

    ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the environment, and MLflow's own
    temporary switch unsets it afterwards: either would change the user's setting for the rest of the
    process (and its subprocesses). This restores MLflow's globals and both environment variables as they
    were.
    """
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri, {k: os.environ.get(k) for k in keys}
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved[0], saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def data_version(datalist: str | os.PathLike) -> str:
    """The datalist's ``version`` (the synthetic generator writes one), else a hash of the file."""
    path = Path(datalist)
    try:
        version = json.loads(path.read_text()).get("version")
    except (OSError, ValueError):
        version = None
    return (
        str(version) if version else hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path.is_file() else "unknown"
    )


NOT_PARAMS = ("bundle_root", "resume")
"""Settings that are not a run's parameters: where the bundle lives and whether this start resumes (a resumed
run keeps its params, and MLflow refuses a param whose value changes)."""


def config_params(resolved_config: str | os.PathLike, derived: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's MLflow params, derived from its executed config (:func:`scripts.cli.save_resolved_config`) rather than
    listed by hand: every top-level setting that is a plain value (a number, a string, a boolean, or a list
    of those, as text), leaving out ``$`` expressions and ``@`` references, then ``derived`` (values computed
    from the config, e.g. the data version) on top. Without the file (not rank 0) only ``derived``."""

    def plain(value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return isinstance(value, (bool, int, float)) or (isinstance(value, str) and not value.startswith(("$", "@")))

    path = Path(resolved_config)
    config = json.loads(path.read_text()) if path.is_file() else {}
    params = {
        k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
        for k, v in config.items()
        if plain(v) and v != []
    }
    for key in NOT_PARAMS:
        params.pop(key, None)
    return {**params, **(derived or {})}


def experiment_id(client: Any, name: str) -> str:
    """The id of MLflow experiment ``name``, created when it does not exist yet."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment = client.get_experiment(client.create_experiment(name))
    mark_model_training(client, experiment)
    return experiment.experiment_id


def tracking_client(tracking_uri: str) -> mlflow.MlflowClient:
    """The MLflow client of the store at ``tracking_uri``: how the rest of the bundle reaches the tracker."""
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def nest_run(client: Any, run_id: str, parent_id: str) -> None:
    """Show run ``run_id`` under ``parent_id`` in MLflow's UI (a search's trials under the study's run)."""
    client.set_tag(run_id, "mlflow.parentRunId", parent_id)


def log_metrics(client: Any, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
    """Log every finite number of ``metrics`` to run ``run_id`` in one request (others are left out)."""
    now = int(time.time() * 1000)
    batch = [
        Metric(key, float(value), now, step)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and math.isfinite(value)
    ]
    client.log_batch(run_id, metrics=batch)


def latest_run(client: Any, experiment_name: str, run_name: str) -> Any | None:
    """The newest MLflow run named ``run_name`` in ``experiment_name``, or None."""
    experiment = client.get_experiment_by_name(experiment_name)
    runs = (
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.run_name = '{run_name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if experiment
        else []
    )
    return runs[0] if runs else None


def run_finished(tracking_uri: str, experiment_name: str, run_name: str) -> bool:
    """True when a run named ``run_name`` in ``experiment_name`` ended (FINISHED) with validation or test
    metrics: a finished training (or evaluation) that a rerun should skip, not resume."""
    client = tracking_client(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    return any(
        r.info.status == "FINISHED" and any(k.startswith(("test_", "val_")) for k in r.data.metrics) for r in runs
    )


def log_to_training_run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    metrics: dict,
    artifact_dirs: Sequence[str] = (),
    prefix: str = "val",
    datalist: str | os.PathLike | None = None,
    split: str | None = None,
) -> str | None:
    """Log evaluation metrics and reports into the newest MLflow run named ``run_name`` (the training run);
    the evaluator's ``val_`` metric names take the split's ``prefix`` (``test_dice_lesion``, ...). With
    ``datalist``, it is logged as the run's input dataset for the ``split`` (:func:`log_datalist`)."""
    client = tracking_client(tracking_uri)
    run = latest_run(client, experiment_name, run_name)
    if run is None:
        logger.warning(
            "no MLflow run named %s in experiment %s: evaluation metrics not logged", run_name, experiment_name
        )
        return None
    run_id = run.info.run_id
    log_metrics(client, run_id, {prefix + "_" + k[4:] if k.startswith("val_") else k: v for k, v in metrics.items()})
    for folder in artifact_dirs:
        if Path(folder).is_dir():
            client.log_artifacts(run_id, str(folder), artifact_path=Path(folder).name)
    if datalist is not None:
        log_datalist(client, run_id, datalist, split or prefix)
    return run_id
