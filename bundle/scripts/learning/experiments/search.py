"""Exp-1 as an Optuna study: the focal Tversky loss's gamma / alpha / beta searched over real bundle trainings.

Each trial is the bundle's own training (``train.json`` with the trial's overrides, run in-process through
MONAI's ``ConfigWorkflow``) followed by the evaluation of its best checkpoint on the validation split
(``evaluate.json``), exactly as ``python -m monai.bundle run training`` / ``evaluating`` would run them. An
Ignite handler reports the objective after every validation so Optuna can prune bad trials. The study lives
in an RDB storage (default SQLite under ``mlruns/``): rerunning the same command continues it, and several
workers share one study through the same URL (e.g. PostgreSQL). In MLflow the study is a parent run and every
trial's training run is nested under it, tagged with its trial number and state.

Objectives (validation, best checkpoint): ``dice`` (mean Dice of penumbra and core over LVO and Non-LVO;
maximised), ``dice_LVO`` / ``dice_Non-LVO`` (one group), ``dice_vs_dv`` (two objectives: that Dice,
maximised, and the mean absolute volume error in ml, minimised; Optuna cannot prune multi-objective trials).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from ignite.engine import Engine, Events

from ...cli import TRACKING_SETTINGS, bundle_workflow
from ..engine.checkpoints import drop_resume_point
from ..engine.metrics import lesion_mean
from ..engine.reports import load_evaluation
from ..engine.stopping import StopRequested
from ..engine.training import check_training_inputs
from ..tracking.runs import check_tracking_uri, latest_run, log_metrics, nest_run, tracking_client
from .study import (
    TRIAL_DICE,
    check_study_settings,
    make_pruner,
    open_storage,
    requeue_stopped_trial,
    storage_error,
    study_parent_run,
    summarise_study,
    trial_counts,
    trial_dice,
)
from .study_lock import StudyLock

logger = logging.getLogger(__name__)

OBJECTIVES: dict[str, tuple[str, ...]] = {
    "dice": ("maximize",),
    "dice_LVO": ("maximize",),
    "dice_Non-LVO": ("maximize",),
    "dice_vs_dv": ("maximize", "minimize"),
}
PAPER_SPACE = {"gamma": (1.0, 3.0), "alpha": (0.0, 1.0), "beta": (0.0, 1.0)}


def objective_values(metrics: Mapping[str, float], objective: str, split: str = "val") -> tuple[float, ...]:
    """The objective(s) from ``<split>_<metric>_<class>_<group>`` metrics; NaN where a metric is missing."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    groups = (objective.split("_", 1)[1],) if objective in ("dice_LVO", "dice_Non-LVO") else ("LVO", "Non-LVO")
    dice = lesion_mean(metrics, split, "dice", groups)
    return (dice, lesion_mean(metrics, split, "adv_ml", groups)) if objective == "dice_vs_dv" else (dice,)


def check_search_space(space: Mapping[str, Sequence[float]], tie_beta: bool) -> dict[str, tuple[float, float]]:
    """Validate ``{name: [low, high]}`` (names among gamma, alpha, beta; non-empty, not inverted)."""
    checked = {}
    for name, bounds in space.items():
        if name not in PAPER_SPACE:
            raise ValueError(f"search_space: unknown parameter {name!r}; searchable: {', '.join(PAPER_SPACE)}.")
        if not isinstance(bounds, Sequence) or len(bounds) != 2:
            raise ValueError(f"search_space: {name} must be [low, high], got {bounds!r}.")
        low, high = float(bounds[0]), float(bounds[1])
        if not low < high:
            raise ValueError(f"search_space: {name} range [{low}, {high}] is empty or inverted (need low < high).")
        checked[name] = (low, high)
    if tie_beta:
        checked.pop("beta", None)
    if not checked:
        raise ValueError("search_space: nothing to search.")
    return checked


class TrialPruning:
    """Ignite handler: after each validation, report the objective to the Optuna trial and stop it when the
    pruner says so (``optuna.TrialPruned``); a non-finite training loss fails the trial."""

    def __init__(self, trial: Any, validator: Engine, objective: str = "dice", prune: bool = True) -> None:
        self.trial, self.validator, self.objective, self.prune = trial, validator, objective, prune

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._check_loss)
        self.validator.add_event_handler(Events.COMPLETED, self._report)

    def _check_loss(self, engine: Engine) -> None:
        output = engine.state.output
        loss = (
            output[0]["loss"] if isinstance(output, list) else output.get("loss") if isinstance(output, dict) else None
        )
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(f"non-finite training loss ({float(loss)}) at iteration {engine.state.iteration}")

    def _report(self, validator: Engine) -> None:
        if not self.prune:
            return
        value = objective_values(validator.state.metrics, self.objective)[0]
        if value != value:
            return
        step = self.trainer.state.epoch
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {step} with {self.objective} {value:.4f}")


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception behind MONAI's ``Failed to evaluate`` wrappers (pruning, NaN loss, ...)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def run_study(
    datalist: str = "data/synthetic/datalist.json",
    study_name: str = "exp1",
    storage: str | None = None,
    n_trials: int = 10,
    search_space: Mapping[str, Sequence[float]] | None = None,
    tie_beta: bool = True,
    objective: str = "dice",
    pruner: str = "median",
    training_overrides: Mapping[str, Any] | None = None,
    output_root: str = "runs/search",
    tracking_uri: str | None = None,
    experiment_name: str = "exp1",
    seed: int = 0,
    config_dir: str = "bundle/configs",
    heartbeat_interval: int = 60,
) -> dict[str, Any]:
    """Run (or continue) the study until it holds ``n_trials`` finished trials; return a summary.

    A trial whose worker was killed is failed by the storage's heartbeat after ``3 * heartbeat_interval``
    seconds and retried once by the next worker that starts a trial: same parameters, same output folder and
    MLflow run, training resumed from its last checkpoint. It counts once towards ``n_trials``.

    Writes ``<output_root>/<study_name>/best_params.json`` (a config override file for training:
    ``--config_file "['bundle/configs/train.json','.../best_params.json']"``) and the Exp-1 tables.
    """
    directions = OBJECTIVES.get(objective)
    if directions is None:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    training = {**json.loads((Path(config_dir) / "train.json").read_text()), **dict(training_overrides or {})}
    warmup = min(int(training.get("min_epochs", 1)), int(training.get("max_epochs", 1)) - 1)
    trial_pruner = make_pruner(pruner, warmup_epochs=warmup)
    space = check_search_space(search_space or PAPER_SPACE, tie_beta)
    if int(n_trials) < 1:
        raise ValueError(f"n_trials must be at least 1, got {n_trials}.")
    check_training_inputs(datalist, "SF", "PMs+N", "gradual", "cpu")
    url = storage or "sqlite:///" + os.path.abspath("mlruns/optuna.db")
    uri = check_tracking_uri(tracking_uri)
    lock = StudyLock(url, study_name)
    try:
        lock.acquire()
    except Exception as err:  # SQLAlchemy raises many types for bad URLs, missing drivers, refused connections
        raise ValueError(storage_error(url, err)) from err
    try:  # one worker at a time opens the study and its MLflow parent run
        study = optuna.create_study(
            study_name=study_name,
            storage=open_storage(url, heartbeat_interval),
            load_if_exists=True,
            directions=list(directions),
            pruner=trial_pruner,
        )
        check_study_settings(study, objective, space, tie_beta)
        client = tracking_client(uri)
        parent_id = study_parent_run(study, client, experiment_name, url, objective, space, tie_beta)
    finally:
        lock.release()
    client.update_run(parent_id, status="RUNNING")
    settings = {
        "datalist": datalist,
        "tracking_uri": uri,
        "experiment_name": experiment_name,
        **{"max_epochs": 4, "patience": 1, **dict(training_overrides or {})},
    }
    root = Path(output_root) / study_name
    trial = SearchTrial(
        study, lock, client, parent_id, root, settings, space, tie_beta, objective, seed, config_dir, experiment_name
    )
    optimise(study, lock, trial, int(n_trials), heartbeat_interval)
    summary = summarise_study(study, root, client, experiment_name, parent_id)
    client.set_terminated(parent_id)
    return summary


def optimise(study: Any, lock: StudyLock, objective: Any, n_trials: int, heartbeat_interval: int = 60) -> None:
    """Ask the study for trials, one at a time under the study's lock, until ``n_trials`` are finished; while the
    last trials run on other workers, wait (one of them may die and its trial come back)."""
    while True:
        with lock:  # released by ``objective`` as soon as Optuna has asked for the trial, else here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and enqueued again
            done, running, waiting = trial_counts(study)
            if done >= n_trials:
                return
            if waiting > 0 or done + running < n_trials:
                study.optimize(objective, n_trials=1, catch=(Exception,))
                continue
        time.sleep(min(5.0, float(heartbeat_interval)))


class SearchTrial:
    """One trial of the study (Optuna's objective): the bundle's training with the trial's loss parameters,
    pruned by :class:`TrialPruning`, then the evaluation of its best checkpoint on the validation split; its
    MLflow run nested under the study's parent run and tagged with the trial's number and state."""

    def __init__(
        self,
        study: Any,
        lock: StudyLock,
        client: Any,
        parent_id: str,
        root: Path,
        settings: Mapping[str, Any],
        space: Mapping[str, tuple[float, float]],
        tie_beta: bool,
        objective: str,
        seed: int,
        config_dir: str,
        experiment_name: str,
    ) -> None:
        self.study, self.lock, self.client, self.parent_id, self.root = study, lock, client, parent_id, root
        self.settings, self.space, self.tie_beta, self.objective = dict(settings), space, tie_beta, objective
        self.experiment_name = experiment_name
        self.seed, self.config_dir = seed, config_dir
        self.prune = len(OBJECTIVES[objective]) == 1

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self.lock.release()  # the trial exists: other workers may ask for theirs
        # seeded by the trial's number (unique across workers); the constant liar keeps parallel workers'
        # samples away from each other's running trials
        trial.study.sampler = optuna.samplers.TPESampler(
            seed=self.seed + trial.number, n_startup_trials=4, constant_liar=True
        )
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {name: trial.suggest_float(name, low, high) for name, (low, high) in self.space.items()}
        if self.tie_beta:
            params["beta"] = 1.0 - params["alpha"]
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        name = f"{self.study.study_name}_trial_{trial.number if retry_of is None else retry_of:03d}"
        # the training overrides win over the output folder, as over the datalist and tracking settings
        settings = {"output_dir": str(self.root / name), **self.settings, **params, "resume": retry_of is not None}
        if retry_of is not None:
            logger.info("trial %d retries trial %d (its worker died): resuming %s", trial.number, retry_of, name)
        logger.info("trial %d: %s", trial.number, ", ".join(f"{k}={v:.3f}" for k, v in params.items()))
        state, values, stopped = "FAILED", None, False
        try:
            values = self.train_and_evaluate(trial, settings)
            state = "FINISHED"
            return values if len(values) > 1 else values[0]
        except StopRequested:  # SIGTERM / SIGINT: the trial is given back to the study, to be resumed
            stopped = True
            requeue_stopped_trial(self.study, trial.number)
            raise
        except Exception as err:  # the config runner wraps what a handler raised: find the cause
            cause = _root_cause(err)
            if isinstance(cause, optuna.TrialPruned):
                state = "KILLED"
                raise cause from None
            raise
        finally:
            if not stopped:
                drop_resume_point(self.root / name)  # a finished trial is never resumed
            self.record(trial.number, name, state, values, stopped)

    def train_and_evaluate(self, trial: optuna.Trial, settings: Mapping[str, Any]) -> tuple[float, ...]:
        """The trial's training (pruned by :class:`TrialPruning`) and its objective on the validation split."""
        tracking = f"{self.config_dir}/{TRACKING_SETTINGS}"
        training = bundle_workflow("training", f"{self.config_dir}/train.json", tracking=tracking, **settings)
        parser = training.parser
        TrialPruning(trial, parser.get_parsed_content("validate#evaluator"), self.objective, prune=self.prune).attach(
            parser.get_parsed_content("train#trainer")
        )
        training.run()
        configs = [f"{self.config_dir}/train.json", f"{self.config_dir}/evaluate.json"]
        evaluation = bundle_workflow("evaluating", configs, split="validation", tracking=tracking, **settings)
        evaluation.run()
        metrics = evaluation.parser.get_parsed_content("validate#evaluator").state.metrics
        values = objective_values(metrics, self.objective)
        if any(v != v for v in values):
            raise FloatingPointError(f"objective undefined (NaN) for trial {trial.number}")
        record = load_evaluation(evaluation.parser.get_parsed_content("report_dir"))
        trial.set_user_attr(TRIAL_DICE, trial_dice(record["summary"]))
        return values

    def record(self, number: int, name: str, state: str, values: tuple | None, stopped: bool) -> None:
        """Nest the trial's MLflow run under the study's, tag its trial number and state, log its objective(s)."""
        run = latest_run(self.client, self.experiment_name, name)
        if run is None:
            return
        run_id, client = run.info.run_id, self.client
        nest_run(client, run_id, self.parent_id)
        client.set_tag(run_id, "optuna_trial", str(number))
        client.set_tag(run_id, "optuna_state", {"FINISHED": "COMPLETE", "KILLED": "PRUNED"}.get(state, "FAIL"))
        if values is not None:
            names = [f"objective_{i}" for i in range(len(values))] if len(values) > 1 else ["objective"]
            log_metrics(client, run_id, dict(zip(names, values)))
        if stopped:
            client.set_tag(run_id, "optuna_state", "STOPPED")
            client.set_terminated(run_id, status="KILLED")
        elif run.info.status == "RUNNING" or state != "FINISHED":
            client.set_terminated(run_id, status=state)
