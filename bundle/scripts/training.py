"""What MONAI's engines lack for this bundle's training: staged fine-tuning with early stopping, the
Non-LVO loss penalty fed from the batch, gradient value clipping, resume helpers, checks before training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from .data import CTPDataError, load_datalist
from .losses import FocalTverskyLoss
from .metrics import LesionMetrics, summarise, write_reports
from .networks import FINETUNING_SCHEDULES, INPUT_SETS, VARIANTS, trainable_parameters

logger = logging.getLogger(__name__)


def check_training_inputs(
    datalist: str | os.PathLike, variant: str, inputs: str, finetuning: str, device: str | torch.device,
    splits: Sequence[str] = ("training", "validation"), ckpt_dir: str | os.PathLike | None = None,
    resume: bool | str = False,
) -> None:
    """Fail before any training with one clear message: datalist, splits, variant, inputs, mode, device,
    and an existing run in ``ckpt_dir`` that would be overwritten without ``resume``."""
    resume = resume if isinstance(resume, bool) else str(resume).strip().lower() in ("true", "1")
    if ckpt_dir is not None and not resume and latest_checkpoint(ckpt_dir):
        raise FileExistsError(f"{ckpt_dir}: this run already has checkpoints; pass --resume true to continue it "
                              "or choose another --output_dir.")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
    if inputs not in INPUT_SETS:
        raise ValueError(f"inputs must be one of {', '.join(INPUT_SETS)}, got {inputs!r}.")
    if finetuning not in FINETUNING_SCHEDULES:
        raise ValueError(f"finetuning must be one of {', '.join(FINETUNING_SCHEDULES)}, got {finetuning!r}.")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but no CUDA GPU is available; use --device cpu.")
    content = load_datalist(datalist, splits=tuple(splits))
    for split in splits:
        if not content[split]:
            raise CTPDataError(f"{datalist}: split '{split}' is empty; training needs patients in {', '.join(splits)}.")


def clip_gradient_values(network: torch.nn.Module, clip_value: float) -> torch.nn.Module:
    """Clip every gradient element to [-clip_value, clip_value] (Keras ``clipvalue``, the original's 0.5)."""
    if clip_value > 0:
        for p in network.parameters():
            p.register_hook(lambda grad: grad.clamp(-clip_value, clip_value))
    return network


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


class GradualFineTuning:
    """Staged fine-tuning with early stopping on the validation loss (an Ignite handler).

    Stages come from :data:`scripts.networks.FINETUNING_SCHEDULES` (``frozen``: one frozen stage;
    ``gradual``: frozen -> half -> all; ...). Without pretrained encoders (offline, ``pretrained: false``)
    the gradual modes start at ``all``: freezing random weights would only waste the stages. After each validation, when the monitored loss has not
    improved by ``min_delta`` for ``patience`` validations: if a next stage exists, the best weights are
    reloaded, the stage's encoder weights unfrozen, the optimizer reset (state cleared, learning rate reset,
    only trainable parameters) and training goes on; after the last stage the trainer terminates.
    The handler's state is checkpointed with the run (``state_dict``), so a resumed run keeps its stage.

    Args:
        network: a network with ``set_finetuning``.
        optimizer: the trainer's optimizer (reset in place, so checkpoint references stay valid).
        validator: the evaluator whose ``metric_name`` is monitored (lower is better).
        mode: a key of ``FINETUNING_SCHEDULES``.
        patience: validations without improvement before moving on.
        best_checkpoint: callable returning the path of the best checkpoint so far (or None).
        lr: learning rate to reset to at each stage.
        on_stage: optional callable ``(stage_index, stage_name, epoch)`` (e.g. to log to MLflow).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        validator: Engine,
        mode: str = "gradual",
        patience: int = 25,
        min_delta: float = 1e-5,
        metric_name: str = "val_loss",
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
        self.best_checkpoint, self.on_stage = best_checkpoint, on_stage
        self.lr = lr if lr is not None else optimizer.param_groups[0]["lr"]
        self.stage_index, self.best, self.wait = 0, float("inf"), 0
        self.transitions: list[tuple[int, str]] = []
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
        trainer.add_event_handler(Events.EPOCH_STARTED, self._announce)  # after MLflow has opened its run

    def _announce(self, engine: Engine) -> None:
        if not self.transitions:
            logger.info("fine-tuning stage %d/%d: %s", self.stage_index + 1, len(self.stages), self.stage)
            self.transitions.append((engine.state.epoch, self.stage))
            if self.on_stage is not None:
                self.on_stage(self.stage_index, self.stage, engine.state.epoch)

    def _after_validation(self, validator: Engine) -> None:
        value = float(validator.state.metrics[self.metric_name])
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        epoch = self.trainer.state.epoch
        if self.stage_index + 1 >= len(self.stages):
            logger.info("early stopping at epoch %d: %s did not improve for %d validations", epoch, self.metric_name, self.patience)
            self.trainer.terminate()
            return
        path = self.best_checkpoint() if callable(self.best_checkpoint) else self.best_checkpoint
        if path and Path(path).is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.network.load_state_dict(state.get("network", state))
        self.stage_index += 1
        self.wait = 0
        self._apply_stage()
        self.transitions.append((epoch, self.stage))
        logger.info("epoch %d: fine-tuning stage %d/%d: %s (best weights reloaded, optimizer reset)",
                    epoch, self.stage_index + 1, len(self.stages), self.stage)
        if self.on_stage is not None:
            self.on_stage(self.stage_index, self.stage, epoch)


def latest_checkpoint(folder: str | os.PathLike, prefix: str = "last") -> str | None:
    """Newest ``<prefix>*.pt`` in ``folder`` (the resume point), or None."""
    files = sorted(Path(folder).glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime)
    return str(files[-1]) if files else None


def data_version(datalist: str | os.PathLike) -> str:
    """The datalist's ``version`` (the synthetic generator writes one), else a hash of the file."""
    path = Path(datalist)
    try:
        version = json.loads(path.read_text()).get("version")
    except (OSError, ValueError):
        version = None
    return str(version) if version else hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path.is_file() else "unknown"


class MetricReports:
    """After each evaluation, write the per-patient CSV and the per-group summaries of a LesionMetrics."""

    def __init__(self, metric: LesionMetrics, output_dir: str | os.PathLike, title: str = "model") -> None:
        self.metric, self.output_dir, self.title = metric, output_dir, title

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.metric.rows:
            write_reports(self.metric.rows, summarise(self.metric.rows), self.output_dir, self.title)


def resume_from_last(trainer: Engine, ckpt_dir: str | os.PathLike, load_dict: dict, resume: bool) -> str | None:
    """When ``resume`` and a ``last`` checkpoint exists, restore ``load_dict`` from it as training starts.

    A checkpoint that cannot be read or does not match the network stops with a message naming the file.
    """
    from monai.handlers import CheckpointLoader

    resume = resume if isinstance(resume, bool) else str(resume).strip().lower() in ("true", "1")
    path = latest_checkpoint(ckpt_dir) if resume else None
    if path is None:
        if resume:
            logger.info("resume requested but %s holds no checkpoint: starting from scratch", ckpt_dir)
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CTPDataError(f"{path}: checkpoint cannot be read ({err}); delete it or start a new output_dir.") from err
    missing = [key for key in load_dict if key not in state]
    if missing:
        raise CTPDataError(f"{path}: checkpoint lacks {missing}; it was not written by this training config.")
    try:
        load_dict["network"].load_state_dict(state["network"])
    except RuntimeError as err:
        raise CTPDataError(f"{path}: checkpoint does not match this network (variant/inputs changed?): {err}") from err
    CheckpointLoader(load_path=path, load_dict=load_dict, map_location="cpu").attach(trainer)

    def prune(engine: Engine) -> None:  # the saver only tracks its own files: drop the pre-resume "last"
        newest = latest_checkpoint(ckpt_dir)
        for old in Path(ckpt_dir).glob("last*.pt"):
            if str(old) != newest:
                old.unlink(missing_ok=True)

    trainer.add_event_handler(Events.EPOCH_STARTED, prune)
    trainer.add_event_handler(Events.COMPLETED, prune)
    trainer_state = state["trainer"]
    logger.info("resuming from %s (epoch %s)", path, trainer_state["iteration"] // max(trainer_state["epoch_length"], 1))
    return path


def check_evaluation_inputs(datalist: str | os.PathLike, split: str, checkpoint: str | None, ckpt_dir: str | os.PathLike) -> None:
    """Fail early: the split must exist and hold patients, and a trained checkpoint must be there."""
    if not load_datalist(datalist, splits=(split,))[split]:
        raise CTPDataError(f"{datalist}: split '{split}' is empty; nothing to evaluate.")
    if not checkpoint or not Path(checkpoint).is_file():
        raise CTPDataError(f"{ckpt_dir}: no best checkpoint (best*.pt) to evaluate; train first or pass --checkpoint PATH.")


def log_to_training_run(
    tracking_uri: str, experiment_name: str, run_name: str, metrics: dict, artifact_dirs: Sequence[str] = ()
) -> str | None:
    """Log evaluation metrics and reports into the newest MLflow run named ``run_name`` (the training run)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiment else []
    if not runs:
        logger.warning("no MLflow run named %s in experiment %s: evaluation metrics not logged", run_name, experiment_name)
        return None
    run_id = runs[0].info.run_id
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and value == value:
            client.log_metric(run_id, key, float(value))
    for folder in artifact_dirs:
        if Path(folder).is_dir():
            client.log_artifacts(run_id, str(folder), artifact_path=Path(folder).name)
    return run_id


class StageLogger:
    """Record fine-tuning stage transitions in the MLflow training run (metric ``finetuning_stage`` at the
    epoch it starts, and tag ``finetuning_stages``)."""

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str) -> None:
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self.history: list[str] = []

    def __call__(self, index: int, stage: str, epoch: int) -> None:
        import mlflow

        self.history.append(f"{epoch}:{stage}")
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return
        runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{self.run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            client.log_metric(runs[0].info.run_id, "finetuning_stage", float(index), step=int(epoch))
            client.set_tag(runs[0].info.run_id, "finetuning_stages", " ".join(self.history))
