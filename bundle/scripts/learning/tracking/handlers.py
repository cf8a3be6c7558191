"""The Ignite handlers that write to MLflow: MONAI's ``MLFlowHandler`` with the bundle's precedence and records
(and the trained model at the end of a training), the evaluation's logger, and the fine-tuning stage logger (the
``on_stage`` callable of :class:`scripts.learning.model.finetuning.GradualFineTuning`).

``bundle/configs/mlflow.json`` attaches them, as MONAI's tracking settings (``--tracking``); no other config names
them."""

from __future__ import annotations

import os
from typing import Any

import ignite.distributed as idist
from ignite.engine import Events
from monai.handlers import MLFlowHandler as _MonaiMLFlowHandler

from .outage import PENDING, TolerantClient
from .registry import log_model
from .runs import latest_run, log_datalist, log_to_training_run, mark_model_training, tag_source, tracking_client


class MLFlowHandler(_MonaiMLFlowHandler):
    """MONAI's ``MLFlowHandler`` with the bundle's precedence and the records MLflow's UI shows.

    - A given ``tracking_uri`` wins over ``MLFLOW_TRACKING_URI``. MONAI 1.6.1's handler lets the environment
      variable win over its argument, so with the variable set a training logged to the environment's store
      while its evaluation, stage logs and loss search logged to the configured one. The bundle's order
      (``shared/DESIGN.md``) is the command line or config value, then the environment, then the default
      (:func:`.runs.default_tracking_uri`); the configs pass that resolved value here.
    - The experiment is marked as model training (:func:`.runs.mark_model_training`), so MLflow's UI opens it on
      its runs, not on the GenAI traces overview.
    - With ``datalist``, the run's input is the datalist as an MLflow dataset whose digest is its
      :func:`.runs.data_version` (:func:`.runs.log_datalist`; the UI's Dataset column).
    - The run carries MLflow's source tags (command, user, git commit; the UI's Source column).
    - A tracking-server outage during the run neither kills nor stalls it: writes that find the server down are
      kept and sent when it is back, and the run's end waits for them (:mod:`scripts.learning.tracking.outage`).
    - A run stopped by SIGTERM / SIGINT (:mod:`scripts.learning.engine.stopping`) ends ``KILLED``; a resumed training
      reopens it (MONAI reopens every run not ``FINISHED``) and marks it ``RUNNING`` again.
    - With ``model`` (``network``, ``checkpoint``: a callable giving the best checkpoint's path,
      ``registered_model_name``, ``roi_size``), a training that ends, not stopped by a signal, logs the network with
      that checkpoint's weights as the run's MLflow model and registers it when named
      (:func:`.registry.log_model`).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        datalist: str | os.PathLike | None = None,
        dataset_context: str = "training",
        model: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.datalist, self.dataset_context, self.model = datalist, dataset_context, model
        self.tracking_uri = tracking_uri
        if datalist is not None:
            kwargs.setdefault("dataset_logger", self._log_datalist)
        hidden = os.environ.pop("MLFLOW_TRACKING_URI", None) if tracking_uri else None
        try:
            super().__init__(tracking_uri=tracking_uri, **kwargs)
        finally:
            if hidden is not None:
                os.environ["MLFLOW_TRACKING_URI"] = hidden
        self.client = TolerantClient(self.client)

    def _set_experiment(self) -> None:
        super()._set_experiment()
        mark_model_training(self.client, self.experiment)

    def attach(self, engine: Any) -> None:
        if self.model is not None:  # before the run closes
            engine.add_event_handler(Events.COMPLETED, self._log_model)
        super().attach(engine)
        engine.add_event_handler(Events.TERMINATE, self._terminated)

    def start(self, engine: Any) -> None:
        if self.cur_run is not None:  # the validator starts every epoch: its run, experiment and params are set
            return
        super().start(engine)
        if self.cur_run.info.status != "RUNNING":  # a stopped or failed run reopened by a resumed training
            self.client.update_run(self.cur_run.info.run_id, status="RUNNING")
        tag_source(self.client, self.cur_run)

    def _terminated(self, engine: Any) -> None:
        """A run stopped by a signal (:mod:`scripts.learning.engine.stopping`) ends KILLED, not FINISHED; early
        stopping also terminates the engine and still ends FINISHED."""
        if getattr(engine.state, "stop_signal", None):
            self.run_finish_status = "KILLED"

    def _log_datalist(self, dataset_dict: Any = None) -> None:
        log_datalist(self.client, self.cur_run.info.run_id, self.datalist, self.dataset_context)

    def _log_model(self, engine: Any) -> None:
        if getattr(engine.state, "stop_signal", None):  # stopped to be resumed: the model comes at its end
            return
        model = dict(self.model)
        checkpoint = model.pop("checkpoint")
        log_model(
            checkpoint=checkpoint(),
            tracking_uri=self.tracking_uri,
            experiment_name=self.experiment_name,
            run_name=self.run_name,
            **model,
        )


class EvaluationLogger:
    """After an evaluation, log its metrics (the evaluator's ``val_`` names with the split's ``prefix``), its report
    folders and its datalist into the training run: ``settings`` are :func:`.runs.log_to_training_run`'s arguments
    but the metrics (``tracking_uri``, ``experiment_name``, ``run_name``, ``artifact_dirs``, ``prefix``, ...)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        log_to_training_run(metrics=dict(engine.state.metrics), **self.settings)


class StageLogger:
    """Record fine-tuning stage transitions in the MLflow training run (metric ``finetuning_stage`` at the
    epoch it starts, and tag ``finetuning_stages``)."""

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str) -> None:
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self.history: list[str] = []

    def __call__(self, index: int, stage: str, epoch: int) -> None:
        self.history.append(f"{epoch}:{stage}")
        if idist.get_rank() != 0:
            return
        client, history = tracking_client(self.tracking_uri), " ".join(self.history)

        def log() -> None:
            run = latest_run(client, self.experiment_name, self.run_name)
            if run is not None:
                client.log_metric(run.info.run_id, "finetuning_stage", float(index), step=int(epoch))
                client.set_tag(run.info.run_id, "finetuning_stages", history)

        PENDING.call(f"finetuning_stage {index} at epoch {epoch}", log)  # kept through a server outage
