"""A training that outlives its tracking server: MLflow writes that fail because the store does not answer
are kept, in order, and sent again; the run's end waits for them.

MLflow's client retries an unreachable server for minutes (7 retries, exponential back-off) and then raises,
so a server restarted during a training used to stall the epoch loop and then kill the run. Through
:class:`TolerantClient` each write is tried once, quickly (no retries, a short timeout; artifact uploads, at the
end of a run, keep MLflow's own retries and timeouts, as a large model may take longer); one that finds the
server down joins a process-wide queue (:data:`PENDING`) with everything after it, and the queue is sent again,
oldest first, before every later write. Metrics keep the timestamp and step they were logged with, so the
run's history after the outage is the same as without it. The call that ends the run
(``set_terminated``) first waits for the queue to empty, up to ``MLFLOW_OUTAGE_WAIT`` seconds (default 600),
so the run ends FINISHED with every epoch's metrics; if the server is still down then, the training stops
with one line and the run stays RUNNING, to be closed by ``--resume true``.

Reads (``search_runs``, ``get_run``) go straight to the server: they happen when a run starts, where
:func:`scripts.learning.tracking.runs.check_tracking_uri` has just found the server up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import requests

from ...cli import exception_chain

logger = logging.getLogger(__name__)

WRITES = frozenset(
    {
        "log_batch",
        "log_metric",
        "log_param",
        "set_tag",
        "log_artifact",
        "log_artifacts",
        "log_inputs",
        "update_run",
        "set_experiment_tag",
    }
)
"""Client methods that only write: safe to send later."""
UPLOADS = frozenset({"log_artifact", "log_artifacts"})
"""Writes that may take longer than a quick try: sent with MLflow's own retries and timeouts."""
UNAVAILABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "Read timed out",
    "error code 502",
    "error code 503",
    "error code 504",
    "Service Unavailable",
    "Bad Gateway",
)


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) says the tracking server did not answer, as opposed to
    a request it refused (bad parameter, unknown run), which is raised as usual."""
    down = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)
    return any(
        isinstance(e, down) or (any(marker in str(e) for marker in UNAVAILABLE) and "INVALID_PARAMETER" not in str(e))
        for e in exception_chain(err, context=True)
    )


@contextmanager
def one_quick_try(timeout: int = 10) -> Iterator[None]:
    """MLflow HTTP requests in this block are tried once with a ``timeout``-second limit (MLflow reads both
    settings from the environment at each request)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout))}
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class PendingWrites:
    """The process's queue of tracking writes that found the server down, sent again oldest first."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, Callable[[], Any], bool]] = deque()
        self.lock = threading.RLock()
        self.delayed = 0  # writes that waited in the queue, for the log
        self.quiet_until = 0.0  # after a failed try, the queue waits this long before the next one
        self.quiet_s = 5.0

    def call(self, description: str, write: Callable[[], Any], quick: bool = True) -> Any:
        """``write()`` now if the queue is empty (or empties now) and the server answers, else queued. ``quick``:
        one try with a short timeout (metrics in the epoch loop); otherwise MLflow's own retries and timeouts
        (artifact uploads at the end of a run, which may take longer than a quick try allows)."""
        with self.lock:
            if self.queue and (time.monotonic() < self.quiet_until or not self.flush()):
                self.queue.append((description, write, quick))
                return None
            try:
                with one_quick_try() if quick else nullcontext():
                    return write()
            except Exception as err:
                if not unreachable(err):
                    raise
                self.queue.append((description, write, quick))
                self.quiet_until = time.monotonic() + self.quiet_s
                logger.warning(
                    "tracking server does not answer (%s): %s kept and sent when it is back; training goes on",
                    type(err).__name__,
                    description,
                )
                return None

    def flush(self) -> bool:
        """Send the queue, oldest first, until one write finds the server down; True when it is empty."""
        with self.lock:
            while self.queue:
                description, write, quick = self.queue[0]
                try:
                    with one_quick_try() if quick else nullcontext():
                        write()
                except Exception as err:
                    if not unreachable(err):
                        self.queue.popleft()  # refused for good: do not block the others behind it
                        logger.error("tracking write %s refused after the outage: %s", description, err)
                        continue
                    self.quiet_until = time.monotonic() + self.quiet_s
                    return False
                self.queue.popleft()
                self.delayed += 1
                if not self.queue:
                    logger.warning("tracking server back: every kept write sent")
            return True

    def drain(self, wait: float | None = None) -> None:
        """Flush until the queue is empty, trying every few seconds for up to ``wait`` seconds (default
        ``MLFLOW_OUTAGE_WAIT`` or 600); then :class:`TrackingUnavailable`."""
        wait = float(os.environ.get("MLFLOW_OUTAGE_WAIT", 600)) if wait is None else float(wait)
        deadline = time.monotonic() + wait
        while not self.flush():
            if time.monotonic() > deadline:
                raise TrackingUnavailable(
                    f"the MLflow tracking server did not answer for {wait:.0f} s at the end of the run; "
                    f"{len(self.queue)} write(s) not sent (the run stays RUNNING): rerun with --resume true once "
                    "it is back"
                )
            logger.warning("waiting for the tracking server: %d write(s) to send", len(self.queue))
            time.sleep(min(5.0, max(deadline - time.monotonic(), 0.1)))


class TrackingUnavailable(ValueError):
    """The tracking server stayed down past the end of a run."""


PENDING = PendingWrites()


class TolerantClient:
    """An ``MlflowClient`` whose writes go through :data:`PENDING` (see the module docstring); everything else
    is the client's own."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name == "set_terminated":

            def end(*args: Any, **kwargs: Any) -> Any:
                PENDING.drain()
                return attribute(*args, **kwargs)  # with MLflow's own retries

            return end
        if name not in WRITES:
            return attribute

        def write(*args: Any, **kwargs: Any) -> Any:
            description = f"{name} {_describe(args, kwargs)}"
            return PENDING.call(description, lambda: attribute(*args, **kwargs), quick=name not in UPLOADS)

        return write


def _describe(args: tuple, kwargs: dict) -> str:
    metrics = kwargs.get("metrics") or []
    if metrics:
        return "metrics " + ", ".join(f"{m.key}@{m.step}" for m in metrics[:4]) + ("..." if len(metrics) > 4 else "")
    return ", ".join(str(a)[:60] for a in args[1:3]) or "(call)"
