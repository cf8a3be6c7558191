"""A polite stop: SIGTERM (what schedulers send before SIGKILL) or SIGINT ends a run at the next iteration
boundary instead of wherever the signal lands.

:func:`run_until_signal` runs an Ignite engine with :class:`StopOnSignal` in place: while it runs, SIGTERM / SIGINT
only set a flag; at the next ``ITERATION_COMPLETED`` the engine is terminated (Ignite's ``terminate()``: the
unfinished epoch is dropped, ``COMPLETED`` handlers still run), the MLflow run is marked ``KILLED``
(:class:`scripts.learning.tracking.handlers.MLFlowHandler` reads ``engine.state.stop_signal``), and the process
exits with ``128 + signal`` (:class:`StopRequested`) after one line saying how to continue. For a training the
resume point is the last finished epoch's checkpoint, as after SIGKILL, so ``--resume true`` continues exactly as it
would after a kill; for inference every finished patient's outputs are complete on disk (they are written
atomically) and the patient in progress leaves nothing. Under ``torchrun`` the flag is all-reduced every iteration,
so every rank stops at the same one (a rank that stopped alone would leave the others waiting in a collective)."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

STOP_SIGNALS = ("SIGTERM", "SIGINT")


class StopRequested(SystemExit):
    """The process was asked to stop and its run stopped cleanly; ``code`` is ``128 + signal``."""


class StopOnSignal:
    """Stop an engine at the next iteration boundary after one of ``signals`` (names; default SIGTERM, SIGINT).

    Use as a context manager around ``engine.run()`` (:func:`run_until_signal`): it installs the signal
    handlers and restores the former ones on the way out, exception or not. A second signal while a stop is
    pending goes to the former handler (a second Ctrl-C interrupts at once). Outside the main thread, where
    Python cannot install handlers, it does nothing.
    """

    def __init__(self, engine: Engine, signals: Sequence[str] = STOP_SIGNALS) -> None:
        self.engine, self.signals = engine, [getattr(signal, name) for name in signals]
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        try:
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self._restore()
        self.engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        try:
            yield self
        finally:
            self.engine.remove_event_handler(self._check, Events.ITERATION_COMPLETED)
            self._restore()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # asked twice: the former handler decides
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
            return
        self.received = signum
        logger.warning("%s received: stopping at the next iteration boundary", signal.Signals(signum).name)

    def _check(self, engine: Engine) -> None:
        received = self.received or 0
        if idist.get_world_size() > 1:  # every rank stops at the same iteration
            received = int(idist.all_reduce(torch.tensor(received), op="MAX").item())
        if received and not getattr(engine.state, "stop_signal", None):
            engine.state.stop_signal = signal.Signals(received).name
            engine.terminate()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def run_until_signal(engine: Engine, what: str = "training", then: str = "resume it with --resume true") -> Any:
    """``engine.run()`` under :class:`StopOnSignal`; when a signal stopped it, one line on standard error and
    :class:`StopRequested` with ``128 + signal`` (143 for SIGTERM, what a scheduler expects of a process that
    honoured it). Returns the engine's state otherwise."""
    with StopOnSignal(engine).installed():
        state = engine.run()
    name = getattr(engine.state, "stop_signal", None)
    if name:
        where = f"iteration {engine.state.iteration}, epoch {engine.state.epoch}"
        print(f"{what} stopped by {name} at {where}; {then}.", file=sys.stderr, flush=True)
        raise StopRequested(128 + int(getattr(signal, name)))
    return state
