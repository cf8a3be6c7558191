"""Staged fine-tuning of the pretrained encoders (frozen -> half -> all) with early stopping, as an Ignite
handler whose state is checkpointed with the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch.nn.parallel import DistributedDataParallel

from .networks import FINETUNING_SCHEDULES, trainable_parameters

logger = logging.getLogger(__name__)


def rewrap_distributed(network: torch.nn.Module) -> torch.nn.Module:
    """A new ``DistributedDataParallel`` around ``network.module`` with the same options, so that it reduces
    exactly the parameters trainable now (DDP fixes that set when it is built); other modules pass through."""
    if not isinstance(network, DistributedDataParallel):
        return network
    return DistributedDataParallel(
        network.module,
        device_ids=network.device_ids,
        output_device=network.output_device,
        broadcast_buffers=network.broadcast_buffers,
        find_unused_parameters=network.find_unused_parameters,
    )


class GradualFineTuning:
    """Staged fine-tuning with early stopping on a validation metric (an Ignite handler).

    Stages come from :data:`scripts.learning.model.networks.FINETUNING_SCHEDULES` (``frozen``: one frozen stage;
    ``gradual``: frozen -> half -> all; ...). Without pretrained encoders (offline, ``pretrained: false``)
    the gradual modes start at ``all``: freezing random weights would only waste the stages.
    After each validation, when the monitored metric has not
    improved by ``min_delta`` for ``patience`` validations (``metric_name``, higher is better unless
    ``higher_is_better`` is False; the bundle monitors its key metric ``val_dice_lesion``): if a next stage
    exists, the best weights are
    reloaded, the stage's encoder weights unfrozen, the optimizer reset (state cleared, learning rate reset,
    only trainable parameters) and training goes on; after the last stage the trainer terminates.
    The handler's state is checkpointed with the run (``state_dict``), so a resumed run keeps its stage.

    Args:
        network: a network with ``set_finetuning``.
        optimizer: the trainer's optimizer (reset in place, so checkpoint references stay valid).
        validator: the evaluator whose ``metric_name`` is monitored.
        mode: a key of ``FINETUNING_SCHEDULES``.
        patience: validations without improvement before moving on.
        best_checkpoint: callable returning the path of the best checkpoint so far (or None).
        lr: learning rate to reset to at each stage.
        on_stage: optional callable ``(stage_index, stage_name, epoch)`` (e.g. to log to MLflow).
        min_epochs: validations before this epoch never count as "no improvement" (a warm-up: from random
            encoders the first epochs predict nothing on validation while the loss is still falling fast).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        validator: Engine,
        mode: str = "gradual",
        patience: int = 25,
        min_delta: float = 1e-5,
        metric_name: str = "val_dice_lesion",
        higher_is_better: bool = True,
        min_epochs: int = 0,
        best_checkpoint: Any = None,
        lr: float | None = None,
        on_stage: Any = None,
    ) -> None:
        if mode not in FINETUNING_SCHEDULES:
            raise ValueError(f"finetuning mode must be one of {', '.join(FINETUNING_SCHEDULES)}, got {mode!r}.")
        self.network, self.optimizer, self.validator = network, optimizer, validator
        self.stages = FINETUNING_SCHEDULES[mode]
        if not getattr(network, "pretrained", True) and "frozen" in self.stages:
            if len(self.stages) > 1:  # freezing random weights only wastes the stage
                logger.warning("encoders are not pretrained: gradual fine-tuning starts directly at stage 'all'.")
                self.stages = ("all",)
            else:
                logger.warning("finetuning 'frozen' with encoders that are not pretrained: they stay random.")
        self.patience, self.min_delta, self.metric_name = int(patience), float(min_delta), metric_name
        self.sign = 1.0 if higher_is_better else -1.0
        self.min_epochs = int(min_epochs)
        self.best_checkpoint, self.on_stage = best_checkpoint, on_stage
        self.lr = lr if lr is not None else optimizer.param_groups[0]["lr"]
        self.stage_index, self.best, self.wait = 0, -float("inf"), 0  # best of sign * metric
        self.transitions: list[tuple[int, str]] = []
        self._wrapped_stage: int | None = None
        self._apply_stage()

    def state_dict(self) -> dict:
        return {"stage_index": self.stage_index, "best": self.best, "wait": self.wait, "transitions": self.transitions}

    def load_state_dict(self, state: dict) -> None:
        self.stage_index, self.best, self.wait = int(state["stage_index"]), float(state["best"]), int(state["wait"])
        self.transitions = [tuple(t) for t in state.get("transitions", [])]
        self._apply_stage()

    @property
    def stage(self) -> str:
        return self.stages[self.stage_index]

    def _apply_stage(self) -> None:
        self.network.set_finetuning(self.stage)
        group = self.optimizer.param_groups[0]
        group["params"] = trainable_parameters(self.network)
        group["lr"] = self.lr
        self.optimizer.state.clear()

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        self.validator.add_event_handler(Events.COMPLETED, self._after_validation)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._rewrap)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._announce)  # after MLflow has opened its run

    def _rewrap(self, engine: Engine) -> None:
        """Under DDP, rebuild the wrapper once per stage: it must reduce the parameters trainable now."""
        if self._wrapped_stage != self.stage_index:
            engine.network = rewrap_distributed(engine.network)
            self._wrapped_stage = self.stage_index

    def _announce(self, engine: Engine) -> None:
        if not self.transitions:
            logger.info("fine-tuning stage %d/%d: %s", self.stage_index + 1, len(self.stages), self.stage)
            self.transitions.append((engine.state.epoch, self.stage))
            if self.on_stage is not None:
                self.on_stage(self.stage_index, self.stage, engine.state.epoch)

    def _after_validation(self, validator: Engine) -> None:
        value = self.sign * float(validator.state.metrics[self.metric_name])
        if idist.get_world_size() > 1:  # every rank takes the same decision: on the mean of their validation metrics
            value = float(idist.all_reduce(value)) / idist.get_world_size()
        if value > self.best + self.min_delta:
            self.best, self.wait = value, 0
            return
        if self.trainer.state.epoch < self.min_epochs:  # warm-up: not yet judged a plateau
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        epoch = self.trainer.state.epoch
        if self.stage_index + 1 >= len(self.stages):
            logger.info(
                "early stopping at epoch %d: %s did not improve for %d validations",
                epoch,
                self.metric_name,
                self.patience,
            )
            self.trainer.terminate()
            return
        if idist.get_world_size() > 1:
            idist.barrier()  # rank 0 has written the best checkpoint of this validation
        path = self.best_checkpoint() if callable(self.best_checkpoint) else self.best_checkpoint
        if path and Path(path).is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.network.load_state_dict(state.get("network", state))
        self.stage_index += 1
        self.wait = 0
        self._apply_stage()
        self.transitions.append((epoch, self.stage))
        logger.info(
            "epoch %d: fine-tuning stage %d/%d: %s (best weights reloaded, optimizer reset)",
            epoch,
            self.stage_index + 1,
            len(self.stages),
            self.stage,
        )
        if self.on_stage is not None:
            self.on_stage(self.stage_index, self.stage, epoch)
