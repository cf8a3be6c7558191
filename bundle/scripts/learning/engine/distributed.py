"""Ending a torch.distributed run so that every rank exits cleanly.

``destroy_process_group()`` alone is not enough with DistributedDataParallel on Gloo: a DDP wrapper that is still
referenced (a module-level name, the bundle's config, an engine) keeps its reducer, and with it the buffers of the
last all-reduce, alive until interpreter shutdown. A Gloo worker thread that drops that work late then needs the
GIL while the main thread is in ``Py_FinalizeEx``, and the rank aborts (``terminate called without an active
exception``, exit -6) after a run that succeeded. :func:`end_process_group` frees that state on the main thread
while the interpreter is alive.
"""

from __future__ import annotations

import gc

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

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
