"""An Optuna RDB storage that rides out a database restart.

Optuna's ``RDBStorage`` raises as soon as one statement finds the database gone (``StorageInternalError``
wrapping SQLAlchemy's ``OperationalError``), and its pooled connections stay dead after the server is back.
A PostgreSQL restart during a search (an upgrade, a failover, a crash) used to kill every worker mid-trial.
:class:`ReconnectingRDBStorage` opens its engine with ``pool_pre_ping`` (a dead pooled connection is replaced
when it is taken) and retries every storage call whose database connection failed, with growing pauses, for
up to ``retry_s`` seconds (default ``OPTUNA_DB_RETRY_S`` or 300) before giving up with one line. Errors that are
not about the connection (a constraint, a finished trial) are raised at once.

A call retried after its commit reached the database but before the answer came back is the one case a
retry could repeat: finishing a trial twice is recognised (the trial already holds the state and values sent)
and counted once.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage

from ...cli import exception_chain

logger = logging.getLogger(__name__)

RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
    "check_trial_is_updatable",
)


def connection_lost(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is a lost or refused database connection."""
    lost = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
    return any(
        (isinstance(e, sqlalchemy.exc.DBAPIError) and (e.connection_invalidated or isinstance(e, lost)))
        or isinstance(e, (ConnectionError, sqlalchemy.exc.DisconnectionError))
        for e in exception_chain(err, context=True)
    )


def retry_s() -> float:
    return float(os.environ.get("OPTUNA_DB_RETRY_S", 300))


def with_reconnect(method: Any) -> Any:
    """``method`` retried while its database connection fails (see the module docstring)."""

    @functools.wraps(method)
    def call(self: ReconnectingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline, pause = time.monotonic() + retry_s(), 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as err:
                if not connection_lost(err):
                    raise
                if time.monotonic() > deadline:
                    where = str(getattr(self, "url", "")).split("@")[-1]
                    raise ConnectionError(
                        f"{where}: the Optuna database did not answer for {retry_s():.0f} s "
                        f"({type(err).__name__} in {method.__name__})."
                    ) from err
                logger.warning(
                    "Optuna database connection lost in %s (%s): retrying in %.1f s",
                    method.__name__,
                    type(err).__name__,
                    pause,
                )
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    return call


class ReconnectingRDBStorage(RDBStorage):
    """``RDBStorage`` with ``pool_pre_ping`` whose calls are retried while the database is unreachable."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        engine_kwargs = {"pool_pre_ping": True, **dict(kwargs.pop("engine_kwargs", None) or {})}
        super().__init__(url, engine_kwargs=engine_kwargs, **kwargs)  # a first connection that fails fails now

    @with_reconnect
    def _set_trial_state_values_once(self, trial_id: int, state: Any, values: Any = None) -> bool:
        return RDBStorage.set_trial_state_values(self, trial_id, state, values)

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        try:
            return self._set_trial_state_values_once(trial_id, state, values)
        except UpdateFinishedTrialError:
            trial = RDBStorage.get_trial(self, trial_id)  # a retried finish whose first try was committed
            if trial.state == state and (values is None or list(trial.values or []) == list(values)):
                logger.warning("trial %d was already finished by the retried call: counted once", trial.number)
                return True
            raise


for _name in RETRIED:
    setattr(ReconnectingRDBStorage, _name, with_reconnect(getattr(RDBStorage, _name)))
