"""Checkpoints: the per-epoch resume point, the best model (with its saver's state, for exact resume),
loading weights with errors that name the file, and resuming an interrupted run."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import str2bool

from ...io import write_failure
from ..model.weights import load_network_weights

logger = logging.getLogger(__name__)


def save_last_checkpoints(trainer: Engine, saver: Any) -> None:
    """Save the ``last`` checkpoint after every epoch, from the main process only."""
    if idist.get_rank() == 0:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)


class KeepUntilSaved(DiskSaver):
    """Ignite's atomic ``DiskSaver`` that deletes the checkpoint it replaces only once the new one is on disk.

    Ignite's ``Checkpoint`` removes the old file *before* it saves the new one, so with ``n_saved`` 1 a full
    disk used to leave no checkpoint at all. Here the removal waits for a successful save; a save that fails
    (its temporary file removed) leaves the previous checkpoint loadable and stops with one line naming the
    folder (:class:`scripts.io.OutputWriteError`). The write is always atomic (:meth:`_save_func`).
    """

    def __init__(self, dirname: str | os.PathLike, **kwargs: Any) -> None:
        kwargs.setdefault("require_empty", False)
        super().__init__(dirname, **kwargs)
        self._replaced: list[str] = []

    def remove(self, filename: str) -> None:
        self._replaced.append(filename)

    def _save_func(self, checkpoint: Any, path: Path, func: Any) -> None:
        """Serialise in memory, then write and rename: torch's zip writer reports a full disk as a RuntimeError
        about file positions, a plain write as ``OSError`` (ENOSPC)."""
        buffer = io.BytesIO()
        func(checkpoint, buffer, **self.kwargs)
        tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(buffer.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        try:
            super().__call__(checkpoint, filename, metadata)
        except OSError as err:
            kept = [name for name in self._replaced if (self.dirname / name).is_file()]
            raise write_failure(
                self.dirname,
                err,
                f"checkpoint {filename}",
                f"the previous one ({', '.join(kept) or 'none'}) is kept and loadable; free space and resume with "
                "--resume true",
            ) from err
        for name in self._replaced:
            if name != filename:
                super().remove(name)
        self._replaced.clear()


class BestModelSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (best model by the key metric) that also gives its state, so the resume
    point holds which best model was kept and its score: a resumed run replaces it only with a better one
    (a fresh saver would write a second ``best_*`` file at its first validation, however bad). The best model
    it replaces is deleted only once the new one is saved (:class:`KeepUntilSaved`)."""

    def __init__(self, save_dir: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(save_dir, *args, **kwargs)
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.save_handler = KeepUntilSaved(save_dir)

    def state_dict(self) -> dict:
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


def latest_checkpoint(folder: str | os.PathLike, prefix: str = "last") -> str | None:
    """Newest ``<prefix>*.pt`` in ``folder`` (the resume point), or None."""
    files = sorted(Path(folder).glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime)
    return str(files[-1]) if files else None


def drop_resume_point(output_dir: str | os.PathLike) -> None:
    """Delete a finished run's ``checkpoints/last_*.pt`` (about 1 GB for SF with Adam's state): grids and
    searches call this once a cell or trial is done and will never be resumed; the best model stays."""
    for path in Path(output_dir, "checkpoints").glob("last*.pt"):
        path.unlink(missing_ok=True)


def resume_from_last(trainer: Engine, ckpt_dir: str | os.PathLike, load_dict: dict, resume: bool) -> str | None:
    """When ``resume`` and a ``last`` checkpoint exists, restore ``load_dict`` from it as training starts.

    A checkpoint that cannot be read or does not match the network stops with a message naming the file.
    """
    resume = str2bool(resume)
    path = latest_checkpoint(ckpt_dir) if resume else None
    if path is None:
        if resume:
            logger.info("resume requested but %s holds no checkpoint: starting from scratch", ckpt_dir)
        return None
    state = load_network_weights(load_dict["network"], path, required=tuple(load_dict))
    CheckpointLoader(load_path=path, load_dict=load_dict, map_location="cpu").attach(trainer)

    def prune(engine: Engine) -> None:  # the saver only tracks its own files: drop the pre-resume "last"
        newest = latest_checkpoint(ckpt_dir)
        for old in Path(ckpt_dir).glob("last*.pt"):
            if str(old) != newest:
                old.unlink(missing_ok=True)

    if idist.get_rank() == 0:
        trainer.add_event_handler(Events.EPOCH_STARTED, prune)
        trainer.add_event_handler(Events.COMPLETED, prune)
    trainer_state = state["trainer"]
    logger.info(
        "resuming from %s (epoch %s)", path, trainer_state["iteration"] // max(trainer_state["epoch_length"], 1)
    )
    return path
