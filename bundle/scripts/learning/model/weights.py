"""Network weights from a checkpoint file or a state dict, with errors that name the file and the likely cause."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from typing import Any

import torch

from ...io import CTPDataError


def load_network_weights(
    network: torch.nn.Module, path: str | os.PathLike, key: str = "network", required: Sequence[str] = ()
) -> dict:
    """Load ``network`` weights from a checkpoint (``{key: state_dict, ...}`` or a bare state dict); return it.

    The file is read with ``weights_only=True``: tensors and plain containers only, so a crafted checkpoint
    cannot run code when loaded (a pickle that holds anything else is refused, naming the file). An unreadable
    file, missing entries or weights that do not fit the network stop with a message naming the file (and,
    for a mismatch, the likely cause: another variant, input set or encoder_width).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CTPDataError(
            f"{path}: refused: the checkpoint holds Python objects other than weights, which could run code when "
            "loaded; only weights-only checkpoints (tensors in plain containers) are read."
        ) from err
    except Exception as err:
        raise CTPDataError(f"{path}: checkpoint cannot be read ({err}).") from err
    if not isinstance(state, dict):
        raise CTPDataError(f"{path}: not a checkpoint (a dict of state dicts), got {type(state).__name__}.")
    missing = [k for k in required if k not in state]
    if missing:
        raise CTPDataError(f"{path}: checkpoint lacks {missing}; it was not written by this training config.")
    fit_weights(network, state.get(key, state), path)
    return state


def fit_weights(network: torch.nn.Module, weights: Any, source: str | os.PathLike) -> None:
    """Load the state dict ``weights`` into ``network``; a mismatch stops with a message naming ``source``."""
    try:
        network.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0]
        raise CTPDataError(
            f"{source}: checkpoint does not match this network (another variant, input set or encoder_width?): {first}"
        ) from err
