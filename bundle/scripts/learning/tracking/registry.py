"""The trained network as an MLflow model: logged with its signature and an input example into the training
run, registered in the Model Registry, and loaded back by ``inference --checkpoint models:/NAME/VERSION``."""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

from ...io.map_registry import display_windows
from ..model.weights import load_network_weights
from .runs import default_tracking_uri, latest_run, tracking_client, use_tracking_uri

SCRIPTS = Path(__file__).resolve().parents[1]
MODEL_URI_SCHEMES = ("models:/", "runs:/")


class ServedNetwork(torch.nn.Module):
    """The segmentation network with MLflow's pyfunc calling convention: one input array ``image`` (B, maps,
    H, W) of the maps in their units, the patient's NIHSS as the ``nihss`` inference parameter (one patient's
    slices per call); returns the logits (B, 3, H, W): background, penumbra, core."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor, nihss: float | None = None) -> torch.Tensor:
        score = None if nihss is None else torch.full((image.shape[0],), float(nihss), dtype=image.dtype)
        return self.network(image.float(), score)


def log_model(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike | None,
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    registered_model_name: str | None,
    roi_size: tuple[int, int] = (64, 64),
) -> str | None:
    """Log ``network`` with the ``checkpoint``'s weights (the best one) as the MLflow model ``model`` of the
    newest run named ``run_name`` and register it as ``registered_model_name``; returns the model URI
    (``models:/NAME/VERSION``). Nothing is logged without a name, or on ranks other than 0.

    The signature holds the input (float32 maps, any batch and size) and the ``nihss`` parameter when the
    network uses it; the input example is one slice of typical healthy values at ``roi_size`` (64 where a
    size is -1, i.e. whole slices).
    """
    if not registered_model_name or idist.get_rank() != 0:
        return None
    if not checkpoint or not Path(checkpoint).is_file():
        raise FileNotFoundError(f"{checkpoint}: no best checkpoint to log as a model.")
    load_network_weights(network, checkpoint)
    served = ServedNetwork(network.cpu().eval())
    size = tuple(int(s) if int(s) > 0 else 64 for s in roi_size)
    typical = {name: float(np.mean(window)) for name, window in display_windows().items()}  # mid-window values
    example = np.stack([np.full(size, typical.get(m, 1.0), np.float32) for m in network.maps])[None]
    params = {"nihss": 10.0} if network.use_nihss else None
    with torch.no_grad():
        output = served(torch.from_numpy(example), **(params or {})).numpy()
    signature = infer_signature(example, output, params=params)
    client = tracking_client(tracking_uri)
    run = latest_run(client, experiment_name, run_name)
    if run is None:
        raise ValueError(f"no MLflow run named {run_name} in experiment {experiment_name} to log the model into.")
    with use_tracking_uri(tracking_uri):
        with mlflow.start_run(run_id=run.info.run_id):
            info = mlflow.pytorch.log_model(
                served,
                name="model",
                signature=signature,
                input_example=(example, params) if params else example,
                code_paths=[str(SCRIPTS)],
                serialization_format="pickle",  # the NIHSS parameter and input checks do not trace
                pip_requirements=requirements(),  # MLflow's inference of them reloads the model in a subprocess
                registered_model_name=registered_model_name,
            )
    version = info.registered_model_version
    return f"models:/{registered_model_name}/{version}" if version is not None else info.model_uri


def requirements() -> list[str]:
    """The pinned packages a logged model needs (the installed versions, without local labels like +cpu)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "monai", "numpy", "pytorch-ignite")]


def is_model_uri(checkpoint: Any) -> bool:
    """True for an MLflow model URI (``models:/NAME/VERSION``, ``models:/NAME@alias``, ``runs:/ID/model``)."""
    return isinstance(checkpoint, str) and checkpoint.startswith(MODEL_URI_SCHEMES)


def registered_weights(model_uri: str, tracking_uri: str | None = None) -> dict[str, torch.Tensor]:
    """The network weights of an MLflow model logged by :func:`log_model`, fetched from the tracking store
    (and its registry); one clear error when the name, version or alias does not exist there."""
    uri = default_tracking_uri(tracking_uri)
    try:  # MLflow downloads the model into a temporary folder it never removes unless given one
        with use_tracking_uri(uri), tempfile.TemporaryDirectory(prefix="ctp-model-") as download:
            served = mlflow.pytorch.load_model(model_uri, dst_path=download, map_location="cpu")
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"{model_uri}: not found in the MLflow store {uri} ({str(err).splitlines()[0]}).") from err
    return (served.network if isinstance(served, ServedNetwork) else served).state_dict()
