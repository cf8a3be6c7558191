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

import csv
import json
import logging
import math
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from ...cli import bundle_workflow
from ...io import save_csv, save_json, save_text
from ..engine.checkpoints import drop_resume_point
from ..engine.metrics import LESION_CLASSES, lesion_mean
from ..engine.stopping import StopRequested
from ..tracking.runs import check_tracking_uri, experiment_id, latest_run, log_metrics
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


def open_storage(url: str, heartbeat_interval: int = 60):
    """An Optuna RDB storage with heartbeats: a trial whose worker died (no heartbeat for three intervals) is
    failed and enqueued once more with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``); the
    retry resumes the killed trial's training from its last checkpoint (see :func:`run_study`). A database
    restart is ridden out (:class:`scripts.learning.experiments.study_storage.ReconnectingRDBStorage`)."""
    import optuna

    from .study_storage import ReconnectingRDBStorage

    if url.startswith("sqlite:///"):  # a new SQLite file needs its folder
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return ReconnectingRDBStorage(
            url,
            heartbeat_interval=int(heartbeat_interval),
            grace_period=3 * int(heartbeat_interval),
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    except Exception as err:  # SQLAlchemy raises many types for bad URLs, missing drivers, refused connections
        raise ValueError(_storage_error(url, err)) from err


def _storage_error(url: str, err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{url}: cannot open the Optuna storage ({type(err).__name__}: {first})."


def make_pruner(name: str, warmup_epochs: int = 1):
    """``median`` (Optuna's median rule after 2 trials, never before epoch ``warmup_epochs``), ``none``, or
    ``threshold:<x>`` (stop a trial as soon as its validation objective is below x).

    :func:`run_study` sets the warm-up to the training's ``min_epochs`` (at most ``max_epochs - 1``): before it
    the Dice objective says little (core, half of it, appears after several epochs), so a median of early epochs
    would prune at random."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, int(warmup_epochs)))
    if name == "none":
        return optuna.pruners.NopPruner()
    if name.startswith("threshold:"):
        try:
            return optuna.pruners.ThresholdPruner(lower=float(name.split(":", 1)[1]))
        except ValueError as err:
            raise ValueError(f"pruner 'threshold:<x>' needs a number, got {name!r}.") from err
    raise ValueError(f"pruner must be 'median', 'none' or 'threshold:<x>', got {name!r}.")


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
        import optuna

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
    import mlflow
    import optuna

    directions = OBJECTIVES.get(objective)
    if directions is None:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    training = {**json.loads((Path(config_dir) / "train.json").read_text()), **dict(training_overrides or {})}
    warmup = min(int(training.get("min_epochs", 1)), int(training.get("max_epochs", 1)) - 1)
    trial_pruner = make_pruner(pruner, warmup_epochs=warmup)
    space = check_search_space(search_space or PAPER_SPACE, tie_beta)
    if int(n_trials) < 1:
        raise ValueError(f"n_trials must be at least 1, got {n_trials}.")
    from ..engine.training import check_training_inputs

    check_training_inputs(datalist, "SF", "PMs+N", "gradual", "cpu")
    url = storage or "sqlite:///" + os.path.abspath("mlruns/optuna.db")
    uri = check_tracking_uri(tracking_uri)
    lock = StudyLock(url, study_name)
    try:
        lock.acquire()
    except Exception as err:  # SQLAlchemy raises many types for bad URLs, missing drivers, refused connections
        raise ValueError(_storage_error(url, err)) from err
    try:  # one worker at a time opens the study and its MLflow parent run
        study = optuna.create_study(
            study_name=study_name,
            storage=open_storage(url, heartbeat_interval),
            load_if_exists=True,
            directions=list(directions),
            pruner=trial_pruner,
        )
        check_study_settings(study, objective, space, tie_beta)
        client = mlflow.MlflowClient(tracking_uri=uri)
        parent_id = study_parent_run(study, client, experiment_name, url, objective, space, tie_beta)
    finally:
        lock.release()
    client.update_run(parent_id, status="RUNNING")
    overrides = {"max_epochs": 4, "patience": 1, **dict(training_overrides or {})}
    root = Path(output_root) / study_name

    def trial_objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        lock.release()  # the trial exists: other workers may ask for theirs
        # seeded by the trial's number (unique across workers); the constant liar keeps parallel workers'
        # samples away from each other's running trials
        trial.study.sampler = optuna.samplers.TPESampler(
            seed=seed + trial.number, n_startup_trials=4, constant_liar=True
        )
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {name: trial.suggest_float(name, low, high) for name, (low, high) in space.items()}
        if tie_beta:
            params["beta"] = 1.0 - params["alpha"]
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        name = f"{study_name}_trial_{trial.number if retry_of is None else retry_of:03d}"
        settings = {
            "datalist": datalist,
            "output_dir": str(root / name),
            "tracking_uri": uri,
            "experiment_name": experiment_name,
            **overrides,
            **params,
            "resume": retry_of is not None,
        }
        if retry_of is not None:
            logger.info("trial %d retries trial %d (its worker died): resuming %s", trial.number, retry_of, name)
        logger.info("trial %d: %s", trial.number, ", ".join(f"{k}={v:.3f}" for k, v in params.items()))
        state, values, stopped = "FAILED", None, False
        try:
            training = bundle_workflow("training", f"{config_dir}/train.json", **settings)
            parser = training.parser
            TrialPruning(
                trial, parser.get_parsed_content("validate#evaluator"), objective, prune=len(directions) == 1
            ).attach(parser.get_parsed_content("train#trainer"))
            training.run()
            evaluation = bundle_workflow(
                "evaluating",
                [f"{config_dir}/train.json", f"{config_dir}/evaluate.json"],
                split="validation",
                **settings,
            )
            evaluation.run()
            values = objective_values(
                evaluation.parser.get_parsed_content("validate#evaluator").state.metrics, objective
            )
            if any(v != v for v in values):
                raise FloatingPointError(f"objective undefined (NaN) for trial {trial.number}")
            state = "FINISHED"
            return values if len(values) > 1 else values[0]
        except StopRequested:  # SIGTERM / SIGINT: the trial is given back to the study, to be resumed
            stopped = True
            requeue_stopped_trial(study, trial.number)
            raise
        except Exception as err:  # the config runner wraps what a handler raised: find the cause
            cause = _root_cause(err)
            if isinstance(cause, optuna.TrialPruned):
                state = "KILLED"
                raise cause from None
            raise
        finally:
            if not stopped:
                drop_resume_point(root / name)  # a finished trial is never resumed
            run = latest_run(client, experiment_name, name)
            if run is not None:
                client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_id)
                client.set_tag(run.info.run_id, "optuna_trial", str(trial.number))
                client.set_tag(
                    run.info.run_id, "optuna_state", {"FINISHED": "COMPLETE", "KILLED": "PRUNED"}.get(state, "FAIL")
                )
                if values is not None:
                    names = [f"objective_{i}" for i in range(len(values))] if len(values) > 1 else ["objective"]
                    log_metrics(client, run.info.run_id, dict(zip(names, values)))
                if stopped:
                    client.set_tag(run.info.run_id, "optuna_state", "STOPPED")
                    client.set_terminated(run.info.run_id, status="KILLED")
                elif run.info.status == "RUNNING" or state != "FINISHED":
                    client.set_terminated(run.info.run_id, status=state)

    while True:
        with lock:  # released by ``trial_objective`` as soon as Optuna has asked for the trial, else here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and enqueued again
            done, running, waiting = trial_counts(study)
            if done >= int(n_trials):
                break
            if waiting > 0 or done + running < int(n_trials):
                study.optimize(trial_objective, n_trials=1, catch=(Exception,))
                continue
        # the last trials run on other workers: wait, in case one dies and its trial comes back
        time.sleep(min(5.0, float(heartbeat_interval)))
    summary = summarise_study(study, root, client, experiment_name, parent_id)
    client.set_terminated(parent_id)
    return summary


def requeue_stopped_trial(study: Any, number: int) -> None:
    """A trial whose worker was asked to stop (SIGTERM): failed now and enqueued again with the same parameters,
    as the heartbeat does for a killed worker's trial, so the next worker resumes it from its checkpoint at once
    instead of after the grace period. It still counts once towards ``n_trials``."""
    import optuna

    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    study._storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL)
    frozen = study._storage.get_trial(frozen._trial_id)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, frozen)
    logger.warning("trial %d stopped by a signal: given back to the study, to be resumed by the next worker", number)


def check_study_settings(study: Any, objective: str, space: Mapping[str, Sequence[float]], tie_beta: bool) -> None:
    """Record the objective and search space on a new study; refuse a study created with other ones (its trials
    would mix two searches)."""
    if study.user_attrs.get("objective", objective) != objective:
        raise ValueError(
            f"study {study.study_name!r} was created with objective {study.user_attrs['objective']!r}; "
            "use another study_name for another objective."
        )
    ranges = {
        "search_space": {k: [float(v) for v in bounds] for k, bounds in space.items()},
        "tie_beta": bool(tie_beta),
    }
    recorded = {key: study.user_attrs[key] for key in ranges if key in study.user_attrs}
    if recorded and recorded != ranges:
        raise ValueError(
            f"study {study.study_name!r} was created with {recorded}, not {ranges}: its trials would mix two "
            "searches; use another study_name for another search space."
        )
    for key, value in {"objective": objective, **ranges}.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def study_parent_run(
    study: Any,
    client: Any,
    experiment_name: str,
    storage_url: str,
    objective: str,
    space: Mapping[str, Sequence[float]],
    tie_beta: bool,
) -> str:
    """The id of the study's MLflow parent run, created once and recorded on the study (``mlflow_parent_run``)
    so every worker nests its trials under the same run; call it under the :class:`StudyLock`."""
    import mlflow

    recorded = study.user_attrs.get("mlflow_parent_run")
    if recorded:
        try:
            client.get_run(recorded)
            return recorded
        except mlflow.exceptions.MlflowException:  # recorded in another tracking store: a new parent here
            pass
    run = latest_run(client, experiment_name, study.study_name)
    if run is None:
        run = client.create_run(
            experiment_id(client, experiment_name),
            run_name=study.study_name,
            tags={"optuna_storage": storage_url, "objective": objective},
        )
        for key, bounds in space.items():
            client.log_param(run.info.run_id, f"range_{key}", list(bounds))
        client.log_param(run.info.run_id, "tie_beta", tie_beta)
    study.set_user_attr("mlflow_parent_run", run.info.run_id)
    return run.info.run_id


def trial_counts(study: Any) -> tuple[int, int, int]:
    """(finished, running, waiting) trials of ``study``, finished as counted by :func:`finished_trials`."""
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    running, waiting = states.count(optuna.trial.TrialState.RUNNING), states.count(optuna.trial.TrialState.WAITING)
    return finished_trials(study), running, waiting


def finished_trials(study: Any) -> int:
    """Trials that count towards ``n_trials``: complete, pruned or failed, where a failed trial being retried
    (a killed worker's, see :func:`open_storage`) counts once, through its retry."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished()) - retried_trials(study)


def retried_trials(study: Any) -> int:
    """Trials that retry a killed worker's trial."""
    import optuna

    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    return sum(1 for t in study.get_trials(deepcopy=False) if retried(t) is not None)


def summarise_study(study: Any, root: Path, client: Any, experiment_name: str, parent_id: str) -> dict[str, Any]:
    """Count trials, export the best parameters as a training override file, write the Exp-1 tables."""
    import optuna

    states = [t.state for t in study.trials]
    summary: dict[str, Any] = {
        "trials": len(states),
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        "retried": retried_trials(study),
    }
    best = study.best_trials if len(study.directions) > 1 else ([study.best_trial] if summary["complete"] else [])
    if best:
        trial = best[0]
        params = dict(trial.params)
        if "alpha" in params and "beta" not in params:
            params["beta"] = 1.0 - params["alpha"]
        summary.update({"best_trial": trial.number, "best_values": list(trial.values), "best_params": params})
        summary["best_params_file"] = str(save_json(root / "best_params.json", params))
        names = (
            ["best_objective"] if len(trial.values) == 1 else [f"best_objective_{i}" for i in range(len(trial.values))]
        )
        log_metrics(
            client, parent_id, {**{f"best_{k}": v for k, v in params.items()}, **dict(zip(names, trial.values))}
        )
    log_metrics(client, parent_id, {f"trials_{key}": summary[key] for key in ("complete", "pruned", "failed")})
    summary.update(write_exp1_tables(study, client, experiment_name, root / "tables"))
    save_json(root / "summary.json", summary)
    client.log_artifacts(parent_id, str(root / "tables"), artifact_path="tables")
    return summary


def write_exp1_tables(study: Any, client: Any, experiment_name: str, output_dir: Path) -> dict[str, str]:
    """Exp-1 as the paper's Table 1: per completed trial (gamma, alpha, beta), validation Dice mean ± SD of
    penumbra and core per group, from each trial's nested MLflow run; Markdown and CSV."""
    import optuna

    rows, lines = [], []
    header = "| trial | γ | α | β | class | Dice LVO | Dice Non-LVO | Dice all | objective |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for trial in sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number
    ):
        run = latest_run(client, experiment_name, f"{study.study_name}_trial_{trial.number:03d}")
        if run is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(run.info.run_id, "validation/metrics_summary.csv", tmp)
            except Exception:
                continue
            summary = list(csv.DictReader(open(local)))
        params = dict(trial.params)
        params.setdefault("beta", 1.0 - params.get("alpha", 0.7))
        cell = {(s["metric"], s["class"], s["group"]): (float(s["mean"]), float(s["sd"])) for s in summary}
        for cls in LESION_CLASSES:
            values = {g: cell.get(("dice", cls, g), (math.nan, math.nan)) for g in ("LVO", "Non-LVO", "all")}
            row = {
                "trial": trial.number,
                "gamma": params.get("gamma", 4 / 3),
                "alpha": params.get("alpha"),
                "beta": params["beta"],
                "class": cls,
                "objective": trial.values[0],
            }
            for g, (mean, sd) in values.items():
                row[f"dice_{g}_mean"], row[f"dice_{g}_sd"] = mean, sd
            rows.append(row)
            fmt = " | ".join(f"{m:.2f} ± {s:.2f}" if m == m else "–" for m, s in values.values())
            lines.append(
                f"| {trial.number} | {row['gamma']:.2f} | {row['alpha']:.2f} | {row['beta']:.2f} "
                f"| {cls} | {fmt} | {trial.values[0]:.3f} |"
            )
    if not rows:
        return {}
    return {
        "table_md": str(save_text(output_dir / "exp1.md", "\n".join(lines) + "\n")),
        "table_csv": str(save_csv(output_dir / "exp1.csv", rows)),
    }
