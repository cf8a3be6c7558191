"""The Optuna study behind the loss search: its storage (heartbeats, retries, reconnection), pruner, settings
check, MLflow parent run, trial bookkeeping, and the summary and Exp-1 tables it leaves."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from ...io import save_csv, save_json, save_text
from ..engine.metrics import LESION_CLASSES, LESION_GROUPS
from ..tracking.runs import MlflowException, experiment_id, latest_run, log_metrics
from .study_storage import ReconnectingRDBStorage

logger = logging.getLogger(__name__)


def open_storage(url: str, heartbeat_interval: int = 60):
    """An Optuna RDB storage with heartbeats: a trial whose worker died (no heartbeat for three intervals) is
    failed and enqueued once more with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``); the
    retry resumes the killed trial's training from its last checkpoint (see :func:`.search.run_study`). A database
    restart is ridden out (:class:`scripts.learning.experiments.study_storage.ReconnectingRDBStorage`)."""
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
        raise ValueError(storage_error(url, err)) from err


def storage_error(url: str, err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{url}: cannot open the Optuna storage ({type(err).__name__}: {first})."


def make_pruner(name: str, warmup_epochs: int = 1):
    """``median`` (Optuna's median rule after 2 trials, never before epoch ``warmup_epochs``), ``none``, or
    ``threshold:<x>`` (stop a trial as soon as its validation objective is below x).

    :func:`.search.run_study` sets the warm-up to the training's ``min_epochs`` (at most ``max_epochs - 1``): before it
    the Dice objective says little (core, half of it, appears after several epochs), so a median of early epochs
    would prune at random."""
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
    recorded = study.user_attrs.get("mlflow_parent_run")
    if recorded:
        try:
            client.get_run(recorded)
            return recorded
        except MlflowException:  # recorded in another tracking store: a new parent here
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
    states = [t.state for t in study.get_trials(deepcopy=False)]
    running, waiting = states.count(optuna.trial.TrialState.RUNNING), states.count(optuna.trial.TrialState.WAITING)
    return finished_trials(study), running, waiting


def finished_trials(study: Any) -> int:
    """Trials that count towards ``n_trials``: complete, pruned or failed, where a failed trial being retried
    (a killed worker's, see :func:`open_storage`) counts once, through its retry."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished()) - retried_trials(study)


def retried_trials(study: Any) -> int:
    """Trials that retry a killed worker's trial."""
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    return sum(1 for t in study.get_trials(deepcopy=False) if retried(t) is not None)


def requeue_stopped_trial(study: Any, number: int) -> None:
    """A trial whose worker was asked to stop (SIGTERM): failed now and enqueued again with the same parameters,
    as the heartbeat does for a killed worker's trial, so the next worker resumes it from its checkpoint at once
    instead of after the grace period. It still counts once towards ``n_trials``."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    study._storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL)
    frozen = study._storage.get_trial(frozen._trial_id)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, frozen)
    logger.warning("trial %d stopped by a signal: given back to the study, to be resumed by the next worker", number)


def summarise_study(study: Any, root: Path, client: Any, experiment_name: str, parent_id: str) -> dict[str, Any]:
    """Count trials, export the best parameters as a training override file, write the Exp-1 tables."""
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
    summary.update(write_exp1_tables(study, root / "tables"))
    save_json(root / "summary.json", summary)
    client.log_artifacts(parent_id, str(root / "tables"), artifact_path="tables")
    return summary


EXP1_GROUPS = (*LESION_GROUPS, "all")
"""The groups of the Exp-1 table's Dice columns."""
TRIAL_DICE = "validation_dice"
"""Optuna user attribute of a completed trial: its validation Dice per class and group, ``{"<class>_<group>": [mean,
sd]}`` (:func:`trial_dice`). The study's storage, which every worker shares, holds it: the Exp-1 table is built
from there, whichever machine ran the trial (MLflow only receives the results)."""


def trial_dice(summary: Sequence[Mapping]) -> dict[str, list[float | None]]:
    """The :data:`TRIAL_DICE` attribute from an evaluation's per-group summary (None where undefined)."""
    return {
        f"{s['class']}_{s['group']}": [None if v != v else float(v) for v in (s["mean"], s["sd"])]
        for s in summary
        if s["metric"] == "dice" and s["class"] in LESION_CLASSES and s["group"] in EXP1_GROUPS
    }


def write_exp1_tables(study: Any, output_dir: Path) -> dict[str, str]:
    """Exp-1 as the paper's Table 1: per completed trial (gamma, alpha, beta), validation Dice mean ± SD of
    penumbra and core per group (the trials' :data:`TRIAL_DICE`); Markdown and CSV."""
    rows, lines = [], []
    header = "| trial | γ | α | β | class | Dice LVO | Dice Non-LVO | Dice all | objective |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for trial in sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number
    ):
        dice = trial.user_attrs.get(TRIAL_DICE)
        if dice is None:  # completed before the study recorded it
            continue
        params = dict(trial.params)
        params.setdefault("beta", 1.0 - params.get("alpha", 0.7))
        for cls in LESION_CLASSES:
            values = {
                g: tuple(math.nan if v is None else v for v in dice.get(f"{cls}_{g}", (None, None)))
                for g in EXP1_GROUPS
            }
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
