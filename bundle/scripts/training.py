"""What MONAI's engines lack for this bundle's training: staged fine-tuning with early stopping, the
Non-LVO loss penalty fed from the batch, gradient value clipping, per-epoch seeding and a best-model saver
with state (for exact resume), resume helpers, checks before training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from .data import CTPDataError, load_datalist
from .losses import FocalTverskyLoss
from .metrics import LesionMetrics, summarise, write_reports
from .networks import FINETUNING_SCHEDULES, INPUT_SETS, VARIANTS, trainable_parameters

logger = logging.getLogger(__name__)


def is_main_process() -> bool:
    """True outside distributed training and on rank 0 within it: the process that logs and saves."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def rewrap_distributed(network: torch.nn.Module) -> torch.nn.Module:
    """A new ``DistributedDataParallel`` around ``network.module`` with the same options, so that it reduces
    exactly the parameters trainable now (DDP fixes that set when it is built); other modules pass through."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(network, DistributedDataParallel):
        return network
    return DistributedDataParallel(
        network.module, device_ids=network.device_ids, output_device=network.output_device,
        broadcast_buffers=network.broadcast_buffers, find_unused_parameters=network.find_unused_parameters,
    )


def save_last_checkpoints(trainer: Engine, saver: Any) -> None:
    """Save the ``last`` checkpoint after every epoch, from the main process only."""
    if is_main_process():
        trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)


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
        from monai.data.utils import set_rnd
        from monai.utils import set_determinism

        epoch_seed = self.seed + 1000 * engine.state.epoch  # distinct for every (seed < 1000, epoch)
        set_determinism(seed=epoch_seed)
        set_rnd(self.dataset, epoch_seed)


class BestModelSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (best model by the key metric) that also gives its state, so the resume
    point holds which best model was kept and its score: a resumed run replaces it only with a better one
    (a fresh saver would write a second ``best_*`` file at its first validation, however bad)."""

    def state_dict(self) -> dict:
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


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
    """Staged fine-tuning with early stopping on a validation metric (an Ignite handler).

    Stages come from :data:`scripts.networks.FINETUNING_SCHEDULES` (``frozen``: one frozen stage;
    ``gradual``: frozen -> half -> all; ...). Without pretrained encoders (offline, ``pretrained: false``)
    the gradual modes start at ``all``: freezing random weights would only waste the stages. After each validation, when the monitored metric has not
    improved by ``min_delta`` for ``patience`` validations (``metric_name``, higher is better unless
    ``higher_is_better`` is False; the bundle monitors its key metric ``val_dice_lesion``): if a next stage exists, the best weights are
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
        if _distributed():  # every rank takes the same decision: on the mean of their validation metrics
            mean = torch.tensor([value], dtype=torch.float64, device=_device_of(self.network))
            torch.distributed.all_reduce(mean)
            value = float(mean) / torch.distributed.get_world_size()
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
            logger.info("early stopping at epoch %d: %s did not improve for %d validations", epoch, self.metric_name, self.patience)
            self.trainer.terminate()
            return
        if _distributed():
            torch.distributed.barrier()  # rank 0 has written the best checkpoint of this validation
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


def _device_of(module: torch.nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None and torch.distributed.get_backend() == "nccl" else torch.device("cpu")


_RUN_ARGS = ("config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id")


def save_resolved_config(path: str | os.PathLike, argv: Sequence[str] | None = None) -> str | None:
    """Write the configuration this ``python -m monai.bundle run`` executes (its config files merged, then
    the command line's overrides applied, as MONAI's ``ConfigWorkflow`` does) to ``path``, atomically.

    The file goes into the run's MLflow artifacts, so a run can be repeated from its record. Returns None
    (nothing written) on processes other than rank 0, or when not started through ``monai.bundle run``.
    """
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    from .data import save_json

    argv = list(sys.argv if argv is None else argv)
    if not is_main_process() or len(argv) < 2 or "monai" not in argv[0] or argv[1] != "run":
        return None
    pairs: dict[str, Any] = {}
    items = iter(argv[2:])
    for item in items:
        if not item.startswith("--"):
            continue
        key, sep, value = item[2:].partition("=")
        value = value if sep else next(items, "true")
        key = key.replace("-", "_") if key.replace("-", "_") in _RUN_ARGS else key
        pairs[key] = DefaultParseValue(value)
    if "config_file" not in pairs:
        return None
    parser = ConfigParser()
    parser.read_config(f=pairs["config_file"])
    parser.update(pairs={k: v for k, v in pairs.items() if k not in _RUN_ARGS})
    save_json(path, parser.get())
    return str(path)


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


def drop_resume_point(output_dir: str | os.PathLike) -> None:
    """Delete a finished run's ``checkpoints/last_*.pt`` (about 1 GB for SF with Adam's state): grids and
    searches call this once a cell or trial is done and will never be resumed; the best model stays."""
    for path in Path(output_dir, "checkpoints").glob("last*.pt"):
        path.unlink(missing_ok=True)


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike, key: str = "network",
                         required: Sequence[str] = ()) -> dict:
    """Load ``network`` weights from a checkpoint (``{key: state_dict, ...}`` or a bare state dict); return it.

    An unreadable file, missing entries or weights that do not fit the network stop with a message naming
    the file (and, for a mismatch, the likely cause: another variant or input set).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CTPDataError(f"{path}: checkpoint cannot be read ({err}).") from err
    if not isinstance(state, dict):
        raise CTPDataError(f"{path}: not a checkpoint (a dict of state dicts), got {type(state).__name__}.")
    missing = [k for k in required if k not in state]
    if missing:
        raise CTPDataError(f"{path}: checkpoint lacks {missing}; it was not written by this training config.")
    weights = state.get(key, state)
    try:
        network.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0]
        raise CTPDataError(f"{path}: checkpoint does not match this network (another variant or input set?): {first}") from err
    return state


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
    state = load_network_weights(load_dict["network"], path, required=tuple(load_dict))
    CheckpointLoader(load_path=path, load_dict=load_dict, map_location="cpu").attach(trainer)

    def prune(engine: Engine) -> None:  # the saver only tracks its own files: drop the pre-resume "last"
        newest = latest_checkpoint(ckpt_dir)
        for old in Path(ckpt_dir).glob("last*.pt"):
            if str(old) != newest:
                old.unlink(missing_ok=True)

    if is_main_process():
        trainer.add_event_handler(Events.EPOCH_STARTED, prune)
        trainer.add_event_handler(Events.COMPLETED, prune)
    trainer_state = state["trainer"]
    logger.info("resuming from %s (epoch %s)", path, trainer_state["iteration"] // max(trainer_state["epoch_length"], 1))
    return path


def check_evaluation_inputs(datalist: str | os.PathLike, split: str, checkpoint: str | None, model_dir: str | os.PathLike) -> None:
    """Fail early: the split must exist and hold patients, and a trained checkpoint must be there."""
    if not load_datalist(datalist, splits=(split,))[split]:
        raise CTPDataError(f"{datalist}: split '{split}' is empty; nothing to evaluate.")
    if not checkpoint or not Path(checkpoint).is_file():
        raise CTPDataError(f"{model_dir}: no best checkpoint (best*.pt) to evaluate; train first or pass --checkpoint PATH.")


def default_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the bundle's SQLite store ``mlruns/mlflow.db``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.abspath("mlruns/mlflow.db")


def latest_run(client: Any, experiment_name: str, run_name: str) -> Any | None:
    """The newest MLflow run named ``run_name`` in ``experiment_name``, or None."""
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiment else []
    return runs[0] if runs else None


def log_to_training_run(
    tracking_uri: str, experiment_name: str, run_name: str, metrics: dict, artifact_dirs: Sequence[str] = ()
) -> str | None:
    """Log evaluation metrics and reports into the newest MLflow run named ``run_name`` (the training run)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    run = latest_run(client, experiment_name, run_name)
    if run is None:
        logger.warning("no MLflow run named %s in experiment %s: evaluation metrics not logged", run_name, experiment_name)
        return None
    run_id = run.info.run_id
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
        if not is_main_process():
            return
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        run = latest_run(client, self.experiment_name, self.run_name)
        if run is not None:
            client.log_metric(run.info.run_id, "finetuning_stage", float(index), step=int(epoch))
            client.set_tag(run.info.run_id, "finetuning_stages", " ".join(self.history))
