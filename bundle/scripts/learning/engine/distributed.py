"""A torch.distributed run: which handlers each rank attaches, and ending it so that every rank exits cleanly.

Only rank 0 writes (MLflow, the best model, the metric reports): :func:`rank_handlers` picks a rank's handlers by
kind, not by their position in the config's list.

``destroy_process_group()`` alone is not enough with DistributedDataParallel on Gloo: a DDP wrapper that is still
referenced (a module-level name, the bundle's config, an engine) keeps its reducer, and with it the buffers of the
last all-reduce, alive until interpreter shutdown. A Gloo worker thread that drops that work late then needs the
GIL while the main thread is in ``Py_FinalizeEx``, and the rank aborts (``terminate called without an active
exception``, exit -6) after a run that succeeded. :func:`end_process_group` frees that state on the main thread
while the interpreter is alive.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..tracking.handlers import MLFlowHandler
from .checkpoints import BestModelSaver
from .reports import MetricReports

WRITERS = (MLFlowHandler, BestModelSaver, MetricReports)
"""Handlers that write the run's records: attached on rank 0 only."""

DDP_STATE = ("logger", "reducer")
"""Attributes of a DistributedDataParallel that hold the reducer (the logger keeps a pointer to it)."""


def release_reducers() -> int:
    """Drop the reducer of every live DistributedDataParallel (they cannot run afterwards); return how many."""
    released = 0
    for obj in gc.get_objects():
        if isinstance(obj, DistributedDataParallel) and "reducer" in obj.__dict__:
            for name in DDP_STATE:
                obj.__dict__.pop(name, None)
            released += 1
    gc.collect()
    return released


def end_process_group() -> int:
    """Wait for every rank, free the DDP reducers on this thread, then destroy the default process group; return
    the number of reducers freed.

    Call once at the end of a distributed run (the bundle's ``finalize``); a no-op when no group is initialised.
    """
    if not dist.is_initialized():
        return 0
    dist.barrier()
    released = release_reducers()
    dist.destroy_process_group()
    return released


def rank_handlers(handlers: Sequence[Any], rank: int) -> list[Any]:
    """The ``handlers`` a process of ``rank`` attaches: all of them on rank 0, elsewhere all but the
    :data:`WRITERS` (every rank validates and stops alike; one rank writes)."""
    return [h for h in handlers if rank == 0 or not isinstance(h, WRITERS)]
