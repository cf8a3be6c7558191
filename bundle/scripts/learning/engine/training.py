"""What MONAI's trainer lacks for this bundle: checks before training and evaluation, gradient value clipping
after DDP's averaging, per-epoch seeding, and the Non-LVO loss penalty fed from the batch."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import pad_list_data_collate
from monai.data.utils import set_rnd
from monai.utils import set_determinism, str2bool

from ...io import CTPDataError, load_datalist
from ..model.losses import FocalTverskyLoss
from ..model.networks import FINETUNING_SCHEDULES, VARIANTS, input_set
from ..tracking.runs import check_tracking_uri
from .checkpoints import latest_checkpoint

logger = logging.getLogger(__name__)


def check_training_inputs(
    datalist: str | os.PathLike,
    variant: str,
    inputs: str,
    finetuning: str,
    device: str | torch.device,
    splits: Sequence[str] = ("training", "validation"),
    ckpt_dir: str | os.PathLike | None = None,
    resume: bool | str = False,
    tracking_uri: str | None = None,
) -> None:
    """Fail before any training with one clear message: datalist, splits, variant, inputs, mode, device,
    an existing run in ``ckpt_dir`` that would be overwritten without ``resume``, and, when given, a
    tracking store that does not answer."""
    resume = str2bool(resume)
    if ckpt_dir is not None and not resume and latest_checkpoint(ckpt_dir):
        raise FileExistsError(
            f"{ckpt_dir}: this run already has checkpoints; pass --resume true to continue it "
            "or choose another --output_dir."
        )
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
    input_set(inputs)  # refuses an unknown input set, naming the known ones
    if finetuning not in FINETUNING_SCHEDULES:
        raise ValueError(f"finetuning must be one of {', '.join(FINETUNING_SCHEDULES)}, got {finetuning!r}.")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but no CUDA GPU is available; use --device cpu.")
    content = load_datalist(datalist, splits=tuple(splits))
    for split in splits:
        if not content[split]:
            raise CTPDataError(f"{datalist}: split '{split}' is empty; training needs patients in {', '.join(splits)}.")
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri)


def check_evaluation_inputs(
    datalist: str | os.PathLike,
    split: str,
    checkpoint: str | None,
    model_dir: str | os.PathLike,
    tracking_uri: str | None = None,
) -> None:
    """Fail early: the split must exist and hold patients, a trained checkpoint must be there, and the
    tracking store (when given) must answer."""
    if not load_datalist(datalist, splits=(split,))[split]:
        raise CTPDataError(f"{datalist}: split '{split}' is empty; nothing to evaluate.")
    if not checkpoint or not Path(checkpoint).is_file():
        raise CTPDataError(
            f"{model_dir}: no best checkpoint (best*.pt) to evaluate; train first or pass --checkpoint PATH."
        )
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri)


class ClipGradientValues:
    """Clip every gradient element to [-clip_value, clip_value] (Keras ``clipvalue``, the original's 0.5), an
    Ignite handler for a MONAI trainer.

    The clipping runs as a step pre-hook of the trainer's optimizer (``torch.nn.utils.clip_grad_value_`` on
    the parameters of its current groups), i.e. after backward and, under DDP, after the gradients have been
    averaged across processes: the same update as one process clipping its whole-batch gradient. Stage changes
    that rebuild the optimizer's parameter groups are followed. ``clip_value`` <= 0 disables it.
    """

    def __init__(self, clip_value: float) -> None:
        self.clip_value = float(clip_value)
        self._hooked: set[int] = set()

    def attach(self, engine: Engine) -> None:
        # MONAI sets engine.optimizer after attaching the handlers
        engine.add_event_handler(Events.STARTED, lambda e: self.register(e.optimizer))

    def register(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip before every ``optimizer.step()`` (once per optimizer)."""
        if self.clip_value > 0 and id(optimizer) not in self._hooked:
            optimizer.register_step_pre_hook(self._clip)
            self._hooked.add(id(optimizer))

    def _clip(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_value_(params, self.clip_value)


class EpochSeeding:
    """Reseed every random number generator a training epoch draws from at the start of each epoch, from
    ``seed`` and the epoch number (an Ignite handler; what Ignite's ``DeterministicEngine`` does per iteration).

    ``monai.utils.set_determinism(seed + epoch)`` seeds Python's, NumPy's and torch's global generators
    (dropout masks, the DataLoader's shuffling, its workers' seeds) and ``monai.data.utils.set_rnd`` the own
    generator of every random transform of ``dataset`` (slice sampling, flips). An epoch's randomness is then
    a function of (seed, epoch) alone, so a run resumed from the checkpoint of epoch k draws in epoch k + 1
    exactly what an uninterrupted run draws, without storing generator states.
    """

    def __init__(self, seed: int, dataset: Any) -> None:
        self.seed, self.dataset = int(seed), dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = self.seed + 1000 * engine.state.epoch  # distinct for every (seed < 1000, epoch)
        set_determinism(seed=epoch_seed)
        set_rnd(self.dataset, epoch_seed)


class NonLVOPenalty:
    """Feed each training batch's Non-LVO flags to the focal Tversky loss (its Non-LVO penalty).

    MONAI's trainer calls ``loss(pred, label)``; this handler sets ``loss.batch_non_lvo`` from the batch's
    ``group`` entries when an iteration starts and clears it when it ends, so validation is unaffected.
    """

    def __init__(self, loss: FocalTverskyLoss, group_key: str = "group") -> None:
        self.loss, self.group_key = loss, group_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._set)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._clear)

    def _set(self, engine: Engine) -> None:
        groups = engine.state.batch.get(self.group_key) if isinstance(engine.state.batch, dict) else None
        self.loss.batch_non_lvo = None if groups is None else torch.tensor([g == "Non-LVO" for g in groups])

    def _clear(self, engine: Engine) -> None:
        self.loss.batch_non_lvo = None


def pad_collate(batch: list) -> dict:
    """Collate brain-cropped training slices of different sizes: MONAI's ``pad_list_data_collate`` after
    flattening the per-volume sample lists of ``RandCropByPosNegLabeld`` (which that collate does not)."""
    flat = [s for item in batch for s in (item if isinstance(item, (list, tuple)) else [item])]
    return pad_list_data_collate(flat)
